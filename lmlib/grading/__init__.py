"""The checks behind the graded exercises (course guides; see ``lmlib.grading.core``).

Exercise notebooks start with ``from lmlib.grading import check`` and their test cells call
``check("<assignment>/<part>", answer)``. Importing this package is cheap and never imports
lmlib's reference implementations (they are hidden from students' code while grading).
"""

from .core import (
    GRADING_IO_ENV,
    SECRET_ENV,
    NOT_LOCAL,
    Check,
    add_check_package,
    as_tensor,
    assignment_of,
    check,
    compare_plain,
    evaluate,
    generate_inputs,
    get_check,
    read_inputs,
    read_result,
    reference_modules,
    register,
    registered_checks,
    result_path,
    safe_id,
    seed_for,
    write_inputs,
)
from .plain import NotPlainError, PlainData, PlainDataError, dump_plain, load_plain, to_plain

__all__ = [
    "check",
    "Check",
    "register",
    "add_check_package",
    "NOT_LOCAL",
    "get_check",
    "registered_checks",
    "reference_modules",
    "assignment_of",
    "to_plain",
    "dump_plain",
    "load_plain",
    "PlainData",
    "PlainDataError",
    "NotPlainError",
    "compare_plain",
    "evaluate",
    "generate_inputs",
    "write_inputs",
    "read_inputs",
    "read_result",
    "result_path",
    "safe_id",
    "seed_for",
    "as_tensor",
    "GRADING_IO_ENV",
    "SECRET_ENV",
]
