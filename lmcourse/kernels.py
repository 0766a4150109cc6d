"""Start Jupyter kernels on private Unix-domain sockets instead of TCP ports (course set-up).

Why: a Jupyter client picks five free TCP ports on localhost, releases them, writes them to the
connection file and only then starts the kernel, which binds them. Anything else on the machine
that asks the OS for a port in between can take one; the kernel then fails to start or (for the
heartbeat port) prints ``ZMQError: Address already in use`` (jupyter/jupyter_client#487,
nteract/papermill#511). One test run of this course starts well over a hundred kernels (book
build, nbval, ``nbgrader validate``, grading), so the race showed up in CI. Unix-domain sockets
in a folder only this kernel uses cannot collide, and other users of a shared machine cannot
reach them (TCP kernel ports are open to every local user, which is what ipykernel's
"running over TCP without encryption" warning is about).

How: :class:`IPCProvisioner` is a kernel provisioner (the jupyter_client ≥ 7 mechanism for
how a kernel is launched), registered under the entry point ``lmlib-ipc-provisioner`` in
``pyproject.toml`` (the name predates the lmcourse package and stays, so existing environments
and Makefiles keep working). The course's ``Makefile`` (and the root ``conftest.py``) set
``JUPYTER_DEFAULT_PROVISIONER_NAME=lmlib-ipc-provisioner``, so every kernel that nbclient,
nbval, nbgrader, Jupyter Book or JupyterLab starts through jupyter_client uses it. It behaves
exactly like jupyter_client's ``LocalProvisioner`` except that, before the connection file is
written, it switches the kernel manager to the ``ipc`` transport with its sockets in a fresh
private folder (mode 0700), removed when the kernel is shut down.

A kernel manager that was explicitly configured for another transport or a non-local address is
left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from jupyter_client.localinterfaces import is_local_ip
from jupyter_client.provisioning import LocalProvisioner

ENTRY_POINT = "lmlib-ipc-provisioner"


class IPCProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A :class:`jupyter_client.provisioning.LocalProvisioner` whose kernels listen on
    Unix-domain sockets in a private temporary folder instead of TCP ports."""

    _socket_dir: str | None = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        # on a restart the manager is already on ipc and keeps its folder
        if km is not None and km.transport == "tcp" and is_local_ip(km.ip):
            # a short path: a Unix socket path is limited to ~104 bytes
            self._socket_dir = tempfile.mkdtemp(prefix="lmk-")  # mode 0700
            km.transport = "ipc"
            km.ip = os.path.join(self._socket_dir, "kernel")  # sockets kernel-1 ... kernel-5
        return await super().pre_launch(**kwargs)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if not restart and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
