"""``python -m lmcourse ...`` — see :mod:`lmcourse.cli`."""

import sys

from .cli import main

sys.exit(main())
