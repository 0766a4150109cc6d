"""lmcourse: the instructor tooling of the course's graded exercises (instructor guide).

A sibling of :mod:`lmlib` in the same repository: lmlib is what students and the book import
(its ``lmlib.grading`` runs the checks in the student's kernel); lmcourse is what instructors
run, and lmlib never imports it.

* ``python -m lmcourse release [ASSIGNMENT ...]`` — regenerate ``exercises/`` from
  ``solutions/`` with nbgrader and write one zip per assignment (:mod:`lmcourse.release`);
* ``python -m lmcourse grade ASSIGNMENT SUBMISSIONS ...`` — grade a batch of submissions
  in sandboxes, write feedback and a CSV of grades (:mod:`lmcourse.grade`);
* ``python -m lmcourse student-dist OUT`` — the folder and zip students work from
  (:mod:`lmcourse.student_dist`).

All take ``--root`` (the course root holding ``solutions/``; default: the current folder).
The same commands are installed as ``lmcourse``.

Modules, by job: ``model`` (the dataclasses), ``collect``, ``rebuild``, ``stage`` (the
sandbox's copy of lmlib), ``sandbox``, ``nbrunner`` (runs inside the sandbox), ``score``,
``gradebook``, ``report``, ``feedback``, ``grade`` (the orchestration), ``release``,
``notebook`` (nbgrader cells and check ids), ``kernels`` (the kernel provisioner),
``student_dist``, ``cli``; and the package ``hidden_checks``, the hidden checks, which lmlib
does not hold (importing lmcourse registers them with lmlib's registry, below).
"""

from .hidden_checks import install as _install_hidden_checks

# the trusted side always knows the hidden checks (lmcourse.hidden_checks); lmlib alone does not
_install_hidden_checks()
