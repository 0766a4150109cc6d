"""Kernels of the course run on private Unix-domain sockets (lmcourse.kernels).

Each scenario runs in a fresh interpreter, because jupyter_client's provisioner factory is a
process-wide singleton that reads JUPYTER_DEFAULT_PROVISIONER_NAME once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from lmcourse.kernels import ENTRY_POINT

START_AND_PROBE = """
import json, os, stat, sys
from jupyter_client.manager import KernelManager
km = KernelManager(**json.loads(sys.argv[1]))
km.start_kernel(stderr=open(os.devnull, "w"))
kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=120)
out = []
kc.execute_interactive("print(6 * 7)", timeout=60,
                       output_hook=lambda m: out.append(m["content"].get("text", "")))
info = km.get_connection_info()
folder = os.path.dirname(info["ip"]) if info["transport"] == "ipc" else None
report = {"provisioner": type(km.provisioner).__name__, "transport": info["transport"],
          "ip": info["ip"], "ports": [info[k] for k in ("shell_port", "iopub_port", "stdin_port",
                                                       "control_port", "hb_port")],
          "printed": "".join(out).strip(),
          "folder_mode": oct(stat.S_IMODE(os.stat(folder).st_mode)) if folder else None,
          "sockets": sorted(os.listdir(folder)) if folder else []}
kc.stop_channels(); km.shutdown_kernel(now=False)
report["folder_left"] = bool(folder) and os.path.exists(folder)
print("REPORT " + json.dumps(report))
"""


def _probe(env_name: str | None, **km_kwargs) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_DEFAULT_PROVISIONER_NAME"}
    if env_name is not None:
        env["JUPYTER_DEFAULT_PROVISIONER_NAME"] = env_name
    r = subprocess.run([sys.executable, "-c", START_AND_PROBE, json.dumps(km_kwargs)], env=env,
                       capture_output=True, text=True, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("REPORT ")), None)
    assert line, f"no report (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return json.loads(line[len("REPORT "):])


def test_course_kernels_listen_on_private_unix_sockets_and_clean_up():
    rep = _probe(ENTRY_POINT)
    assert rep["provisioner"] == "IPCProvisioner"
    assert rep["transport"] == "ipc" and os.path.isabs(rep["ip"]), rep
    assert rep["printed"] == "42"
    assert rep["folder_mode"] == "0o700", "the socket folder must be private to its user"
    # the five channels are socket files in that folder, nothing else
    assert rep["sockets"] == sorted(f"{os.path.basename(rep['ip'])}-{p}" for p in rep["ports"])
    assert len(set(rep["ports"])) == 5
    assert not rep["folder_left"], "the socket folder must be removed when the kernel shuts down"


def test_without_the_setting_jupyter_client_uses_tcp():
    """The control: the plain LocalProvisioner chooses TCP ports (what the race is about)."""
    rep = _probe(None)
    assert rep["provisioner"] == "LocalProvisioner"
    assert rep["transport"] == "tcp" and rep["printed"] == "42"
    assert all(isinstance(p, int) and p > 1024 for p in rep["ports"])


def test_an_explicit_transport_choice_is_respected(tmp_path):
    ip = str(tmp_path / "mine")
    rep = _probe(ENTRY_POINT, transport="ipc", ip=ip)
    assert rep["provisioner"] == "IPCProvisioner"
    assert rep["transport"] == "ipc" and rep["ip"] == ip and rep["printed"] == "42"


def test_this_test_session_selects_the_ipc_provisioner():
    """conftest.py sets it for every pytest run, so nbval's and nbgrader's kernels use it too."""
    assert os.environ.get("JUPYTER_DEFAULT_PROVISIONER_NAME") == ENTRY_POINT
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="jupyter_client.kernel_provisioners")}
    assert names.get(ENTRY_POINT) == "lmcourse.kernels:IPCProvisioner", (
        "lmlib and lmcourse are not installed with their entry points: run `make setup`")


def test_nbclient_executes_a_notebook_on_unix_sockets(tmp_path):
    """The path the book build (jupyter-cache), nbval and nbgrader take: nbclient + a kernelspec."""
    code = textwrap.dedent("""
        import nbformat, nbclient
        src = "import json, ipykernel; print(json.loads(ipykernel.get_connection_info())['transport'])"
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=120).execute()
        print("OUT", nb.cells[0].outputs[0]["text"].strip())
    """)
    env = dict(os.environ, JUPYTER_DEFAULT_PROVISIONER_NAME=ENTRY_POINT)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert "OUT ipc" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert "running over TCP" not in r.stderr
