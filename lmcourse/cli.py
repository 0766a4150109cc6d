"""Command line of the course tooling: ``python -m lmcourse`` (also installed as ``lmcourse``).

    python -m lmcourse release [ASSIGNMENT ...]        regenerate exercises/ and the LMS zips
    python -m lmcourse grade ASSIGNMENT SUBMISSIONS ... grade a batch (see the instructor guide)
    python -m lmcourse remove ASSIGNMENT --student ID | --all   undo a mistaken run
    python -m lmcourse student-dist OUT                 the students' folder OUT/ and OUT.zip

All take --root ROOT, the course root holding solutions/ (default: the current folder).
Each subcommand's own options: ``python -m lmcourse <command> --help``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = __doc__.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to ``lmcourse.release.main`` or ``lmcourse.grade.main`` (imported
    lazily, so ``release`` works without the grading pipeline's dependencies)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "release":
        from .release import main as release_main

        return int(release_main(rest) or 0)
    if command == "grade":
        from .grade import main as grade_main

        return int(grade_main(rest) or 0)
    if command == "student-dist":
        from .student_dist import main as dist_main

        return int(dist_main(rest) or 0)
    if command == "remove":
        from .remove import main as remove_main

        return int(remove_main(rest) or 0)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
