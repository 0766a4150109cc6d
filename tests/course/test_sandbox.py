"""The grading sandbox (lmcourse.sandbox): isolation and limits, each shown by doing the
forbidden thing from inside and checking it failed (and, where it matters, checking the host).

Needs Debian's bubblewrap (``make system-deps`` installs it)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lmlib
from lmcourse import nbrunner, sandbox
from lmcourse.sandbox import Limits, SandboxUnavailable, check_bwrap, run_sandboxed
from lmcourse.stage import stage_lmlib

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandbox is Linux-only")

REPO = Path(lmlib.__file__).resolve().parents[1]


@pytest.fixture
def box(tmp_path):
    """Run Python code in a fresh sandbox; returns (result, scratch dir)."""
    scratch = tmp_path / "io"
    scratch.mkdir()

    def run(code: str, *, limits: Limits = Limits(wall_s=60), ro_binds=(), env=None):
        res = run_sandboxed([sys.executable, "-c", textwrap.dedent(code)], scratch=scratch,
                            staging=tmp_path / "staging", limits=limits, ro_binds=ro_binds, env=env)
        return res

    run.scratch = scratch
    return run


def _out(res) -> str:
    return res.stdout.decode("utf-8", "replace")


def test_bwrap_works_here():
    assert Path(check_bwrap()).name == "bwrap"


def test_missing_bwrap_fails_loudly(monkeypatch):
    check_bwrap.cache_clear()
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap .* not installed.*never runs student code unsandboxed"):
            check_bwrap()
    finally:
        check_bwrap.cache_clear()


def test_broken_bwrap_fails_loudly(monkeypatch, tmp_path):
    """A bwrap that cannot create namespaces (here: a fake one that exits 1) is reported, and
    the grade command refuses to start instead of running student code unsandboxed."""
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    check_bwrap.cache_clear()
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    try:
        with pytest.raises(SandboxUnavailable, match="cannot create a sandbox.*No permissions"):
            check_bwrap()
        from lmcourse.grade import main

        subs = tmp_path / "subs"
        subs.mkdir()
        assert main(["01-lm", str(subs), "--out", str(tmp_path / "out")]) == 2
        assert not (tmp_path / "out" / "gradebook.db").exists()
    finally:
        check_bwrap.cache_clear()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Limits.nproc must be a positive int; got 0"):
        Limits(nproc=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=10)
    with pytest.raises(ValueError, match="wall_s"):
        Limits(wall_s=-1)
    with pytest.raises(ValueError, match="scratch must be an existing folder"):
        run_sandboxed(["true"], scratch=tmp_path / "nope", staging=tmp_path / "st")
    (tmp_path / "io").mkdir()
    with pytest.raises(ValueError, match="ro_binds: source .* does not exist"):
        run_sandboxed(["true"], scratch=tmp_path / "io", staging=tmp_path / "st",
                      ro_binds=[(tmp_path / "missing", "/opt/x")])


def test_no_network_even_to_the_hosts_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        res = box(f"""
            import socket
            for addr in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
                try:
                    socket.create_connection(addr, timeout=2)
                    print("CONNECTED", addr)
                except OSError as e:
                    print("blocked", addr, type(e).__name__)
            """)
    finally:
        server.close()
    out = _out(res)
    assert res.returncode == 0, res.stderr
    assert "CONNECTED" not in out
    assert out.count("blocked") == 3


def test_cannot_see_repo_solutions_home_or_secrets(box, monkeypatch):
    monkeypatch.setenv("LMLIB_GRADING_SECRET", "top-secret-value")
    targets = [REPO / "solutions", REPO / "lmlib", REPO / "nbgrader_config.py", REPO / "grading",
               REPO / ".git", REPO / "README.md", Path("/etc/shadow")]
    home = Path.home()
    res = box(f"""
        import os
        for p in {[str(t) for t in targets]!r}:
            try:
                os.listdir(p) if os.path.isdir(p) else open(p).read()
                print("OPENED", p)
            except OSError as e:
                print("no", p, type(e).__name__)
        for d in ["{home}", "{REPO}"]:
            print("LIST", d, sorted(os.listdir(d)) if os.path.isdir(d) else None)
        print("secret", "top-secret-value" in repr(dict(os.environ)), "LMLIB_GRADING_SECRET" in os.environ)
        """)
    out = _out(res)
    assert res.returncode == 0, res.stderr
    assert "OPENED" not in out
    assert out.count("no ") == len(targets)
    # the home folder and the repo exist inside at most as empty mount points on the way to the
    # interpreter / venv binds: none of their real entries is visible
    binds = [dest for _, dest in sandbox.python_binds()]
    for d in (home, REPO):
        line = next(l for l in out.splitlines() if l.startswith(f"LIST {d} "))
        listed = eval(line.split(" ", 2)[2])
        if listed is None:
            continue
        allowed = {Path(b).relative_to(d).parts[0] for b in binds if Path(b).is_relative_to(d) and Path(b) != d}
        assert set(listed) <= allowed, (d, listed)
        real = set(os.listdir(d)) - allowed
        assert real and not (real & set(listed))
    assert "secret False False" in out


def test_filesystem_is_read_only_except_scratch(box):
    res = box(f"""
        import os, sys
        for p in ["/usr/evil", sys.prefix + "/evil", "/evil", "/etc/evil", "{REPO}/evil"]:
            try:
                open(p, "w").write("x"); print("WROTE", p)
            except OSError as e:
                print("no", p, type(e).__name__)
        open("/io/ok.txt", "w").write("scratch")
        open("/tmp/ok.txt", "w").write("tmpfs")
        print(os.getuid())
        """)
    out = _out(res)
    assert res.returncode == 0, res.stderr
    assert "WROTE" not in out and out.count("no ") == 5
    assert (box.scratch / "ok.txt").read_text() == "scratch"
    assert not Path(sys.prefix, "evil").exists() and not (REPO / "evil").exists()
    uid = int(out.strip().splitlines()[-1])
    assert uid != 0  # never root inside


def test_memory_limit(box):
    res = box("""
        try:
            x = bytearray(3 * 1024**3)
            print("ALLOCATED")
        except MemoryError:
            print("MemoryError")
        """, limits=Limits(memory_mb=1024, wall_s=60))
    assert "MemoryError" in _out(res) and "ALLOCATED" not in _out(res)


def test_cpu_limit_kills_a_busy_loop(box):
    t0 = time.monotonic()
    res = box("while True: pass", limits=Limits(cpu_s=2, wall_s=60))
    assert res.returncode != 0 and res.killed is None  # killed by the kernel (SIGXCPU), not the wall clock
    assert time.monotonic() - t0 < 30


def test_process_limit_stops_a_fork_bomb(box):
    res = box("""
        import os, time
        n = 0
        try:
            for _ in range(2000):
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                n += 1
        except OSError as e:
            print("fork failed after", n, type(e).__name__)
        """, limits=Limits(nproc=64, wall_s=60))
    out = _out(res)
    assert "fork failed after" in out
    assert int(out.split("after")[1].split()[0]) < 64


def test_file_size_limit(box):
    res = box("""
        try:
            with open("/io/big.bin", "wb") as f:
                f.write(b"x" * (3 * 1024 * 1024))
            print("WROTE")
        except OSError as e:
            print("EFBIG", e.errno)
        """, limits=Limits(fsize_mb=1, wall_s=60))
    assert "EFBIG 27" in _out(res)
    assert (box.scratch / "big.bin").stat().st_size <= 1024 * 1024


def test_scratch_total_size_watchdog(box):
    res = box("""
        import time
        for i in range(400):
            open(f"/io/f{i}", "wb").write(b"x" * 1024 * 1024)
        time.sleep(30)
        """, limits=Limits(fsize_mb=2, scratch_mb=64, wall_s=60))
    assert res.killed == "scratch"


def test_stdout_is_capped(box):
    res = box("import sys\nfor _ in range(40): sys.stdout.write('y' * 100000 + '\\n')",
              limits=Limits(output_mb=1, wall_s=60))
    assert res.truncated and len(res.stdout) <= 1024 * 1024


def test_wall_clock_timeout_kills_everything(box):
    t0 = time.monotonic()
    res = box("""
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True: time.sleep(1)
        """, limits=Limits(wall_s=3))
    assert res.killed == "timeout"
    assert time.monotonic() - t0 < 20


def _host_processes_with(marker: str) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                found.append(f"{entry.name}: {cmd}")
    return found


@pytest.mark.parametrize("how", ["exit", "timeout"])
def test_setsid_background_process_does_not_survive(box, how):
    marker = "4711.25" if how == "exit" else "4711.75"
    code = f"""
        import subprocess, os, time
        # double fork + new session: the classic daemon escape
        subprocess.Popen(["setsid", "sh", "-c", "sleep {marker} & sleep {marker}"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        print("started", flush=True)
        """ + ("" if how == "exit" else "time.sleep(60)\n")
    res = box(code, limits=Limits(wall_s=4 if how == "timeout" else 60))
    assert "started" in _out(res)
    time.sleep(0.5)
    assert _host_processes_with(marker) == []


def test_reference_module_is_a_stub_and_trusted_helpers_are_stripped(box, tmp_path):
    stage = stage_lmlib(tmp_path / "stage", "01-lm", ("lmlib.probability",))
    res = box("""
        try:
            import lmlib.probability
            print("IMPORTED")
        except ImportError as e:
            print("ImportError:", e)
        from lmlib.grading import get_check
        chk = get_check("01-lm/perplexity")
        try:
            chk.expected({"log_probs": [0.0]})
            print("EXPECTED AVAILABLE")
        except RuntimeError as e:
            print("RuntimeError:", e)
        try:
            get_check("02-tokenize/train-bpe").compare([], [], {"cases": []})  # a check with its own compare
            print("COMPARE AVAILABLE")
        except RuntimeError as e:
            print("compare RuntimeError:", e)
        import lmlib.grading.checks.a01_lm as m
        try:
            m._count([["a"]])
            print("HELPER AVAILABLE")
        except RuntimeError as e:
            print("helper RuntimeError:", e)
        import lmlib.attention  # not graded by 01-lm: still there
        print("attention ok")
        """, ro_binds=[(stage, "/opt/lmlib")], env={"PYTHONPATH": "/opt/lmlib"})
    out = _out(res)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert ("ImportError: lmlib.probability is the reference implementation graded by 01-lm and is "
            "not available while grading: write your own") in out
    assert "RuntimeError: trusted grading code: not part of the student side of a check" in out
    assert "helper RuntimeError" in out and "compare RuntimeError" in out
    assert "attention ok" in out
    assert not list((stage / "lmlib").rglob("__pycache__"))


def test_runner_keeps_results_of_cells_before_a_dead_kernel(tmp_path):
    """The in-sandbox runner reports each cell; os._exit in cell 2 leaves cells 0-1 reported."""
    import json

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    scratch = tmp_path / "io"
    scratch.mkdir()
    runner = Path(nbrunner.__file__).resolve()
    nb = new_notebook(cells=[new_code_cell("import sys; print('a'); print('warn', file=sys.stderr)"),
                             new_code_cell("open('/io/mark', 'w').write('1')"),
                             new_code_cell("import os; os._exit(0)"),
                             new_code_cell("print('never')")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    res = run_sandboxed([sys.executable, str(runner), "30"], scratch=scratch, staging=tmp_path / "st",
                        ro_binds=[(runner, str(runner))], limits=Limits(wall_s=120),
                        env={"JUPYTER_RUNTIME_DIR": "/tmp/rt", "IPYTHONDIR": "/tmp/ipy"},
                        stdin_data=nbformat.writes(nb).encode())
    events = [json.loads(l) for l in res.stdout.splitlines()]
    cells = {e["index"]: e for e in events if e["event"] == "cell"}
    assert cells[0]["status"] == "ok" and cells[1]["status"] == "ok"
    assert cells[2]["status"] == "dead" and 3 not in cells
    assert events[-1] == {"event": "end", "reason": "dead", "index": 2, "message": cells[2]["error"]}
    assert (scratch / "mark").read_text() == "1"


def test_course_data_readable_but_trained_checkpoints_hidden(box, tmp_path):
    from lmcourse.stage import data_binds

    cache = tmp_path / "cache"
    (cache / "dataset").mkdir(parents=True)
    (cache / "dataset" / "text.txt").write_text("to be or not to be")
    (cache / "checkpoints").mkdir()
    (cache / "checkpoints" / "gpt-char-cpu.pt").write_bytes(b"trained weights")
    binds, extra = data_binds(cache)
    code = textwrap.dedent("""
        import os
        print(open("/opt/lmlib-data/dataset/text.txt").read())
        print("checkpoints" in os.listdir("/opt/lmlib-data"))
        open("/opt/lmlib-data/locks/x.lock", "w").write("")  # lmlib's file locks work
        try:
            open("/opt/lmlib-data/dataset/new", "w")
        except OSError as e:
            print("read-only", type(e).__name__)
        """)
    res = run_sandboxed([sys.executable, "-c", code], scratch=box.scratch, staging=tmp_path / "st",
                        ro_binds=binds, extra=extra, limits=Limits(wall_s=60))
    assert _out(res).split("\n")[:3] == ["to be or not to be", "False", "read-only OSError"], res.stderr
    assert data_binds(None) == ([], [])


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or shutil.which("runuser") is None,
                    reason="needs root (to switch to an unprivileged user) and the system python3")
def test_unprivileged_mode_user_namespace():
    """As an ordinary user, bubblewrap runs in an unprivileged user namespace: the same
    guarantees hold (no network, no root, process limit, no surviving daemons)."""
    import subprocess
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sandbox-unpriv-", dir="/tmp"))
    try:
        shutil.copy(Path(sandbox.__file__), d / "sandbox.py")
        (d / "io").mkdir()
        (d / "t.py").write_text(textwrap.dedent("""
            import os, sys, time
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import sandbox
            code = '''
            import os, socket, subprocess
            print("uid", os.getuid())
            subprocess.Popen(["setsid", "sleep", "5151.5"], start_new_session=True)
            try:
                socket.create_connection(("1.1.1.1", 53), timeout=2); print("CONNECTED")
            except OSError:
                print("no network")
            n = 0
            try:
                for _ in range(5000):
                    if os.fork() == 0:
                        time.sleep(20); os._exit(0)
                    n += 1
            except OSError:
                print("fork stopped", n)
            '''
            import textwrap
            r = sandbox.run_sandboxed([sys.executable, "-c", "import time\\n" + textwrap.dedent(code)],
                                      scratch=sys.argv[1], staging=sys.argv[2],
                                      limits=sandbox.Limits(nproc=40, wall_s=60))
            print(r.stdout.decode())
            """))
        for p in [d, *d.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        proc = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", str(d / "t.py"),
                               str(d / "io"), str(d / "st")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = proc.stdout
        assert "uid 65534" in out and "no network" in out and "CONNECTED" not in out
        assert "fork stopped" in out and int(out.split("fork stopped")[1].split()[0]) < 40
        time.sleep(0.5)
        assert _host_processes_with("5151.5") == []
    finally:
        shutil.rmtree(d, ignore_errors=True)
