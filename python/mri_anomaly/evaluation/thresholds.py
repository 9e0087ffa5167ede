"""Decision thresholds calibrated on healthy scans only, at a chosen specificity.

No anomalies are needed (the situation of most screening cohorts): the threshold of a score column is the
order statistic of the healthy ``validation`` scores below which at least a fraction ``specificity`` of them
fall. A scan is **flagged when its score is strictly greater than the threshold**, so on the calibration
scans the specificity is at least the target (more when scores tie) and at most the target + 1/n.

With fewer than ``1 / (1 - specificity)`` healthy scans (20 for 95 %) the threshold is simply the largest
healthy score; the estimate of the specificity on new data is then poor, and :func:`calibrate_thresholds`
says so in its ``note``.

Thresholds are stored in a run directory as ``RUN/thresholds.json`` (:data:`THRESHOLDS_FILE`), which
``mri-anomaly score`` reads to add a flag per score column, and which the MONAI bundle's ``metadata.json``
carries.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mri_anomaly.files import atomic_write_json

__all__ = [
    "FLAG_RULE",
    "THRESHOLDS_FILE",
    "apply_threshold",
    "calibrate_threshold",
    "calibrate_thresholds",
    "load_thresholds",
    "save_thresholds",
]

THRESHOLDS_FILE = "thresholds.json"
FLAG_RULE = "flag when score > threshold"


def calibrate_threshold(healthy_scores: Sequence[float] | np.ndarray, specificity: float = 0.95) -> float:
    """The threshold t such that ``mean(healthy <= t) >= specificity`` with the smallest such t.

    Args:
        healthy_scores: (n,) scores of healthy scans, higher = more anomalous. NaN/+inf count as the most
            anomalous (they are never below a finite threshold).
        specificity: target fraction of healthy scans not flagged, in (0, 1).

    Returns:
        the ``ceil(specificity * n)``-th smallest healthy score (``inf`` if that one is non-finite).

    Raises:
        ValueError: for no scores or a specificity outside (0, 1).
    """
    if not 0.0 < specificity < 1.0:
        raise ValueError(f"specificity must be in (0, 1), got {specificity}")
    raw = np.asarray(healthy_scores, dtype=np.float64).reshape(-1)
    if raw.size == 0:
        raise ValueError("no healthy scores to calibrate a threshold on")
    ordered = np.sort(np.where(np.isnan(raw), np.inf, raw))
    k = max(1, math.ceil(specificity * raw.size - 1e-9))
    return float(ordered[k - 1])


def min_calibration_scans(specificity: float) -> int:
    """Healthy scans a threshold at ``specificity`` needs: fewer, and it is the largest healthy score, so the
    calibration scans cannot show the specificity (``ceil(1 / (1 - specificity))``: 20 for 0.95)."""
    return math.ceil(1.0 / (1.0 - specificity) - 1e-9)


def refuse_few_scans(calibration: dict[str, Any], allowed: bool, how_to_allow: str) -> dict[str, Any]:
    """``calibration`` without thresholds when it came from fewer healthy scans than its specificity needs and
    the user did not allow that; ``refused`` says why and how to allow it. Otherwise unchanged."""
    needed = min_calibration_scans(calibration["specificity"])
    if allowed or calibration["n_healthy"] >= needed:
        return calibration
    refused = (
        f"only {calibration['n_healthy']} healthy {calibration['section']!r} scans: a "
        f"{calibration['specificity']:.0%} specificity needs at least {needed}, so no thresholds were stored "
        f"(scans will not be flagged); add healthy scans, or allow it with {how_to_allow}"
    )
    return {**calibration, "thresholds": {}, "calibration_specificity": {}, "refused": refused}


def apply_threshold(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Boolean flags ``score > threshold``; NaN scores are flagged (non-finite = most anomalous)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(s), True, s > threshold)


def calibrate_thresholds(
    healthy: Mapping[str, Sequence[float] | np.ndarray],
    specificity: float = 0.95,
    section: str = "validation",
) -> dict[str, Any]:
    """Thresholds for several score columns, in the layout of ``thresholds.json``.

    Args:
        healthy: ``{score column: healthy scores}``.
        specificity: target specificity. section: the datalist section the healthy scores came from.

    Returns:
        ``{"specificity", "section", "rule", "n_healthy", "thresholds": {column: t},
        "calibration_specificity": {column: achieved on the calibration scans}, "note"}``.
    """
    thresholds: dict[str, float] = {}
    achieved: dict[str, float] = {}
    n = 0
    for column, values in healthy.items():
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        t = calibrate_threshold(arr, specificity)
        thresholds[column] = t
        achieved[column] = float(1.0 - apply_threshold(arr, t).mean())
        n = max(n, arr.size)
    note = ""
    if n and n < min_calibration_scans(specificity):
        note = (
            f"only {n} healthy scans: a {specificity:.0%} specificity needs at least {math.ceil(1 / (1 - specificity))}; "
            "the threshold is the largest healthy score"
        )
    return {
        "specificity": specificity,
        "section": section,
        "rule": FLAG_RULE,
        "n_healthy": n,
        "thresholds": thresholds,
        "calibration_specificity": achieved,
        "note": note,
    }


def save_thresholds(run_dir: str | os.PathLike, calibration: Mapping[str, Any]) -> Path:
    """Write ``calibration`` (from :func:`calibrate_thresholds`) to ``run_dir/thresholds.json`` atomically."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist (train a model there first)")
    path = run / THRESHOLDS_FILE
    calibration = dict(calibration)
    if "slice_norms" not in calibration and path.is_file():
        # a recalibration of the thresholds alone (``evaluate``) keeps the slice norms fitted at training
        try:
            previous = json.loads(path.read_text()).get("slice_norms")
        except (json.JSONDecodeError, OSError, AttributeError):
            previous = None
        if previous:
            calibration["slice_norms"] = previous
    return atomic_write_json(path, calibration)


def load_thresholds(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``run_dir/thresholds.json`` as a dict with float thresholds, or ``None`` when the run has none.

    Raises:
        ValueError: naming the file when it is not valid JSON or lacks ``thresholds``.
    """
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        data["thresholds"] = {k: float(v) for k, v in data["thresholds"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid thresholds file ({err})") from err
    return data
