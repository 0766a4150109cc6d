"""lmlib.checkpoint: the one file format of training state and cached models.

What matters: a file reads back exactly; a corrupt, truncated or foreign file, or one with
another format number, is refused with a clear error; and a write that is interrupted at
any point leaves the previous file intact and nothing half-written under the real name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlib import checkpoint
from lmlib.checkpoint import FORMAT, MAGIC, CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _split(path: Path) -> tuple[dict, bytes]:
    """Header and payload bytes of a file, parsed independently of lmlib.checkpoint."""
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    line, body = raw[len(MAGIC) :].split(b"\n", 1)
    return json.loads(line), body


def test_save_then_load_round_trip(tmp_path) -> None:
    w = torch.randn(3, 4)
    payload = {"w": w, "note": "hi", "steps": [1, 2, 3], "nested": {"lr": 1e-3, "none": None}}
    path = save_checkpoint(tmp_path / "sub" / "c.pt", payload)
    assert path == tmp_path / "sub" / "c.pt"
    data = load_checkpoint(path)
    assert torch.equal(data["w"], w) and data["note"] == "hi" and data["steps"] == [1, 2, 3]
    assert data["nested"] == {"lr": 1e-3, "none": None}
    header, body = _split(path)
    assert header == {"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
    assert torch.equal(torch.load(io.BytesIO(body), weights_only=True)["w"], w)  # plain torch.save
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]  # no temporary file left


def test_corrupted_checkpoint_is_detected(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.arange(1000.0)})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte in the middle
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt: sha256"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_detected(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.arange(1000.0)})
    full = path.read_bytes()
    path.write_bytes(full[:-100])
    with pytest.raises(CheckpointError, match="corrupt: .* payload bytes, its header says"):
        load_checkpoint(path)
    path.write_bytes(full[:5])  # cut inside the magic line
    with pytest.raises(CheckpointError, match="truncated inside its header"):
        load_checkpoint(path)
    path.write_bytes(full[: len(MAGIC) + 10])  # cut inside the JSON header
    with pytest.raises(CheckpointError, match="header is not readable"):
        load_checkpoint(path)
    other = tmp_path / "plain.pt"
    torch.save({"w": 1}, other)  # a plain torch.save file: no header, no digest
    with pytest.raises(CheckpointError, match="not an lmlib checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_wrong_format_number_is_refused(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(2)})
    header, body = _split(path)
    for fmt in (1, FORMAT + 1, "2"):
        path.write_bytes(MAGIC + json.dumps({**header, "format": fmt}).encode() + b"\n" + body)
        with pytest.raises(CheckpointError, match=f"has format {fmt!r}; this lmlib reads format {FORMAT}"):
            load_checkpoint(path)


def test_save_checkpoint_bad_input(tmp_path) -> None:
    with pytest.raises(TypeError, match="payload must be dict"):
        save_checkpoint(tmp_path / "c.pt", [1, 2])
    assert not (tmp_path / "c.pt").exists()


def test_interrupted_write_leaves_the_old_file_intact(tmp_path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(3), "v": 1})
    old = path.read_bytes()

    def interrupted(fd):  # the new bytes are written to the temporary file, then the run stops
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.ones(1000), "v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old and load_checkpoint(path)["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # the temporary file was removed

    with pytest.raises(Exception):  # a payload torch.save cannot pickle: fails before any file is opened
        save_checkpoint(path, {"f": lambda: 0})
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_process_killed_during_write_leaves_the_old_file_loadable(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"v": 1})
    script = (
        "import os, sys, torch\n"
        "from lmlib import checkpoint\n"
        "checkpoint.os.replace = lambda src, dst: os._exit(9)  # killed between writing and renaming\n"
        "checkpoint.save_checkpoint(sys.argv[1], {'v': 2, 'w': torch.ones(10000)})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert load_checkpoint(path) == {"v": 1}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "c.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".c.pt.") and leftovers[0].endswith(".tmp")
    save_checkpoint(path, {"v": 3})  # the next save still works and replaces the file
    assert load_checkpoint(path) == {"v": 3}
