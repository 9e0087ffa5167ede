"""Checkpoints: atomic writes that survive a kill, weights_only loading, RNG round trips."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from mri_anomaly.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def test_round_trip_is_weights_only_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = {
        "method": "latent-norm-ae",
        "config": "method: latent-norm-ae\n",
        "state_dict": {"w": torch.arange(6.0).reshape(2, 3)},
        "progress": {"global_step": 3, "completed": False},
        "rng": [capture_rng_state()],
        "thresholds": {"latent_norm": 1.5, "other": float("inf")},
    }
    save_checkpoint(payload, path)
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    raw = torch.load(path, weights_only=True)  # what users and the scorer do
    assert torch.equal(raw["state_dict"]["w"], payload["state_dict"]["w"])
    assert raw["versions"]["torch"] == str(torch.__version__) and "mri_anomaly" in raw["versions"]
    loaded = load_checkpoint(path)
    assert loaded["thresholds"] == {"latent_norm": 1.5, "other": float("inf")}
    assert loaded["progress"]["global_step"] == 3


def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_unreadable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": "else"}, path)
    with pytest.raises(ValueError, match="not an mri-anomaly checkpoint"):
        load_checkpoint(path)


def test_checkpoint_survives_a_kill_during_writing(tmp_path):
    """A writer SIGKILLed while a new checkpoint is being written leaves the previous one intact."""
    path = tmp_path / "checkpoint.pt"
    tmp = tmp_path / "checkpoint.pt.tmp"
    save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "generation": 0}, path)
    writer = textwrap.dedent(
        f"""
        import torch
        from mri_anomaly.training.checkpoint import save_checkpoint
        big = torch.randn(8_000_000)  # ~32 MB: each save takes a while
        g = 1
        while True:
            save_checkpoint({{"state_dict": {{"w": torch.full((4,), float(g)), "big": big}}, "generation": g}}, {str(path)!r})
            g += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer])
    try:
        deadline = time.time() + 60
        # wait until a new checkpoint is half-written, then kill the writer mid-write
        while time.time() < deadline:
            if tmp.exists() and tmp.stat().st_size > 1_000_000:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the writer never started writing a checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    checkpoint = load_checkpoint(path)  # the last complete checkpoint, not the half-written one
    g = checkpoint["generation"]
    assert torch.equal(checkpoint["state_dict"]["w"], torch.full((4,), float(g)))
    assert tmp.exists()  # the interrupted write's leftover; the next save simply overwrites it
    save_checkpoint({"state_dict": {"w": torch.ones(4)}, "generation": 100}, path)
    assert load_checkpoint(path)["generation"] == 100
