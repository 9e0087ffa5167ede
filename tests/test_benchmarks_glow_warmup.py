"""``benchmarks/glow_warmup.py``: the jump statistics of a training log, by hand (no training)."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def gw(load_benchmark):
    return load_benchmark("glow_warmup")


def test_window_stats_by_hand(gw):
    log = pd.DataFrame(
        {
            "phase": ["general"] * 6 + ["in"] * 2,
            "phase_step": [1, 2, 3, 4, 5, 6, 1, 2],
            "loss": [6.0, 5.0, 5.8, 4.5, 4.6, 9.0, 3.0, 2.0],
            "grad_norm": [1.0, 7.0, 2.0, 3.0, 1.0, 50.0, 1.0, 1.0],
            "skipped_steps": [0, 0, 1, 1, 1, 1, 1, 1],
        }
    )
    s = gw.window_stats(log, "general", 5, 0.25)
    # window: steps 1-5; 5.8 rises 0.8 above the lowest before it (5.0), 4.6 only 0.1 above 4.5
    assert s == {
        "steps": 5,
        "max_jump": pytest.approx(0.8),
        "n_rises": 1,
        "final_loss": 4.6,
        "max_grad_norm": 7.0,
        "skipped": 1,
    }
    falling = gw.window_stats(log, "in", 40, 0.25)
    assert falling["max_jump"] == 0.0 and falling["n_rises"] == 0 and falling["steps"] == 2
    with pytest.raises(ValueError, match="no logged steps"):
        gw.window_stats(log, "train", 5, 0.25)
