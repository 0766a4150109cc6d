"""Execute one notebook inside the grading sandbox and report cell by cell (instructor guide).

Runs INSIDE the bubblewrap sandbox (the grader's ``sandbox`` module), started by the grader
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
library, nbformat and nbclient (not lmlib, not the grader): the grader copies it beside the
sandbox's lmlib, alone.
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


def _client(nb, cell_timeout: int, used: dict[str, int]):
    """An nbclient ``NotebookClient`` that keeps at most :data:`PER_CELL_OUTPUT` bytes of
    outputs per cell and :data:`TOTAL_OUTPUT` per notebook (``used`` counts them)."""
    from nbclient import NotebookClient

    class CappedClient(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
            size = len(json.dumps(msg.get("content", {}), default=str))
            if used["cell"] + size > PER_CELL_OUTPUT or used["total"] + size > TOTAL_OUTPUT:
                used["dropped"] += size
                return None
            used["cell"] += size
            used["total"] += size
            return super().output(outs, msg, display_id, cell_index)

    return CappedClient(nb, timeout=cell_timeout, startup_timeout=120, allow_errors=True,
                        kernel_name="python3", interrupt_on_timeout=False,
                        record_timing=False, resources={"metadata": {"path": os.getcwd()}})


def _run_cell(client, cell, index: int, cell_timeout: int) -> tuple[str, str | None]:
    """Execute one code cell; its status ("ok", "error", "timeout", "dead") and error."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

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
    return status, error


def _run_cells(client, nb, cell_timeout: int, used: dict[str, int]) -> tuple[str, str]:
    """Run the code cells in order, one event before and after each; stop at a timeout or a
    dead kernel. Returns the end event's ``(reason, message)``; ``used["last"]`` is the index
    of the last code cell started."""
    reason, message = "done", ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        used["last"] = index
        used["cell"], used["dropped"] = 0, 0
        _emit({"event": "begin", "index": index})
        status, error = _run_cell(client, cell, index, cell_timeout)
        _emit({"event": "cell", "index": index, "status": status, "error": error,
               "outputs": cell.get("outputs", []),
               "execution_count": cell.get("execution_count"),
               "truncated": used["dropped"] > 0})
        if status in ("timeout", "dead"):
            reason, message = status, error or ""
            break
    return reason, message


def main() -> None:
    _no_dump()
    cell_timeout = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    raw = sys.stdin.buffer.read()
    os.close(0)
    import nbformat

    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    del raw
    used = {"cell": 0, "total": 0, "dropped": 0, "last": -1}
    client = _client(nb, cell_timeout, used)
    try:
        with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            reason, message = _run_cells(client, nb, cell_timeout, used)
            _emit({"event": "end", "reason": reason, "index": used["last"], "message": message})
            sys.stdout.flush()
            os._exit(0)  # the sandbox's PID namespace takes the kernel down with us
    except Exception as exc:
        _emit({"event": "end", "reason": "kernel", "index": used["last"],
               "message": f"{type(exc).__name__}: {exc}"})
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
