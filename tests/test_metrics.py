"""Detection metrics against hand-computed cases, and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from mri_anomaly.evaluation.bootstrap import bootstrap_ci, metrics_with_ci
from mri_anomaly.evaluation.metrics import (
    auroc,
    average_precision,
    best_dice,
    binary_metrics,
    fpr_at_tpr,
    sensitivity_at_specificity,
)

# y = healthy, healthy, anomalous, anomalous. By hand:
#   AUROC: positive-negative pairs (0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4) -> 3/4
#   AP: ranked 0.8(+) 0.4(-) 0.35(+) 0.1(-): recall steps 0.5 at P=1 and 0.5 at P=2/3 -> 0.5 + 1/3
#   best Dice: threshold 0.35 gives TP=2, FP=1, FN=0 -> 4/5
Y4 = [0, 0, 1, 1]
S4 = [0.1, 0.4, 0.35, 0.8]


def test_small_case_by_hand():
    assert auroc(Y4, S4) == pytest.approx(0.75)
    assert average_precision(Y4, S4) == pytest.approx(0.5 + 1.0 / 3.0)
    assert sensitivity_at_specificity(Y4, S4, 0.95) == pytest.approx(0.5)  # no healthy may be flagged
    assert fpr_at_tpr(Y4, S4, 0.95) == pytest.approx(0.5)  # catching 0.35 also flags 0.4
    dice, threshold = best_dice(Y4, S4)
    assert dice == pytest.approx(0.8)
    assert threshold == pytest.approx(0.35)


def test_ties_count_half():
    # pairs: (0.5 vs 0.5) = 1/2, the other three are ordered correctly -> 3.5 / 4
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)


def test_operating_points_with_twenty_healthy():
    healthy = np.arange(20.0)  # 0 .. 19
    anomalous = np.array([18.5, 25.0, 30.0, 10.0])
    y = np.r_[np.zeros(20), np.ones(4)]
    s = np.r_[healthy, anomalous]
    # 95% specificity allows 1 of 20 healthy flagged: threshold 18.5 flags 19 and catches 18.5, 25, 30
    assert sensitivity_at_specificity(y, s, 0.95) == pytest.approx(0.75)
    # 99% allows none: threshold above 19 catches 25 and 30
    assert sensitivity_at_specificity(y, s, 0.99) == pytest.approx(0.5)
    # 90% allows 2 healthy (18, 19): still 3 anomalies, 10 is below
    assert sensitivity_at_specificity(y, s, 0.90) == pytest.approx(0.75)
    # catching all four needs a threshold <= 10, which flags healthy 10..19 -> FPR 10/20
    assert fpr_at_tpr(y, s, 0.95) == pytest.approx(0.5)
    m = binary_metrics(y, s)
    assert m["sens_at_95spec"] == pytest.approx(0.75)
    assert m["sens_at_99spec"] == pytest.approx(0.5)
    assert m["fpr_at_95tpr"] == pytest.approx(0.5)
    # AUROC by counting: 18.5 beats 19 healthy, 25 and 30 beat 20, 10 beats 0..9 and ties with 10 (1/2)
    assert m["auroc"] == pytest.approx((19 + 20 + 20 + 10.5) / 80)


def test_auroc_matches_monai():
    import torch
    from monai.metrics import compute_roc_auc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    expected = compute_roc_auc(torch.as_tensor(s), torch.as_tensor(y))
    assert auroc(y, s) == pytest.approx(float(expected), abs=1e-9)


def test_nonfinite_scores_rank_as_most_anomalous():
    assert auroc([0, 0, 1], [0.1, 0.2, float("nan")]) == pytest.approx(1.0)
    assert auroc([0, 0, 1], [0.1, 0.2, float("inf")]) == pytest.approx(1.0)
    assert auroc([0, 1, 1], [float("-inf"), 0.2, 0.3]) == pytest.approx(1.0)
    assert auroc([0, 1], [float("nan"), 0.5]) == pytest.approx(0.0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="both healthy"):
        auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be 0"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        auroc([0, 1, 1], [0.1, 0.2])


def _sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.zeros(n), np.ones(n)]
    return y, rng.normal(size=2 * n) + 1.0 * y


def test_bootstrap_ci_contains_estimate_and_shrinks():
    rng = np.random.default_rng(0)
    widths = []
    for n in (30, 1000):
        y, s = _sample(n, rng)
        out = metrics_with_ci(y, s, n_resamples=300, seed=0)
        for key in ("auroc", "ap", "sens_at_95spec", "fpr_at_95tpr"):
            lo, hi = out[f"{key}_ci"]
            assert lo <= out[key] <= hi, key
        widths.append(out["auroc_ci"][1] - out["auroc_ci"][0])
        assert out["n"] == 2 * n and out["n_anomalous"] == n
    # the CI width falls like 1/sqrt(n): ~5.8x narrower for 33x the data
    assert widths[1] < widths[0] / 3
    # true AUROC of N(1,1) vs N(0,1) is Phi(1/sqrt 2) = 0.760; the large-sample CI covers it
    lo, hi = metrics_with_ci(*_sample(1000, np.random.default_rng(5)), n_resamples=300)["auroc_ci"]
    assert lo < 0.7602 < hi


def test_bootstrap_is_deterministic_and_clustered_is_wider():
    rng = np.random.default_rng(3)
    n_subjects, per = 30, 20
    subject = np.repeat(np.arange(n_subjects), per)
    y = (subject % 2).astype(int)  # half the subjects anomalous, all their slices labelled
    offset = rng.normal(size=n_subjects) * 1.5  # strong per-subject correlation
    s = offset[subject] + 0.8 * y + 0.2 * rng.normal(size=subject.size)
    a, n_valid = bootstrap_ci(y, s, n_resamples=200, seed=7)
    b, _ = bootstrap_ci(y, s, n_resamples=200, seed=7)
    assert a == b and n_valid == 200
    clustered, n_valid_c = bootstrap_ci(y, s, n_resamples=200, seed=7, groups=subject)
    assert 0 < n_valid_c <= 200
    width = lambda ci: ci["auroc"][1] - ci["auroc"][0]  # noqa: E731
    # 600 slices from 30 subjects carry about the information of 30 samples, not 600
    assert width(clustered) > 2 * width(a)


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("scores", ["continuous", "ties", "non-finite"])
def test_bootstrap_of_binary_metrics_is_the_sorted_replicates_bit_for_bit(clustered, scores):
    # bootstrap_ci counts each replicate's ROC curve from one ranking of the scores; the reference sorts every
    # replicate through binary_metrics itself (a wrapper is not binary_metrics, so it takes the generic path)
    rng = np.random.default_rng(11)
    subject = np.repeat(np.arange(40), 6)
    y = (rng.random(subject.size) < 0.3).astype(int)
    s = rng.normal(size=subject.size) + y
    if scores == "ties":
        s = np.round(s * 2.0) / 2.0
        s[:12] = -0.0
        s[12:24] = 0.0
    if scores == "non-finite":
        s[[3, 50, 77]] = [np.nan, np.inf, -np.inf]
    groups = subject if clustered else None
    fast, n_fast = bootstrap_ci(y, s, n_resamples=150, seed=4, groups=groups)
    sorted_each, n_sorted = bootstrap_ci(
        y, s, lambda a, b: binary_metrics(a, b), n_resamples=150, seed=4, groups=groups
    )
    assert n_fast == n_sorted > 100
    assert fast == sorted_each


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 7, 300, 5000])
def test_roc_counts_is_sklearn_roc_curve(seed, n):
    """The NumPy ROC curve is scikit-learn's, point for point (ties, a single distinct score, both orders of
    tied labels), and the AUROC read off it is ``sklearn.metrics.auc`` of that curve to the last bit (what
    ``binary_metrics`` read off scikit-learn's curve before; ``roc_auc_score`` drops collinear points first,
    which moves the last bit)."""
    from mri_anomaly.evaluation.metrics import roc_counts
    from sklearn.metrics import auc, roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    for s in (
        np.round(rng.normal(size=n) + y, 1),
        rng.normal(size=n),
        np.zeros(n),
        -np.round(y + 0.5 * rng.random(n)),
    ):
        s = s.astype(np.float64)
        fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
        fps, tps, ours = roc_counts(y, s)
        np.testing.assert_array_equal(ours, thresholds)
        np.testing.assert_array_equal(fps / fps[-1], fpr)
        np.testing.assert_array_equal(tps / tps[-1], tpr)
        assert binary_metrics(y, s)["auroc"] == auc(fpr, tpr)
        assert binary_metrics(y, s)["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_curve_metrics_equal_sklearn_functions(seed):
    """binary_metrics / voxel_metrics_fn read AUROC, AP and Dice off one ROC curve; they must equal the
    scikit-learn functions exactly, with ties (rounded scores) and non-finite scores."""
    from mri_anomaly.evaluation.metrics import voxel_metrics_fn
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    s[:3] = [np.nan, np.inf, -np.inf]
    m = binary_metrics(y, s)
    f = np.nan_to_num(s, nan=1e9, posinf=1e9, neginf=-1e9)  # the same ranking, finite
    assert m["auroc"] == pytest.approx(roc_auc_score(y, f), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(y, f), abs=1e-12)
    assert m["sens_at_95spec"] == pytest.approx(sensitivity_at_specificity(y, f, 0.95))
    assert m["fpr_at_95tpr"] == pytest.approx(fpr_at_tpr(y, f, 0.95))
    v = voxel_metrics_fn(y, f)
    dice, threshold = best_dice(y, f)
    assert v["best_dice"] == pytest.approx(dice, abs=1e-12)
    assert v["best_dice_threshold"] == pytest.approx(threshold)
    assert v["auroc"] == pytest.approx(m["auroc"]) and v["ap"] == pytest.approx(m["ap"])
