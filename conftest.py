"""pytest set-up shared by tests/, solutions/ and chapters/ (nbval) however pytest is started.

Every Jupyter kernel started in a test run listens on private Unix-domain sockets instead of
TCP ports on localhost, which another process can take between the moment a port is chosen and
the moment the kernel binds it (see :mod:`lmcourse.kernels`). ``make`` exports the same.
"""

import os

from lmcourse.kernels import ENTRY_POINT

os.environ.setdefault("JUPYTER_DEFAULT_PROVISIONER_NAME", ENTRY_POINT)
