"""Instructor tooling for the course's graded exercises (instructor guide).

* ``python -m lmlib.course release [ASSIGNMENT ...]`` — regenerate ``exercises/`` from
  ``solutions/`` with nbgrader and write one zip per assignment (``lmlib.course.release``);
* ``python -m lmlib.course grade ASSIGNMENT SUBMISSIONS ...`` — grade a batch of submissions
  in sandboxes, write feedback and a CSV of grades (``lmlib.course.grade``).

The same commands are installed as ``lmcourse``.
"""
