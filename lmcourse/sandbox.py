"""A bubblewrap sandbox for running one untrusted submission (instructor guide, "Integrity").

Every submission runs in its own `bubblewrap <https://github.com/containers/bubblewrap>`_
(``bwrap``) sandbox:

* **namespaces**: new PID, network (loopback only: no network), IPC and UTS namespaces, a new
  session (no terminal injection), and ``--die-with-parent``. The sandbox's PID 1 is
  bubblewrap's init: when it dies the kernel kills every process in the namespace, so a
  ``setsid`` / double-forked background process cannot outlive the run.
* **filesystem**: an empty root with read-only binds of only what Python needs (``/usr``,
  ``/lib*``, a few files of ``/etc``, the Python installation and the virtual environment),
  read-only extra binds chosen by the caller (a copy of lmlib, the course data), a size-limited
  tmpfs on ``/tmp`` and ``/dev/shm``, and ONE writable folder, the submission's scratch dir,
  mounted at ``/io``. The repository, ``solutions/``, the gradebook, ``nbgrader_config.py``,
  ``$HOME`` and other submissions are simply not there.
* **identity**: when the grader runs as root, bubblewrap runs privileged (no user namespace)
  and the payload switches to an unprivileged uid with no capabilities and ``no_new_privs``
  (``setpriv``), so the kernel enforces ``RLIMIT_NPROC``; otherwise bubblewrap runs in an
  unprivileged user namespace.
* **limits**: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU`` (CPU seconds per process),
  ``RLIMIT_NPROC`` (processes and threads), ``RLIMIT_FSIZE`` (largest file), a watchdog on the
  scratch folder's total size and on captured stdout/stderr, and a wall-clock timeout after
  which the whole sandbox is killed.

If bubblewrap is missing or cannot create its namespaces, :func:`check_bwrap` raises
:class:`SandboxUnavailable` with instructions: the grader never falls back to running student
code unsandboxed.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["Limits", "SandboxResult", "SandboxUnavailable", "check_bwrap", "run_sandboxed",
           "build_argv", "python_binds", "SANDBOX_UID"]

#: First uid used for sandboxed payloads when the grader runs as root (no passwd entry needed).
SANDBOX_UID = 61000
_MiB = 1024 * 1024


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; grading must not go on."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run (all per submission).

    memory_mb: ``RLIMIT_AS`` of every process (virtual memory, MiB). ``None`` = no limit
        (needed with CUDA, which reserves huge virtual ranges).
    cpu_s: ``RLIMIT_CPU`` of every process (CPU seconds; SIGKILL at the hard limit).
    nproc: ``RLIMIT_NPROC``: processes + threads of the sandbox's user.
    fsize_mb: ``RLIMIT_FSIZE``: largest file any process may write (MiB).
    scratch_mb: total size of the writable scratch folder (watchdog; MiB).
    tmp_mb: size of the ``/tmp`` and ``/dev/shm`` tmpfs (MiB each).
    wall_s: wall-clock seconds before the whole sandbox is killed.
    output_mb: captured stdout / stderr of the payload (MiB each); more is discarded.
    """

    memory_mb: int | None = 4096  # torch alone maps ~0.7 GB of address space on CPU
    cpu_s: int = 900  # per process; the wall clock usually stops a run first
    nproc: int = 256  # the kernel, the runner and torch's thread pools fit easily
    fsize_mb: int = 64  # a saved tensor or notebook is far smaller
    scratch_mb: int = 512  # inputs + results + anything the notebook writes
    tmp_mb: int = 256  # /tmp and /dev/shm
    wall_s: float = 900.0  # the whole notebook
    output_mb: int = 64  # runner protocol on stdout (cell outputs included)

    def __post_init__(self) -> None:
        for name in ("cpu_s", "nproc", "fsize_mb", "scratch_mb", "tmp_mb", "output_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int; got {value!r}")
        if self.memory_mb is not None and (not isinstance(self.memory_mb, int) or self.memory_mb < 256):
            raise ValueError(f"Limits.memory_mb must be None or an int >= 256; got {self.memory_mb!r}")
        if not isinstance(self.wall_s, (int, float)) or self.wall_s <= 0:
            raise ValueError(f"Limits.wall_s must be a positive number; got {self.wall_s!r}")


@dataclass
class SandboxResult:
    """What came back from one sandboxed run.

    returncode: the payload's exit status (negative: killed by that signal).
    killed: why the grader killed the sandbox ("timeout", "scratch", ...), or None.
    stdout / stderr: captured bytes (at most ``Limits.output_mb`` each).
    truncated: True when stdout or stderr exceeded the cap.
    wall_s: seconds the sandbox ran.
    """

    returncode: int
    killed: str | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    wall_s: float
    argv: list[str] = field(default_factory=list)


def _bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, and the grader never runs student code "
            "unsandboxed. Install it: `sudo apt-get install bubblewrap` (Debian/Ubuntu; "
            "`make system-deps` does it), then grade again."
        )
    return path


def _is_root() -> bool:
    return os.geteuid() == 0


@functools.lru_cache(maxsize=None)
def check_bwrap() -> str:
    """Return the path of a working ``bwrap`` or raise :class:`SandboxUnavailable`.

    Runs ``/bin/true`` inside a sandbox with the same namespace flags grading uses, so a
    machine where namespaces are forbidden (a container without user namespaces, a hardened
    kernel) is reported before any submission is touched.
    """
    bwrap = _bwrap_path()
    argv = [bwrap, *_namespace_flags(), "--ro-bind", "/usr", "/usr", *_lib_links(),
            "--proc", "/proc", "--dev", "/dev"]
    if _is_root():
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                 "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                 "--clear-groups", "--inh-caps=-all", "--no-new-privs", "--", "true"]
    else:
        argv += ["true"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:  # pragma: no cover - machine specific
        raise SandboxUnavailable(f"bubblewrap ({bwrap}) could not be started: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise SandboxUnavailable(
            f"bubblewrap ({bwrap}) cannot create a sandbox on this machine ({err or 'exit ' + str(proc.returncode)}). "
            "It needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces > 0) or to run as root; inside Docker use "
            "--security-opt seccomp=unconfined or run the grader on the host. "
            "The grader never runs student code unsandboxed."
        )
    return bwrap


def _namespace_flags() -> list[str]:
    flags = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if not _is_root():
        flags.insert(0, "--unshare-user")
    return flags


def _lib_links() -> list[str]:
    """``/lib``, ``/lib64``, ``/bin``, ``/sbin``: symlinks on merged-/usr systems, else binds."""
    out: list[str] = []
    for name in ("lib", "lib32", "lib64", "libx32", "bin", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            out += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            out += ["--ro-bind", str(path), str(path)]
    return out


def python_binds() -> list[tuple[str, str]]:
    """Read-only binds that make this interpreter and its virtual environment work inside.

    The installation (``sys.base_prefix``) and the venv (``sys.prefix``) are bound at their own
    paths, so ``pyvenv.cfg`` and the kernelspec keep working.
    """
    binds: list[tuple[str, str]] = []
    for prefix in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix}:
        if prefix.startswith("/usr/") or prefix == "/usr":
            continue
        binds.append((prefix, prefix))
    # the interpreter a venv's bin/python points at may live elsewhere (pyenv shims etc.)
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    parent = os.path.dirname(exe_dir)
    if not any(parent == b[0] or parent.startswith(b[0] + "/") for b in binds) and not parent.startswith("/usr"):
        binds.append((parent, parent))
    return sorted(set(binds), key=lambda b: (b[1].count("/"), b[1]))


_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
              "mime.types", "alternatives")


def _etc_binds(staging: Path, uid: int) -> list[str]:
    """A minimal ``/etc``: the dynamic loader's files plus a synthetic passwd/group/hosts."""
    out = ["--dir", "/etc"]
    for name in _ETC_FILES:
        path = Path("/etc") / name
        if path.exists():
            out += ["--ro-bind", str(path), str(path)]
    etc = staging / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\nstudent:x:{uid}:{uid}::/tmp/home:/bin/sh\n")
    (etc / "group").write_text(f"root:x:0:\nstudent:x:{uid}:\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    for name in ("passwd", "group", "hosts"):
        os.chmod(etc / name, 0o644)
        out += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    return out


# tmpfs mounts, created before the binds: folders made inside them need explicit permissions
_WRITABLE_AT_SETUP = frozenset({"/tmp", "/dev/shm"})


def _ancestor_dirs(dests: Sequence[str], mounted: set[str]) -> list[str]:
    """``--perms 0755 --dir`` for every parent folder of a bind target (bwrap would make them 0700)."""
    seen: list[str] = []
    for dest in dests:
        parts = Path(dest).parts[1:-1]
        cur = ""
        for part in parts:
            cur += "/" + part
            if cur in mounted:
                continue  # a mount point of its own (e.g. the /tmp tmpfs): look further down
            if any(cur.startswith(m + "/") for m in mounted - _WRITABLE_AT_SETUP):
                break  # inside a read-only bind: nothing can be created there
            # (inside a tmpfs such as /tmp, bwrap would create the folder 0700: make it 0755)
            if cur not in seen:
                seen.append(cur)
    out: list[str] = []
    for d in seen:
        out += ["--perms", "0755", "--dir", d]
    return out


def _sandbox_uid() -> int:
    # one uid per grading process so concurrent sandboxes do not share RLIMIT_NPROC
    return SANDBOX_UID + os.getpid() % 4000


def build_argv(
    payload: Sequence[str],
    *,
    scratch: Path,
    staging: Path,
    ro_binds: Sequence[tuple[str | Path, str]] = (),
    limits: Limits,
    cwd: str = "/io",
    uid: int | None = None,
    dev_binds: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """The full ``bwrap ...`` command line for ``payload`` (exposed for tests and docs).

    ``dev_binds``: device nodes made available inside (e.g. ``lmcourse.stage.gpu_devices()``);
    ``extra``: further bwrap arguments placed after the binds (``--dir``, ``--symlink``...)."""
    bwrap = check_bwrap()
    uid = _sandbox_uid() if uid is None else uid
    binds = [(str(Path(s).resolve()), d) for s, d in [*python_binds(), *ro_binds]]
    for src, _ in binds:
        if not os.path.exists(src):
            raise ValueError(f"ro_binds: source {src!r} does not exist")
    argv = [bwrap, *_namespace_flags()]
    argv += ["--ro-bind", "/usr", "/usr", *_lib_links()]
    argv += _etc_binds(staging, uid)
    argv += ["--proc", "/proc", "--dev", "/dev"]
    tmp_bytes = str(limits.tmp_mb * _MiB)
    argv += ["--size", tmp_bytes, "--perms", "1777", "--tmpfs", "/tmp"]
    argv += ["--size", tmp_bytes, "--perms", "1777", "--tmpfs", "/dev/shm"]
    mounted = {"/usr", "/etc", "/proc", "/dev", "/tmp", "/io"}
    argv += _ancestor_dirs([d for _, d in binds], mounted)
    for src, dest in binds:
        argv += ["--ro-bind", src, dest]
    for dev in dev_binds:
        argv += ["--dev-bind", dev, dev]
    argv += list(extra)
    argv += ["--bind", str(scratch), "/io"]
    argv += ["--chdir", cwd]
    if _is_root():
        # privileged bwrap (no user namespace): keep only what setpriv needs, then drop to an
        # unprivileged uid with no capabilities, so RLIMIT_NPROC is enforced by the kernel
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                 "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--no-new-privs", "--"]
    argv += list(payload)
    return argv


def _limits_preexec(limits: Limits, nproc: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        os.setsid()
        if limits.memory_mb is not None:
            m = limits.memory_mb * _MiB
            resource.setrlimit(resource.RLIMIT_AS, (m, m))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        f = limits.fsize_mb * _MiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (f, f))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def _user_process_count() -> int:
    """Processes + threads of this uid (unprivileged mode: RLIMIT_NPROC also counts these)."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                st = os.stat(f"/proc/{entry.name}")
                if st.st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def _dir_size(path: Path, cap: int) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
            if total > cap:
                return total
    return total


def run_sandboxed(
    payload: Sequence[str],
    *,
    scratch: str | Path,
    staging: str | Path,
    ro_binds: Sequence[tuple[str | Path, str]] = (),
    env: dict[str, str] | None = None,
    limits: Limits = Limits(),
    stdin_data: bytes = b"",
    cwd: str = "/io",
    on_stdout_line: Callable[[bytes], None] | None = None,
    dev_binds: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> SandboxResult:
    """Run ``payload`` (argv inside the sandbox) with ``scratch`` writable at ``/io``.

    Args:
        payload: the command inside the sandbox, e.g. ``[sys.executable, "-I", "/opt/x.py"]``.
        scratch: host folder that becomes ``/io`` (the only writable place besides tmpfs);
            chowned to the sandbox uid when the grader is root.
        staging: host folder for the sandbox's synthetic ``/etc`` files (not visible as such).
        ro_binds: extra ``(host source, sandbox destination)`` read-only binds.
        env: the payload's COMPLETE environment (the grader's own is never passed through).
        limits: see :class:`Limits`.
        stdin_data: bytes fed to the payload's stdin (then closed).
        on_stdout_line: called with every stdout line as it arrives (grader thread).
        dev_binds: device nodes to expose (``lmcourse.stage.gpu_devices()`` for CUDA; then use
            ``Limits(memory_mb=None)``: CUDA reserves far more address space than it uses).

    Returns:
        a :class:`SandboxResult`; the whole process tree is dead when it returns.

    Raises:
        SandboxUnavailable: bubblewrap cannot run here.
        ValueError: a bind source does not exist or ``scratch`` is not a folder.
    """
    scratch, staging = Path(scratch), Path(staging)
    if not scratch.is_dir():
        raise ValueError(f"scratch must be an existing folder; got {str(scratch)!r}")
    staging.mkdir(parents=True, exist_ok=True)
    uid = _sandbox_uid()
    nproc = _prepare_scratch(scratch, uid, limits)
    argv = build_argv(payload, scratch=scratch, staging=staging, ro_binds=ro_binds,
                      limits=limits, cwd=cwd, uid=uid, dev_binds=dev_binds, extra=extra)
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "HOME": "/tmp/home", "TMPDIR": "/tmp"}
    base_env.update(env or {})
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=base_env, close_fds=True,
                            preexec_fn=_limits_preexec(limits, nproc))
    pumps = _Pumps(proc, limits.output_mb * _MiB, on_stdout_line)
    threads = pumps.start(stdin_data)
    killed = _watch(proc, scratch, limits, start)
    proc.wait()
    for t in threads:
        t.join(timeout=10)
    return SandboxResult(returncode=proc.returncode, killed=killed, stdout=b"".join(pumps.chunks["out"]),
                         stderr=b"".join(pumps.chunks["err"]), truncated=pumps.truncated,
                         wall_s=time.monotonic() - start, argv=argv)


def _prepare_scratch(scratch: Path, uid: int, limits: Limits) -> int:
    """Hand ``scratch`` to the sandbox uid when the grader is root; the RLIMIT_NPROC to set
    (unprivileged, the limit also counts this user's processes outside the sandbox)."""
    if _is_root():
        for root, dirs, files in os.walk(scratch):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), uid, uid)
        os.chown(scratch, uid, uid)
        return limits.nproc
    return limits.nproc + _user_process_count()


class _Pumps:
    """Threads that feed the payload's stdin and capture its stdout / stderr up to ``cap``
    bytes each (more is discarded and flagged as truncated)."""

    def __init__(self, proc: subprocess.Popen, cap: int, on_stdout_line: Callable[[bytes], None] | None) -> None:
        self.proc, self.cap, self.on_stdout_line = proc, cap, on_stdout_line
        self.chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        self.size = {"out": 0, "err": 0}
        self.truncated = False

    def start(self, stdin_data: bytes) -> list[threading.Thread]:
        targets = (self._stdout, self._stderr, lambda: self._stdin(stdin_data))
        threads = [threading.Thread(target=f, daemon=True) for f in targets]
        for t in threads:
            t.start()
        return threads

    def _keep(self, stream: str, data: bytes) -> bool:
        if self.size[stream] + len(data) > self.cap:
            self.truncated = True
            return False
        self.size[stream] += len(data)
        self.chunks[stream].append(data)
        return True

    def _stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            if self._keep("out", line) and self.on_stdout_line is not None:
                try:
                    self.on_stdout_line(line)
                except Exception:  # a bad line must not kill the pump
                    pass

    def _stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read(65536), b""):
            self._keep("err", chunk)

    def _stdin(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass


def _watch(proc: subprocess.Popen, scratch: Path, limits: Limits, start: float) -> str | None:
    """Wait for ``proc``; kill the sandbox past the wall clock or the scratch size. Returns why
    it was killed ("timeout", "scratch") or None."""
    killed: str | None = None
    scratch_cap = limits.scratch_mb * _MiB
    next_du = 0.0
    while True:
        try:
            proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - start > limits.wall_s:
            killed = "timeout"
        elif now >= next_du:
            next_du = now + 1.0
            if _dir_size(scratch, scratch_cap) > scratch_cap:
                killed = "scratch"
        if killed:
            _kill(proc)
            break
    return killed


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL bubblewrap's process group; its init (PID 1 inside) takes every process with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
