"""Collect a batch of submissions and read each notebook defensively (instructor guide).

SUBMISSIONS is a folder of per-student folders (``<student>/<assignment>.ipynb`` or
``<student>/<assignment>/<assignment>.ipynb``, the layout of nbgrader's ``submitted/``), of LMS
zip files (``<student>.zip`` or nbgrader zip-collect names ``<student>_<assignment>[_...].zip``;
nested folders, several notebooks and macOS ``__MACOSX`` junk are handled) or of bare
notebooks. Originals are only read, never modified.
"""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from .model import Submission

__all__ = [
    "MAX_NOTEBOOK_BYTES",
    "MAX_ZIP_MEMBER_BYTES",
    "collect_submissions",
    "DUPLICATE_POLICIES",
    "NotebookRejected",
    "read_notebook",
]

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024  # a notebook file larger than this is refused
MAX_ZIP_MEMBER_BYTES = 50 * 1024 * 1024
_STUDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")


def _safe_student(name: str) -> str:
    name = name.strip()
    if _STUDENT_RE.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]+", "_", name).strip("._") or "unknown"
    return cleaned[:100]


def _is_junk(path: PurePosixPath) -> bool:
    return any(p == "__MACOSX" or p.startswith("._") or p == ".ipynb_checkpoints" or p.startswith(".~") for p in path.parts)


def _pick_notebook(paths: Sequence[PurePosixPath], assignment: str) -> tuple[PurePosixPath | None, list[str], str | None]:
    """Choose the submission's notebook among candidate paths (relative to the student's root)."""
    cands = [p for p in paths if p.suffix == ".ipynb" and not _is_junk(p)]
    notes: list[str] = []
    if not cands:
        return None, notes, f"missing notebook: no {assignment}.ipynb in the submission"
    named = sorted((p for p in cands if p.name == f"{assignment}.ipynb"), key=lambda p: (len(p.parts), str(p)))
    if named:
        if len(named) > 1:
            notes.append(f"{len(named)} copies of {assignment}.ipynb; graded the one at {named[0]}")
        return named[0], notes, None
    if len(cands) == 1:
        notes.append(f"notebook is named {cands[0].name}, not {assignment}.ipynb; graded it anyway")
        return cands[0], notes, None
    return None, notes, (f"missing notebook: no {assignment}.ipynb and {len(cands)} other notebooks "
                         f"({', '.join(sorted(p.name for p in cands)[:5])}); cannot tell which to grade")


def _student_of(stem: str, assignment: str) -> str:
    """``<student>`` of ``<student>_<assignment>[_...]`` (nbgrader zip-collect), else the stem."""
    m = re.match(rf"^(?P<student>.+?)_{re.escape(assignment)}(?:_.*)?$", stem)
    return _safe_student(m.group("student") if m else stem)


def _from_folder(entry: Path, assignment: str) -> Submission:
    student = _safe_student(entry.name)
    sub = Submission(student=student, origin=str(entry))
    if student != entry.name:
        sub.problems.append(f"student folder {entry.name!r} renamed to {student!r}")
    rels = [PurePosixPath(p.relative_to(entry).as_posix()) for p in entry.rglob("*.ipynb") if p.is_file() and not p.is_symlink()]
    rel, notes, fatal = _pick_notebook(rels, assignment)
    sub.problems += notes
    sub.fatal = fatal
    if rel is not None:
        sub.notebook = entry / rel
    return sub


def _from_zip(entry: Path, assignment: str, work: Path) -> Submission:
    """The notebook of a zip, copied (size-limited, never extracted blindly: no path traversal)."""
    student = _student_of(entry.stem, assignment)
    sub = Submission(student=student, origin=str(entry))
    try:
        with zipfile.ZipFile(entry) as zf:
            infos = {PurePosixPath(i.filename): i for i in zf.infolist() if not i.is_dir()}
            rel, notes, fatal = _pick_notebook(list(infos), assignment)
            sub.problems += notes
            sub.fatal = fatal
            if rel is not None:
                info = infos[rel]
                if info.file_size > MAX_ZIP_MEMBER_BYTES:
                    sub.fatal = f"oversized notebook: {rel} is {info.file_size / 2**20:.1f} MiB in the zip"
                else:
                    dest = work / "unzipped" / student / f"{assignment}.ipynb"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        data = src.read(MAX_ZIP_MEMBER_BYTES + 1)
                        dst.write(data)
                    sub.notebook = dest
                    sub.origin = f"{entry}:{rel}"
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        sub.fatal = f"unreadable zip file {entry.name}: {exc}"
    return sub


def _add(subs: dict[str, Submission], sub: Submission) -> None:
    """Add ``sub`` under a unique student name (``alice``, ``alice-2``, ...)."""
    base, n = sub.student, 2
    while sub.student in subs:
        sub.student = f"{base}-{n}"
        n += 1
    if sub.student != base:
        sub.problems.append(f"another submission is also named {base}; this one is graded as {sub.student}")
    subs[sub.student] = sub


_STAMP_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[-_T ](\d\d)[-:](\d\d)(?:[-:](\d\d))?")
DUPLICATE_POLICIES = ("latest", "refuse")


def _timestamp(entry: Path, assignment: str) -> float:
    """When ``entry`` was submitted: the LMS / zip-collect time in its name
    (``<student>_<assignment>_2026-11-20-10-00-00.zip``), else the newest ``.ipynb`` entry of a
    zip, else the newest notebook's file time (POSIX seconds; zip and LMS times are local time,
    as zip files store them)."""
    m = _STAMP_RE.search(entry.stem)
    if m:
        y, mo, d, h, mi, sec = (int(x or 0) for x in m.groups())
        try:
            return float(time.mktime((y, mo, d, h, mi, sec, 0, 0, -1)))
        except (ValueError, OverflowError):
            pass
    try:
        if entry.is_file() and entry.suffix.lower() == ".zip":
            with zipfile.ZipFile(entry) as zf:
                stamps = [calendar_mtime(i.date_time) for i in zf.infolist() if i.filename.endswith(".ipynb")]
            return float(max(stamps)) if stamps else entry.stat().st_mtime
        if entry.is_dir():
            stamps = [p.stat().st_mtime for p in entry.rglob("*.ipynb") if p.is_file() and not p.is_symlink()]
            return max(stamps) if stamps else entry.stat().st_mtime
        return entry.stat().st_mtime
    except (OSError, zipfile.BadZipFile, ValueError, OverflowError):
        return 0.0


def _entries(submissions: Path, assignment: str) -> list[tuple[str, Path]]:
    """(student, entry) for every folder, zip and notebook directly in ``submissions``."""
    found = []
    for entry in sorted(submissions.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        if entry.is_dir():
            found.append((_safe_student(entry.name), entry))
        elif entry.suffix.lower() == ".zip" or entry.suffix == ".ipynb":
            found.append((_student_of(entry.stem, assignment), entry))
    return found


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "unknown time"


def _one(entry: Path, assignment: str, work: Path) -> Submission:
    if entry.is_dir():
        return _from_folder(entry, assignment)
    if entry.suffix.lower() == ".zip":
        return _from_zip(entry, assignment, work)
    return Submission(student=_student_of(entry.stem, assignment), notebook=entry, origin=str(entry))


def _unpack_batch(archive: Path, work: Path) -> Path:
    """A batch zip (an LMS "download all": student folders, zips or notebooks inside), unpacked
    member by member under ``work/batch`` (no path traversal, size-limited)."""
    dest = work / "batch" / _safe_student(archive.stem)
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = PurePosixPath(info.filename)
                if info.is_dir() or rel.is_absolute() or ".." in rel.parts or _is_junk(rel) or info.file_size > MAX_ZIP_MEMBER_BYTES:
                    continue
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    dst.write(src.read(MAX_ZIP_MEMBER_BYTES + 1))
                mtime = calendar_mtime(info.date_time)
                os.utime(target, (mtime, mtime))
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        raise FileNotFoundError(f"SUBMISSIONS {archive} is not a readable zip file: {exc}") from None
    return dest


def calendar_mtime(date_time: tuple) -> float:
    """A zip entry's ``date_time`` (local time, as zip stores it) in POSIX seconds."""
    try:
        return float(time.mktime((*date_time, 0, 0, -1)))
    except (ValueError, OverflowError):
        return 0.0


def collect_submissions(submissions: Path, assignment: str, work: Path,
                        duplicates: str = "latest") -> list[Submission]:
    """Find every student's notebook under ``submissions`` (see the module doc).

    ``submissions`` is a folder (the layouts above), a batch zip of such a folder (an LMS
    "download all"; a zip holding only ``<assignment>.ipynb`` is one student's, named by the
    zip) or one notebook (``<student>.ipynb``). Several entries of one student (two zips, a
    folder and a zip) are resolved *before* anything is extracted: ``duplicates="latest"``
    grades the latest by submission time (:func:`_timestamp`) and notes the others;
    ``"refuse"`` grades none of them (``Submission.refused``). Zip members are copied under
    ``work`` (never extracted blindly: no path traversal, size-limited); folder submissions
    are read in place (the grader only ever reads them).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}; got {duplicates!r}")
    if not submissions.exists():
        raise FileNotFoundError(f"SUBMISSIONS {submissions} does not exist (give a folder, a zip or a notebook)")
    if submissions.is_file() and submissions.suffix == ".ipynb":
        return [_one(submissions, assignment, work)]
    if submissions.is_file() and submissions.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(submissions) as zf:
                names = [PurePosixPath(i.filename) for i in zf.infolist() if not i.is_dir() and not _is_junk(PurePosixPath(i.filename))]
        except (zipfile.BadZipFile, OSError) as exc:
            raise FileNotFoundError(f"SUBMISSIONS {submissions} is not a readable zip file: {exc}") from None
        if PurePosixPath(f"{assignment}.ipynb") in names and not any(p.suffix.lower() == ".zip" for p in names):
            return [_from_zip(submissions, assignment, work)]  # one student's zip
        submissions = _unpack_batch(submissions, work)
    if not submissions.is_dir():
        raise FileNotFoundError(f"SUBMISSIONS {submissions} is not a folder, a zip or a notebook")
    by_student: dict[str, list[Path]] = {}
    for student, entry in _entries(submissions, assignment):
        by_student.setdefault(student, []).append(entry)
    subs: dict[str, Submission] = {}
    for student, entries in by_student.items():
        if len(entries) == 1:
            _add(subs, _one(entries[0], assignment, work))
            continue
        stamped = sorted(((_timestamp(e, assignment), e.name, e) for e in entries), key=lambda t: (t[0], t[1]))
        listing = ", ".join(f"{name} ({_when(t)})" for t, name, _ in stamped)
        if duplicates == "refuse":
            _add(subs, Submission(student=student, origin=str(submissions), refused=(
                f"{len(entries)} submissions ({listing}); refused (--duplicates refuse): keep one and grade again")))
            continue
        t, name, entry = stamped[-1]
        sub = _one(entry, assignment, work)
        sub.student, sub.timestamp = student, t
        older = ", ".join(f"{n} ({_when(tt)})" for tt, n, _ in stamped[:-1])
        sub.problems.append(f"{len(entries)} submissions: graded the latest, {name} ({_when(t)}); ignored {older}")
        _add(subs, sub)
    return list(subs.values())


class NotebookRejected(Exception):
    """The submission cannot be graded at all (every part scores 0, with this reason)."""


def read_notebook(path: Path) -> dict:
    """Load a submitted notebook defensively; :class:`NotebookRejected` with a clear reason."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise NotebookRejected(f"missing notebook: {exc.strerror}") from None
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookRejected(f"oversized notebook: {size / 2**20:.1f} MiB (limit {MAX_NOTEBOOK_BYTES / 2**20:.0f} MiB); clear the outputs and resubmit")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotebookRejected(f"not UTF-8 (byte {exc.start}); the file is not a valid notebook") from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookRejected(f"invalid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the file is not a valid notebook") from None
    except RecursionError:
        raise NotebookRejected("invalid notebook: JSON nested too deeply") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookRejected("invalid notebook: no list of cells (is this an .ipynb file of nbformat 4?)")
    if nb.get("nbformat") != 4:
        raise NotebookRejected(f"invalid notebook: nbformat {nb.get('nbformat')!r}, expected 4")
    return nb
