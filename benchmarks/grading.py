"""Grading speed: plain ``nbgrader autograde`` vs the sandboxed ``python -m lmcourse grade``.

    .venv/bin/python benchmarks/grading.py [--n 8] [--assignment 01-lm] [--db-url URL]

Generates N submissions of the assignment (the solution notebook, so every cell runs to the
end), then grades them on this machine

* with plain nbgrader (``nbgrader autograde --student s_i``, one student at a time, so each
  notebook is timed; the notebook runs unsandboxed, in the grader's own process tree);
* with ours, 1 worker and 2 workers (a sandbox per notebook, trusted scoring, gradebook,
  CSV, feedback).

and prints a table: per-notebook median seconds, batch wall time, notebooks per minute, and
ratios against nbgrader. Per-notebook times of ours come from the grade command's own report
(rebuild + sandboxed run + scoring). Results depend on the machine's load: run it alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LMLIB_CACHE", str(REPO / ".cache" / "lmlib"))
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def bench_nbgrader(assignment: str, n: int, tmp: Path) -> tuple[list[float], float]:
    """Plain nbgrader: a throwaway course with the solution as source; autograde each student."""
    course = tmp / "nbgrader-course"
    (course / "source" / assignment).mkdir(parents=True)
    shutil.copy(REPO / "solutions" / assignment / f"{assignment}.ipynb", course / "source" / assignment)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{course / 'gradebook.db'}'\n"
        "c.ExecutePreprocessor.timeout = 600\n"
        "c.Execute.timeout = 600\n")
    nbg = [sys.executable, "-m", "nbgrader"]
    subprocess.run([*nbg, "generate_assignment", assignment, "--force"], cwd=course, env=_env(),
                   check=True, capture_output=True)
    for i in range(n):
        d = course / "submitted" / f"s{i}" / assignment
        d.mkdir(parents=True)
        shutil.copy(REPO / "solutions" / assignment / f"{assignment}.ipynb", d)
    times = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        proc = subprocess.run([*nbg, "autograde", assignment, "--student", f"s{i}", "--create", "--force"],
                              cwd=course, env=_env(), capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit("nbgrader autograde failed")
    return times, time.perf_counter() - t0


def bench_ours(assignment: str, n: int, tmp: Path, workers: int, db_url: str | None) -> tuple[list[float], float]:
    subs = tmp / f"subs-{workers}"
    for i in range(n):
        d = subs / f"s{i}"
        d.mkdir(parents=True)
        shutil.copy(REPO / "solutions" / assignment / f"{assignment}.ipynb", d)
    out = tmp / f"ours-{workers}"
    cmd = [sys.executable, "-m", "lmcourse", "grade", assignment, str(subs), "--root", str(REPO),
           "--out", str(out), "--workers", str(workers), "--no-feedback"]
    if db_url:
        cmd += ["--db-url", db_url]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit("lmcourse grade failed")
    times = [float(m) for m in re.findall(r"^\s+s\d+: [\d.]+/[\d.]+\s+\(([\d.]+) s\)", proc.stdout, re.M)]
    full = re.findall(r"^\s+s\d+: ([\d.]+)/([\d.]+)", proc.stdout, re.M)
    if len(times) != n or any(a != b for a, b in full):
        print(proc.stdout[-3000:], file=sys.stderr)
        raise SystemExit("unexpected grade output (every solution should get full marks)")
    return times, wall


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8, help="number of submissions (default 8)")
    p.add_argument("--assignment", default="01-lm")
    p.add_argument("--db-url", default=None, help="gradebook for ours (e.g. postgresql://...)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1; got {args.n}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="grading-bench-") as tmp:
        tmp = Path(tmp)
        nb_times, nb_wall = bench_nbgrader(args.assignment, args.n, tmp)
        rows.append(("plain nbgrader autograde (1 process)", nb_times, nb_wall))
        for w in (1, 2):
            t, wall = bench_ours(args.assignment, args.n, tmp, w, args.db_url)
            rows.append((f"lmcourse grade, {w} worker{'s' if w > 1 else ''}", t, wall))
    base_med, base_wall = statistics.median(rows[0][1]), rows[0][2]
    print(f"\nGrading {args.n} submissions of {args.assignment} on {os.cpu_count()} CPU cores "
          f"(load average {os.getloadavg()[0]:.1f})\n")
    head = f"{'grader':<40} {'median s/notebook':>18} {'x nbgrader':>10} {'batch wall s':>12} {'notebooks/min':>14} {'x nbgrader':>10}"
    print(head)
    print("-" * len(head))
    for name, times, wall in rows:
        med = statistics.median(times)
        rate = 60 * len(times) / wall
        print(f"{name:<40} {med:>18.2f} {med / base_med:>10.2f} {wall:>12.1f} {rate:>14.2f} {base_wall / wall:>10.2f}")
    print("\nmedian s/notebook: ours = rebuild + sandboxed run + trusted scoring of one notebook "
          "(with 2 workers two run at once, so each is slower); nbgrader = one `autograde --student` "
          "process. 'x nbgrader' of the throughput column: >1 is faster than nbgrader.")


if __name__ == "__main__":
    main()
