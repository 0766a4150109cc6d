"""Instructor tooling for the course's graded exercises (instructor guide).

* ``python -m lmcourse release [ASSIGNMENT ...]`` — regenerate ``exercises/`` from
  ``solutions/`` with nbgrader and write one zip per assignment (``lmcourse.release``);
* ``python -m lmcourse grade ASSIGNMENT SUBMISSIONS ...`` — grade a batch of submissions
  in sandboxes, write feedback and a CSV of grades (``lmcourse.grade``).

The same commands are installed as ``lmcourse``.
"""
