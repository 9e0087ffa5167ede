"""Threshold calibration on healthy scans at a target specificity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mri_anomaly.evaluation.thresholds import (
    apply_threshold,
    calibrate_threshold,
    calibrate_thresholds,
    load_thresholds,
    save_thresholds,
)


def test_order_statistic_by_hand():
    scores = np.arange(1.0, 21.0)  # 1 .. 20
    t = calibrate_threshold(scores, 0.95)  # ceil(0.95 * 20) = 19th smallest
    assert t == 19.0
    assert apply_threshold(scores, t).tolist() == [False] * 19 + [True]
    assert calibrate_threshold(scores, 0.90) == 18.0
    assert calibrate_threshold([5.0, 5.0, 5.0], 0.5) == 5.0  # ties: nobody flagged


def test_hits_target_specificity_on_healthy_data():
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=1000)
    for spec in (0.9, 0.95, 0.99):
        t = calibrate_threshold(calibration, spec)
        achieved = 1.0 - apply_threshold(calibration, t).mean()
        assert spec <= achieved <= spec + 1.0 / 1000 + 1e-12
        fresh = rng.normal(size=20000)  # new healthy scans from the same distribution
        # the coverage of a sample quantile from n=1000 has sd sqrt(p(1-p)/n) <= 0.0095: allow ~3 sd
        assert abs((1.0 - apply_threshold(fresh, t).mean()) - spec) < 0.025


def test_nonfinite_healthy_scores_are_never_below():
    t = calibrate_threshold([0.1, 0.2, float("nan"), 0.3], 0.5)
    assert t == 0.2
    assert apply_threshold([float("nan")], 1e9).tolist() == [True]


def test_calibrate_save_load(tmp_path):
    cal = calibrate_thresholds({"a": np.arange(10.0), "b": [float("inf")] * 10}, specificity=0.95)
    assert cal["thresholds"]["a"] == 9.0
    assert cal["thresholds"]["b"] == float("inf")
    assert cal["calibration_specificity"]["a"] == 1.0
    assert "only 10 healthy scans" in cal["note"]
    path = save_thresholds(tmp_path, cal)
    json.loads(path.read_text())  # strict JSON (inf stored as a string)
    loaded = load_thresholds(tmp_path)
    assert loaded["thresholds"] == {"a": 9.0, "b": float("inf")}
    assert loaded["rule"] == "flag when score > threshold"
    assert load_thresholds(tmp_path / "missing") is None
    (tmp_path / "thresholds.json").write_text("{not json")
    with pytest.raises(ValueError, match="thresholds.json"):
        load_thresholds(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_thresholds(tmp_path / "nope", cal)
    with pytest.raises(ValueError, match="specificity"):
        calibrate_threshold([1.0], 1.0)


def test_min_calibration_scans_and_refusing_too_few():
    from mri_anomaly.evaluation.thresholds import min_calibration_scans, refuse_few_scans

    assert [min_calibration_scans(s) for s in (0.5, 0.9, 0.95, 0.99)] == [2, 10, 20, 100]
    few = calibrate_thresholds({"a": np.arange(19.0)}, 0.95)
    refused = refuse_few_scans(few, allowed=False, how_to_allow="--allow-it")
    assert (
        refused["thresholds"] == {}
        and "needs at least 20" in refused["refused"]
        and "--allow-it" in refused["refused"]
    )
    assert refuse_few_scans(few, allowed=True, how_to_allow="x") is few
    enough = calibrate_thresholds({"a": np.arange(20.0)}, 0.95)
    assert refuse_few_scans(enough, allowed=False, how_to_allow="x") is enough
    assert enough["thresholds"]["a"] == 18.0  # the 19th of 20: one healthy scan (5 %) above it
