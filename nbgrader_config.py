"""nbgrader configuration of the course (read by every ``nbgrader`` command run from the repo root).

The course directory is the repository root: instructor notebooks (solutions and hidden tests)
live in ``solutions/<id>/<id>.ipynb``, ``python -m lmcourse release`` (``make release``)
generates the student versions into ``exercises/<id>/``; everything produced while grading
(submissions, autograded copies, feedback, the gradebook) lives under ``grading/``, which is
not tracked by git. For a large course use PostgreSQL instead of SQLite, e.g.
``c.CourseDirectory.db_url = "postgresql://user:password@dbhost:5432/llmcourse"``
(see the instructor guide).
"""

import os

c = get_config()  # noqa: F821 - injected by traitlets when nbgrader loads this file
_root = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.course_id = "llm-course"
c.CourseDirectory.root = _root
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "grading/submitted"
c.CourseDirectory.autograded_directory = "grading/autograded"
c.CourseDirectory.feedback_directory = "grading/feedback"
c.CourseDirectory.solution_directory = "grading/solution"
c.CourseDirectory.source_with_tests_directory = "grading/source_with_tests"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_root, "grading", "gradebook.db")

# Student versions: an answer cell becomes this stub, which fails its tests until replaced.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# nbgrader's default cell timeout (30 s) is too short for the training exercises on a CPU.
c.Execute.timeout = 600
c.Execute.interrupt_on_timeout = True
