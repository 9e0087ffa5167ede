"""Binary detection metrics for anomaly scores (higher = more anomalous), computed with scikit-learn.

Every function takes ``y_true`` (0 = healthy, 1 = anomalous) and ``y_score`` of the same length. Non-finite
scores are kept, not dropped: NaN and +inf rank as the most anomalous, -inf as the least (see
:func:`finite_ranked`), as the interface contract asks of every score.

The operating-point metrics read one ROC curve (``sklearn.metrics.roc_curve`` with every threshold kept), with
the convention that a sample is called anomalous when its score is ``>=`` the threshold:

* ``sensitivity_at_specificity(s)``: the largest TPR among thresholds with FPR <= 1 - s.
* ``fpr_at_tpr(t)``: the smallest FPR among thresholds with TPR >= t.
* ``best_dice``: the largest Dice = F1 = 2PR/(P+R) over the thresholds of the precision-recall curve, with
  its threshold (an oracle upper bound, as in MedIAnomaly/UPD; the threshold is chosen on the data it is
  scored on).

:func:`binary_metrics` (what the bootstrap computes thousands of times, from each replicate's counts:
:func:`binary_metrics_from_counts`) reads everything off **one** ROC curve,
computed by :func:`roc_counts` in NumPy with ``roc_curve``'s own steps (stable descending sort, one point per
distinct score, cumulative counts in float64): AUROC as the trapezoid area of that curve (``auc`` of it bit
for bit; ``roc_auc_score``, which drops collinear points first, to 1e-12) and AP as scikit-learn's step sum over
the same thresholds (``average_precision_score`` to 1e-12). scikit-learn's own call spends most of its time
validating its input (on the demo, four fifths of the evaluation's bootstrap time); the tests hold the curve to
``roc_curve`` point for point and every value to the scikit-learn functions, ties and non-finite scores
included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

__all__ = [
    "DEFAULT_SPECIFICITIES",
    "auroc",
    "average_precision",
    "best_dice",
    "binary_metrics",
    "binary_metrics_from_counts",
    "check_binary",
    "finite_ranked",
    "fpr_at_tpr",
    "roc_counts",
    "sensitivity_at_specificity",
    "spec_key",
    "voxel_metrics_fn",
]

DEFAULT_SPECIFICITIES: tuple[float, ...] = (0.90, 0.95, 0.99)
_TOL = 1e-12


def spec_key(specificity: float) -> str:
    """``0.95 -> "sens_at_95spec"`` (the key used in ``metrics.json``)."""
    return f"sens_at_{round(specificity * 100):d}spec"


def finite_ranked(y_score: np.ndarray) -> np.ndarray:
    """A float64 copy of ``y_score`` with NaN and +inf replaced by a value above every finite score and -inf
    by one below, so that the ranking (all that the metrics use) is kept and scikit-learn accepts it."""
    s = np.asarray(y_score, dtype=np.float64).copy()
    finite = np.isfinite(s)
    if finite.all():
        return s
    if finite.any():
        lo, hi = float(s[finite].min()), float(s[finite].max())
    else:
        lo = hi = 0.0
    span = max(hi - lo, 1.0)
    s[np.isnan(s) | (s == np.inf)] = hi + span
    s[s == -np.inf] = lo - span
    return s


def check_binary(
    y_true: Sequence | np.ndarray, y_score: Sequence | np.ndarray, name: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: 1-D arrays of equal length, labels in {0, 1}, both classes present.

    Returns:
        ``(y_true as int64, y_score as finite-ranked float64)``.

    Raises:
        ValueError: naming ``name`` and the problem.
    """
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{name}: {y.size} labels but {s.size} scores")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"{name}: labels must be 0 (healthy) or 1 (anomalous), got {sorted(set(np.unique(y).tolist()))}"
        )
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"{name}: need both healthy (0) and anomalous (1) samples, got {y.size - n_pos} healthy and {n_pos} anomalous"
        )
    return y, finite_ranked(s)


def auroc(y_true: Sequence | np.ndarray, y_score: Sequence | np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``)."""
    y, s = check_binary(y_true, y_score)
    return float(roc_auc_score(y, s))


def average_precision(y_true: Sequence | np.ndarray, y_score: Sequence | np.ndarray) -> float:
    """Average precision, the step-wise area under the precision-recall curve (``average_precision_score``)."""
    y, s = check_binary(y_true, y_score)
    return float(average_precision_score(y, s))


def _sens_at_spec(fpr: np.ndarray, tpr: np.ndarray, specificity: float) -> float:
    ok = fpr <= (1.0 - specificity) + _TOL
    return float(tpr[ok].max())  # the first ROC point (threshold +inf) has fpr = 0, so ``ok`` is never empty


def _fpr_at_tpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    ok = tpr >= target - _TOL
    return float(fpr[ok].min())  # the last ROC point has tpr = 1


def sensitivity_at_specificity(
    y_true: Sequence | np.ndarray, y_score: Sequence | np.ndarray, specificity: float = 0.95
) -> float:
    """The highest sensitivity (TPR) reachable while keeping specificity >= ``specificity``."""
    if not 0.0 < specificity <= 1.0:
        raise ValueError(f"specificity must be in (0, 1], got {specificity}")
    y, s = check_binary(y_true, y_score)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return _sens_at_spec(fpr, tpr, specificity)


def fpr_at_tpr(y_true: Sequence | np.ndarray, y_score: Sequence | np.ndarray, tpr: float = 0.95) -> float:
    """The lowest false-positive rate at which the true-positive rate reaches ``tpr`` (FPR@95%TPR by default)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    y, s = check_binary(y_true, y_score)
    fpr, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    return _fpr_at_tpr(fpr, tpr_curve, tpr)


def best_dice(y_true: Sequence | np.ndarray, y_score: Sequence | np.ndarray) -> tuple[float, float]:
    """The best Dice over all thresholds (predict anomalous where ``score >= threshold``) and that threshold.

    Dice of a binary prediction equals its F1 score, so this is the maximum of 2PR/(P+R) along
    ``sklearn.metrics.precision_recall_curve``. The threshold is in the (finite-ranked) score's units.
    """
    y, s = check_binary(y_true, y_score)
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    dice = np.where(denom > 0, 2.0 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    i = int(np.argmax(dice))
    return float(dice[i]), float(thresholds[i])


def roc_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(y, s, drop_intermediate=False)`` as counts, without its input validation.

    Args:
        y: (N,) int labels in {0, 1}, both present. s: (N,) finite float64 scores (see :func:`check_binary`).

    Returns:
        ``(fps, tps, thresholds)`` (float64), one entry per distinct score in descending order after the point
        of threshold +inf: the numbers of healthy/anomalous samples with score >= each threshold.
    """
    order = np.argsort(-s, kind="stable")  # descending; the order inside ties does not reach the counts
    s_sorted = s[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]  # the last index of each distinct score
    tps = np.cumsum(y[order], dtype=np.float64)[last]
    fps = 1.0 + last.astype(np.float64) - tps
    return np.r_[0.0, fps], np.r_[0.0, tps], np.r_[np.inf, s_sorted[last]]


def _trapezoid_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    # sklearn.metrics.auc of a ROC curve: fpr never decreases, so its area is the plain trapezoid sum
    return float(np.trapezoid(tpr, fpr))


def _ap_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    # scikit-learn's AP: sum over thresholds of (R_k - R_{k-1}) * P_k
    precision = tps[1:] / (tps[1:] + fps[1:])
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall) * precision))


def binary_metrics(
    y_true: Sequence | np.ndarray,
    y_score: Sequence | np.ndarray,
    specificities: Sequence[float] = DEFAULT_SPECIFICITIES,
    tpr: float = 0.95,
    name: str = "scores",
) -> dict[str, float]:
    """AUROC, AP, FPR at ``tpr`` TPR and sensitivity at each specificity, from one ROC curve.

    Returns:
        ``{"auroc", "ap", "fpr_at_95tpr", "sens_at_90spec", "sens_at_95spec", "sens_at_99spec"}`` (keys follow
        ``tpr`` and ``specificities``).
    """
    y, s = check_binary(y_true, y_score, name=name)
    fps, tps, _ = roc_counts(y, s)
    return binary_metrics_from_counts(fps, tps, specificities, tpr)


def binary_metrics_from_counts(
    fps: np.ndarray,
    tps: np.ndarray,
    specificities: Sequence[float] = DEFAULT_SPECIFICITIES,
    tpr: float = 0.95,
) -> dict[str, float]:
    """:func:`binary_metrics` of the ROC curve ``(fps, tps)`` of :func:`roc_counts` (the bootstrap builds the
    counts of its replicates without sorting them again)."""
    fpr, tpr_curve = fps / fps[-1], tps / tps[-1]
    out = {
        "auroc": _trapezoid_auc(fpr, tpr_curve),
        "ap": _ap_from_counts(fps, tps),
        f"fpr_at_{round(tpr * 100):d}tpr": _fpr_at_tpr(fpr, tpr_curve, tpr),
    }
    for spec in specificities:
        out[spec_key(spec)] = _sens_at_spec(fpr, tpr_curve, spec)
    return out


def voxel_metrics_fn(y_true: Sequence | np.ndarray, y_score: Sequence | np.ndarray) -> dict[str, float]:
    """AUROC, AP, best Dice and its threshold from one ROC curve (for pooled voxels, millions of samples).

    Dice at threshold t is 2TP / (2TP + FP + FN) = 2 tps / (tps + fps + n_anomalous), the F1 of
    :func:`best_dice`.
    """
    y, s = check_binary(y_true, y_score, name="voxels")
    fps, tps, thresholds = roc_counts(y, s)
    n_pos = tps[-1]
    dice = 2.0 * tps[1:] / (tps[1:] + fps[1:] + n_pos)
    i = int(np.argmax(dice))
    return {
        "auroc": _trapezoid_auc(fps / fps[-1], tps / n_pos),
        "ap": _ap_from_counts(fps, tps),
        "best_dice": float(dice[i]),
        "best_dice_threshold": float(thresholds[i + 1]),
    }
