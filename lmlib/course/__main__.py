"""``python -m lmlib.course ...`` — see :mod:`lmlib.course.cli`."""

import sys

from .cli import main

sys.exit(main())
