"""Execute one notebook inside the grading sandbox and report cell by cell (instructor guide).

Runs INSIDE the bubblewrap sandbox (see :mod:`lmcourse.sandbox`), started by the grader
as ``python nbrunner.py CELL_TIMEOUT`` with the notebook (already rewritten by the trusted
grader: test cells restored and nonces injected) on stdin. It starts an IPython kernel with
nbclient and writes one JSON line per event to its stdout, a pipe only the trusted grader
reads:

* ``{"event": "begin", "index": i}`` before code cell ``i`` runs,
* ``{"event": "cell", "index": i, "status": "ok"|"error"|"timeout"|"dead", "outputs": [...],
  "execution_count": n, "error": str|null, "truncated": bool}`` after it,
* ``{"event": "end", "reason": "done"|"timeout"|"dead"|"kernel", "index": i, "message": str}``.

The runner makes itself non-dumpable first, so student code in the kernel (same uid) cannot
read the notebook (and the nonces of later test cells) from the runner's memory or file
descriptors. It never judges answers: the checks write their results to ``/io/results`` and
the trusted grader scores them after the sandbox is gone. This file imports only the standard
library, nbformat and nbclient (not lmlib).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

PER_CELL_OUTPUT = 1_000_000  # bytes of outputs kept per cell
TOTAL_OUTPUT = 8_000_000  # bytes of outputs kept per notebook


def _no_dump() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except OSError:  # pragma: no cover - always Linux here
        pass


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> None:
    _no_dump()
    cell_timeout = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    raw = sys.stdin.buffer.read()
    os.close(0)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    del raw
    used = {"cell": 0, "total": 0, "dropped": 0}

    class CappedClient(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
            size = len(json.dumps(msg.get("content", {}), default=str))
            if used["cell"] + size > PER_CELL_OUTPUT or used["total"] + size > TOTAL_OUTPUT:
                used["dropped"] += size
                return None
            used["cell"] += size
            used["total"] += size
            return super().output(outs, msg, display_id, cell_index)

    client = CappedClient(nb, timeout=cell_timeout, startup_timeout=120, allow_errors=True,
                          kernel_name="python3", interrupt_on_timeout=False,
                          record_timing=False, resources={"metadata": {"path": os.getcwd()}})
    reason, last, message = "done", -1, ""
    try:
        with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                last = index
                used["cell"], used["dropped"] = 0, 0
                _emit({"event": "begin", "index": index})
                status, error = "ok", None
                try:
                    client.execute_cell(cell, index)
                    for out in cell.get("outputs", []):
                        if out.get("output_type") == "error":
                            status, error = "error", f"{out.get('ename')}: {out.get('evalue')}"
                except CellTimeoutError:
                    status, error = "timeout", f"the cell ran longer than {cell_timeout} s"
                except DeadKernelError as exc:
                    status, error = "dead", f"the kernel died ({exc})"
                except Exception as exc:  # nbclient internals: report, stop
                    status, error = "dead", f"{type(exc).__name__}: {exc}"
                _emit({"event": "cell", "index": index, "status": status, "error": error,
                       "outputs": cell.get("outputs", []),
                       "execution_count": cell.get("execution_count"),
                       "truncated": used["dropped"] > 0})
                if status in ("timeout", "dead"):
                    reason, message = status, error or ""
                    break
            _emit({"event": "end", "reason": reason, "index": last, "message": message})
            sys.stdout.flush()
            os._exit(0)  # the sandbox's PID namespace takes the kernel down with us
    except Exception as exc:
        _emit({"event": "end", "reason": "kernel", "index": last,
               "message": f"{type(exc).__name__}: {exc}"})
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
