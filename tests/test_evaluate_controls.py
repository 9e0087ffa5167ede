"""Per-stratum metrics, the brain-fraction control and the comparison with the baselines, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mri_anomaly.evaluation.bootstrap import auroc_difference_with_ci, auroc_with_ci, bootstrap_ci
from mri_anomaly.evaluation.controls import baseline_comparison, brain_fraction_rho
from mri_anomaly.evaluation.metrics import auroc
from mri_anomaly.evaluation.strata import stratified_volume_metrics
from scipy.stats import spearmanr


def test_auroc_with_ci_by_hand():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])  # pairs: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4
    out = auroc_with_ci(y, s, n_resamples=500, seed=1)
    assert out["auroc"] == pytest.approx(0.75) and out["n"] == 4 and out["n_anomalous"] == 2
    low, high = out["auroc_ci"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    # ties count one half; non-finite scores are the most anomalous
    assert auroc_with_ci([0, 1], [1.0, 1.0], n_resamples=0)["auroc"] == 0.5
    assert auroc_with_ci([0, 1, 0], [5.0, float("nan"), 1.0], n_resamples=0)["auroc"] == 1.0
    # equal to scikit-learn on random data, and the replicate AUROCs are those of the resampled data
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = rng.normal(size=60) + y
    assert auroc_with_ci(y, s, n_resamples=0)["auroc"] == pytest.approx(auroc(y, s))
    # paired: the difference of the two AUROCs, and exactly 0 against itself
    b = rng.normal(size=60)
    paired = auroc_with_ci(y, s, n_resamples=200, paired_with=b)
    assert paired["auroc_difference"] == pytest.approx(auroc(y, s) - auroc(y, b))
    assert auroc_with_ci(y, s, n_resamples=50, paired_with=s)["auroc_difference_ci"] == [0.0, 0.0]


def test_bootstrap_replicates_match_refitting():
    """The vectorised replicate AUROC is the AUROC of the resampled scans (checked on one replicate)."""
    from mri_anomaly.evaluation.bootstrap import _pair_matrix, _stratified_weights

    rng = np.random.default_rng(3)
    y = np.array([0] * 7 + [1] * 5)
    s = rng.normal(size=12)
    w_pos, w_neg = _stratified_weights(y, 1, seed=4)
    value = w_pos[0] @ _pair_matrix(y, s) @ w_neg[0] / (5 * 7)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.concatenate([np.repeat(neg, w_neg[0].astype(int)), np.repeat(pos, w_pos[0].astype(int))])
    assert value == pytest.approx(auroc(y[idx], s[idx]))


def test_auroc_difference_with_ci_pairs_and_clusters():
    rng = np.random.default_rng(5)
    y = np.array([0] * 30 + [1] * 12)
    a, b, c = rng.normal(size=42) + y, rng.normal(size=42) + 0.5 * y, rng.normal(size=42)
    # one pair, stratified: the paired difference of auroc_with_ci, CI included
    one = auroc_difference_with_ci(y, [(a, b)], n_resamples=200, seed=3)
    ref = auroc_with_ci(y, a, n_resamples=200, seed=3, paired_with=b)
    assert one["auroc_difference"] == pytest.approx(ref["auroc_difference"])
    assert one["auroc_difference_ci"] == pytest.approx(ref["auroc_difference_ci"])
    assert one["n_pairs"] == 1 and one["n_bootstrap_valid"] == 200
    # several pairs: the mean of the differences; the same pair twice changes nothing
    two = auroc_difference_with_ci(y, [(a, b), (a, c)], n_resamples=0)
    assert two["auroc_difference"] == pytest.approx(
        (auroc(y, a) - auroc(y, b) + auroc(y, a) - auroc(y, c)) / 2
    )
    same = auroc_difference_with_ci(y, [(a, b), (a, b)], n_resamples=200, seed=3)
    assert same["auroc_difference_ci"] == pytest.approx(one["auroc_difference_ci"])
    # clustered: the replicates of bootstrap_ci over whole groups (single-class replicates skipped)
    groups = np.repeat(np.arange(14), 3)
    clustered = auroc_difference_with_ci(y, [(a, b)], n_resamples=200, seed=3, groups=groups)

    def diff(yy, idx):
        i = idx.astype(int)
        return {"d": auroc(yy, a[i]) - auroc(yy, b[i])}

    cis, n_valid = bootstrap_ci(y, np.arange(42.0), diff, n_resamples=200, seed=3, groups=groups)
    assert clustered["auroc_difference_ci"] == pytest.approx(list(cis["d"]))
    assert clustered["n_bootstrap_valid"] == n_valid


def test_strata_rank_each_stratum_against_all_healthy():
    labelled = pd.DataFrame(
        {
            "subject_id": ["h1", "h2", "h3", "a1", "a2", "a3"],
            "label": [0, 0, 0, 1, 1, 1],
            "score": [0.1, 0.5, 0.3, 0.4, 0.9, 0.2],
        }
    )
    subjects = pd.DataFrame(
        {
            "subject_id": ["h1", "h2", "h3", "a1", "a2", "a3"],
            "label": [0, 0, 0, 1, 1, 1],
            "lesion_kind": ["", "", "", "ms", "tumour", "ms"],
            "size_stratum": ["", "", "", "small", "large", "small"],
        }
    )
    out = stratified_volume_metrics(labelled, ["score"], subjects, n_bootstrap=100)["score"]
    assert set(out) == {"kind:ms", "kind:tumour", "size:small", "size:large"}
    # ms = a1 (0.4), a3 (0.2) vs healthy 0.1, 0.5, 0.3: 0.4 beats 2, 0.2 beats 1 -> 3/6
    assert out["kind:ms"]["auroc"] == pytest.approx(0.5) and out["kind:ms"]["n_anomalous"] == 2
    assert out["kind:tumour"]["auroc"] == pytest.approx(1.0)
    assert out["size:small"]["auroc"] == out["kind:ms"]["auroc"]
    assert out["kind:ms"]["n"] == 5 and "auroc_ci" in out["kind:ms"]


def test_variant_strata_only_where_they_split_a_kind():
    labelled = pd.DataFrame(
        {
            "subject_id": ["h1", "h2", "a1", "a2", "a3", "a4"],
            "label": [0, 0, 1, 1, 1, 1],
            "score": [0.1, 0.5, 0.9, 0.3, 0.7, 0.6],
        }
    )
    subjects = pd.DataFrame(
        {
            "subject_id": ["h1", "h2", "a1", "a2", "a3", "a4"],
            "lesion_kind": ["", "", "focal", "focal", "ms", "ms"],
            "lesion_variant": ["", "", "focal", "focal_opposite", "ms", "ms"],
        }
    )
    out = stratified_volume_metrics(labelled, ["score"], subjects, n_bootstrap=100)["score"]
    # variant:ms holds exactly kind:ms -> left out; the focal kind splits in two
    assert set(out) == {"kind:focal", "kind:ms", "variant:focal", "variant:focal_opposite"}
    assert out["variant:focal"]["auroc"] == pytest.approx(1.0)  # 0.9 above 0.1 and 0.5
    assert out["variant:focal_opposite"]["auroc"] == pytest.approx(0.5)  # 0.3 above 0.1 only
    assert out["kind:focal"]["auroc"] == pytest.approx(0.75) and out["variant:focal"]["n_anomalous"] == 1


def test_brain_fraction_rho_uses_counted_healthy_slices():
    rng = np.random.default_rng(0)
    rows = []
    for subject, label in (("h1", 0), ("h2", 0), ("a1", 1)):
        for k in range(10):
            fraction = k / 10
            rows.append(
                {
                    "subject_id": subject,
                    "slice": k,
                    "brain_fraction": fraction,
                    "counted": int(k >= 2),
                    "tracks": fraction + 0.01 * rng.normal(),
                    "noise": rng.normal(),
                    "flat": 1.0,
                }
            )
    slices = pd.DataFrame(rows)
    out = brain_fraction_rho(slices, ["tracks", "noise", "flat"], {"h1", "h2"})
    part = slices[slices["subject_id"].isin(["h1", "h2"]) & (slices["counted"] == 1)]
    assert out["n_slices"] == 16 and out["n_scans"] == 2
    assert out["rho"]["noise"] == pytest.approx(spearmanr(part["noise"], part["brain_fraction"]).statistic)
    assert out["rho"]["tracks"] > 0.9
    assert np.isnan(out["rho"]["flat"])  # a constant column has no rank correlation
    # CIs resample whole scans: they contain the estimate; none for a constant column
    low, high = out["rho_ci"]["noise"]
    assert low <= out["rho"]["noise"] <= high and "flat" not in out["rho_ci"]
    assert (
        "rho_ci" in out and brain_fraction_rho(slices, ["noise"], {"h1", "h2"}, n_resamples=0)["rho_ci"] == {}
    )


def test_baseline_comparison_by_hand():
    ids = ["h1", "h2", "a1", "a2"]
    labels = [0, 0, 1, 1]
    learned = pd.DataFrame(
        {"subject_id": ids, "label": labels, "good": [0.1, 0.2, 0.8, 0.9], "bad": [0.9, 0.8, 0.1, 0.2]}
    )
    base = pd.DataFrame({"subject_id": ids, "label": labels, "abs_z_q99": [0.1, 0.5, 0.4, 0.9]})  # AUROC 0.75
    volume = {"m/good": {"auroc": 1.0}, "m/bad": {"auroc": 0.0}, "normative/abs_z_q99": {"auroc": 0.75}}
    out = baseline_comparison(
        {"m": "glow", "normative": "normative"},
        volume,
        {"m": learned, "normative": base},
        several=True,
        n_resamples=100,
    )
    assert set(out) == {"m"}  # baselines are not compared with themselves
    entry = out["m"]
    assert entry["best_column"] == "good" and entry["beats_all_baselines"]
    vs = entry["vs"]["normative"]
    assert (
        vs["column"] == "abs_z_q99" and vs["difference"] == pytest.approx(0.25) and vs["n_common_scans"] == 4
    )
    assert vs["difference_ci"][0] <= 0.25 <= vs["difference_ci"][1]
    # four scans: the paired CI cannot exclude 0, so the verdict says the lead is not significant
    assert vs["difference_ci"][0] <= 0 and not vs["significant"]
    assert entry["verdict"] == "ahead, CI includes 0"
    # the reversed column loses on the point estimate: "no"
    assert (
        baseline_comparison(
            {"m": "glow", "normative": "normative"},
            {"m/bad": {"auroc": 0.0}, "normative/abs_z_q99": {"auroc": 0.75}},
            {"m": learned, "normative": base},
            several=True,
            n_resamples=100,
        )["m"]["verdict"]
        == "no"
    )
    # no baseline evaluated: nothing to compare
    assert baseline_comparison({"m": "glow"}, {"m/good": {"auroc": 1.0}}, {"m": learned}, several=True) == {}


def test_binned_voxel_curves_equal_the_exact_curve_when_bins_resolve_every_score():
    from mri_anomaly.evaluation.metrics import voxel_metrics_fn
    from mri_anomaly.evaluation.voxel import binned_bootstrap_ci, binned_curve_metrics

    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.1).astype(int)
    s = rng.normal(size=400) + y
    edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, 4097)[1:-1]))
    bins = np.searchsorted(edges, s, side="right")
    pos = np.bincount(bins[y == 1], minlength=edges.size + 1)[None].astype(float)
    neg = np.bincount(bins[y == 0], minlength=edges.size + 1)[None].astype(float)
    binned = {k: float(v[0]) for k, v in binned_curve_metrics(pos, neg).items()}
    exact = voxel_metrics_fn(y, s)
    for key in ("auroc", "ap", "best_dice"):
        assert binned[key] == pytest.approx(exact[key], abs=1e-12), key
    # the scan bootstrap: intervals around the estimate, every replicate valid when every scan has both classes
    scores = [s[i * 100 : (i + 1) * 100] for i in range(4)]
    truths = [np.r_[1, y[i * 100 + 1 : (i + 1) * 100]] for i in range(4)]
    ci = binned_bootstrap_ci(scores, truths, n_resamples=50, seed=0)
    assert ci["n_bootstrap_valid"] == 50
    assert all(0.0 <= ci[f"{k}_ci"][0] <= ci[f"{k}_ci"][1] <= 1.0 for k in ("auroc", "ap", "best_dice"))


def test_baseline_verdict_is_yes_only_when_every_paired_ci_excludes_zero():
    rng = np.random.default_rng(0)
    n = 60
    labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
    ids = [f"s{i}" for i in range(2 * n)]
    learned = pd.DataFrame(
        {"subject_id": ids, "label": labels, "good": labels * 3.0 + rng.normal(size=2 * n)}
    )
    base = pd.DataFrame(
        {"subject_id": ids, "label": labels, "abs_z_q99": labels * 0.3 + rng.normal(size=2 * n)}
    )
    out = baseline_comparison(
        {"m": "glow", "normative": "normative"},
        {"m/good": {"auroc": 0.98}, "normative/abs_z_q99": {"auroc": 0.6}},
        {"m": learned, "normative": base},
        several=True,
        n_resamples=200,
    )["m"]
    assert out["vs"]["normative"]["difference_ci"][0] > 0 and out["vs"]["normative"]["significant"]
    assert out["verdict"] == "yes"
