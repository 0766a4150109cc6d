"""What holds for the checks of all assignments 02-10 together: every check has a wrong
implementation in its assignment's test file (``test_checks_aNN_*.py``), the solution
notebooks call exactly the registered checks, and importing the check modules imports no
reference module. The machinery is in ``check_support.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from check_support import ASSIGNMENTS, ROOT, notebook_calls, wrong_tables
from lmlib.grading import registered_checks


def _all_check_ids() -> list[str]:
    return sorted(cid for aid in ASSIGNMENTS for cid in registered_checks(aid))


def test_every_check_is_covered_and_every_assignment_has_checks():
    ids = _all_check_ids()
    for aid in ASSIGNMENTS:
        if (ROOT / "solutions" / aid).is_dir():
            assert any(c.startswith(aid + "/") for c in ids), f"{aid} has a solution notebook but no checks"
    wrong = wrong_tables()
    missing = [c for c in ids if not wrong.get(c)]
    assert not missing, f"checks without a wrong implementation in their test_checks_aNN_*.py: {missing}"


def test_notebooks_call_exactly_the_registered_checks():
    for aid in ASSIGNMENTS:
        if not (ROOT / "solutions" / aid).is_dir():
            continue
        called = {cid for _, cid, _ in notebook_calls(aid)}
        assert called == set(registered_checks(aid)), f"{aid}: notebook calls {sorted(called)}"


def test_check_modules_import_no_reference_module():
    code = textwrap.dedent(
        """
        import sys
        from lmlib.grading import registered_checks
        for aid in %r:
            registered_checks(aid)
        refs = {m for aid in %r for c in registered_checks(aid).values() for m in c.reference}
        loaded = sorted(m for m in refs if m in sys.modules)
        print(loaded)
        sys.exit(1 if loaded else 0)
        """ % (ASSIGNMENTS, ASSIGNMENTS)
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
