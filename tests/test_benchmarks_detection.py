"""``benchmarks/detection.py``: the summaries of the findings over training seeds (``--seeds``) and the issue's
targets, on hand-made tables (no training); ``--from-json`` on the committed document's json."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mri_anomaly.errors import MissingInputError
from mri_anomaly.evaluation.metrics import auroc


@pytest.fixture(scope="module")
def detection(load_benchmark):
    return load_benchmark("detection")


Y = [0, 0, 0, 0, 1, 1, 1]
# seed 0: a ranks perfectly (AUROC 1), b wins 10 of 12 pairs (5/6): difference 1/6
# seed 1: a = seed 0's b (5/6), b wins 6 of 12 pairs (1/2): difference 1/3
SEED0 = {"a": [0, 1, 2, 3, 4, 5, 6], "b": [0, 1, 2, 5, 3, 4, 6]}
SEED1 = {"a": [0, 1, 2, 5, 3, 4, 6], "b": [0, 1, 2, 3, 0.5, 1.5, 2.5]}


def _table(scores: dict, **extra) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": [f"s{i}" for i in range(len(Y))], "label": Y, **scores, **extra})


def test_compare_over_seeds_by_hand(detection):
    tables = {0: _table(SEED0), 1: _table(SEED1)}
    out = detection.compare_over_seeds(tables, "a", "b", n_resamples=300)
    s0, s1 = out["per_seed"]
    assert (s0["auroc_a"], s0["auroc_b"], s0["difference"]) == pytest.approx((1.0, 5 / 6, 1 / 6))
    assert (s1["auroc_a"], s1["auroc_b"], s1["difference"]) == pytest.approx((5 / 6, 1 / 2, 1 / 3))
    assert s0["n"] == 7 and s0["n_anomalous"] == 3
    assert out["mean"]["difference"] == pytest.approx(0.25)
    assert out["sd"]["difference"] == pytest.approx((1 / 6) / np.sqrt(2))
    assert out["mean"]["auroc_a"] == pytest.approx(11 / 12)
    # pooled: the seed-averaged difference on the same scans, its CI around it
    pooled = out["pooled"]
    assert pooled["difference"] == pytest.approx(0.25) and pooled["n"] == 7 and pooled["n_seeds"] == 2
    low, high = pooled["difference_ci"]
    assert low <= 0.25 <= high
    assert out["verdict"] == ("holds" if low > 0 else "does not hold")
    # a margin the mean misses; a seed in the wrong direction
    assert any("< 0.3" in r for r in detection.compare_over_seeds(tables, "a", "b", margin=0.3)["reasons"])
    flipped = detection.compare_over_seeds(
        {0: _table(SEED0), 1: _table({"a": SEED1["b"], "b": SEED1["a"]})}, "a", "b"
    )
    assert flipped["verdict"] == "does not hold"
    assert any(r.startswith("seed 1: difference -0.333") for r in flipped["reasons"])
    # pooled over the scans every seed has
    partial = detection.compare_over_seeds(
        {0: _table(SEED0), 1: _table(SEED1).iloc[1:]}, "a", "b", n_resamples=0
    )
    assert partial["pooled"]["n"] == 6 and partial["per_seed"][0]["n"] == 7


def test_compare_over_seeds_clusters_slices_by_scan(detection):
    rng = np.random.default_rng(0)
    rows = []
    for scan in range(8):
        for sl in range(5):
            label = int(scan >= 5 and sl < 2)  # three anomalous scans, two lesion slices each
            rows.append({"subject_id": f"s{scan}", "slice": sl, "slice_label": label})
    slices = pd.DataFrame(rows)
    y = slices["slice_label"].to_numpy()
    tables = {s: slices.assign(a=rng.normal(size=len(y)) + 2 * y, b=rng.normal(size=len(y))) for s in (0, 1)}
    out = detection.compare_over_seeds(
        tables, "a", "b", ("subject_id", "slice"), "slice_label", "subject_id", n_resamples=200
    )
    for s, entry in zip((0, 1), out["per_seed"]):
        expected = auroc(y, tables[s]["a"]) - auroc(y, tables[s]["b"])
        assert entry["difference"] == pytest.approx(expected)
        assert np.isfinite(entry["difference_ci"]).all()
    assert out["pooled"]["n"] == 40 and out["pooled"]["n_anomalous"] == 6


def test_flow_columns_pick_the_top5_aggregate_in_2d(detection):
    assert detection.flow_columns(
        ["llr_mean", "llr_top5_mean", "final_scale_top5_mean", "nll_bpd_top5_mean"]
    ) == {
        "llr": "llr_top5_mean",
        "final_scale": "final_scale_top5_mean",
        "nll_bpd": "nll_bpd_top5_mean",
    }
    assert detection.flow_columns(["llr", "final_scale", "nll_bpd", "llr_q999"]) == {
        "llr": "llr",
        "final_scale": "final_scale",
        "nll_bpd": "nll_bpd",
    }


def _glow_tables(seed_scores: dict) -> dict:
    """Seed tables of a 2D Glow run: volume columns ``*_top5_mean``, slice columns ``llr``, ``nll_bpd``,
    ``final_scale`` (one slice per scan, its label the scan's)."""
    out = {}
    for seed, (llr, fs, nll) in seed_scores.items():
        volume = _table({"llr_top5_mean": llr, "final_scale_top5_mean": fs, "nll_bpd_top5_mean": nll})
        slices = volume.rename(
            columns={"label": "slice_label", "llr_top5_mean": "llr", "final_scale_top5_mean": "final_scale",
                     "nll_bpd_top5_mean": "nll_bpd"}
        ).assign(slice=0)  # fmt: skip
        out[seed] = {
            "glow2d-ratio": {
                "volume": volume,
                "slice": slices,
                "slice_columns": ["llr", "nll_bpd", "final_scale"],
                "config": {"seed": seed},
            }
        }
    return out


def test_schirrmeister_findings_by_hand(detection):
    tables = _glow_tables({0: (SEED0["a"], SEED0["a"], SEED0["b"]), 1: (SEED1["a"], SEED1["b"], SEED1["b"])})
    out = detection.schirrmeister_findings(tables, ["glow2d-ratio", "glow3d-ratio"], n_resamples=100)
    assert list(out) == ["glow2d-ratio"]  # no tables of the 3D run
    entry = out["glow2d-ratio"]
    assert entry["seeds"] == [0, 1] and entry["config_seeds"] == [0, 1]
    for level in ("volume", "slice"):
        e = entry[level]
        assert e["auroc"]["llr"] == pytest.approx({0: 1.0, 1: 5 / 6})
        assert e["auroc"]["nll_bpd"] == pytest.approx({0: 5 / 6, 1: 1 / 2})
        assert e["llr-nll_bpd"]["mean"]["difference"] == pytest.approx(0.25)
        # final_scale: +1/6 on seed 0, 0 on seed 1: not > 0 on every seed
        assert [p["difference"] for p in e["final_scale-nll_bpd"]["per_seed"]] == pytest.approx([1 / 6, 0.0])
        assert e["final_scale-nll_bpd"]["verdict"] == "does not hold"
    assert entry["volume"]["columns"]["nll_bpd"] == "nll_bpd_top5_mean"
    assert entry["slice"]["columns"] == {"llr": "llr", "final_scale": "final_scale", "nll_bpd": "nll_bpd"}
    lines = "\n".join(detection.seeds_markdown({"seeds": [0, 1], "runs": ["glow2d-ratio"], "n_bootstrap": 100,
                                                "schirrmeister": out, "ruff": None}))  # fmt: skip
    assert "## Seeds" in lines and "#### glow2d-ratio, slice AUROC" in lines
    assert "| 0 | 1.000 | 1.000 | 0.833 | +0.167" in lines


def test_ruff_finding_ranks_only_held_out_kinds(detection):
    kinds = [None, None, None, None, "ms", "tumour", "focal"]
    config = {"seed": 0, "model": {"gamma_l": 0.05, "lesion": {"kinds": ["focal"]}}}
    # the focal scan (last) is ranked top by SAD and bottom by SVDD: it must not enter the held-out AUROC
    sad = [0, 1, 2, 3, 4, 5, 6]
    svdd = [0, 1, 2, 5, 3, 4, -1]
    tables = {}
    for seed in (0, 1):
        tables[seed] = {
            "deep-sad-2d": {
                "volume": _table({"deep_sad_dist_mean": sad}, lesion_kind=kinds),
                "config": config,
            },
            "deep-svdd-2d": {"volume": _table({"deep_sad_dist_mean": svdd}, lesion_kind=kinds), "config": {}},
        }
    out = detection.ruff_finding(tables, n_resamples=100)
    assert out["held_out_kinds"] == ["ms", "tumour"] and out["labelled_kinds"] == ["focal"]
    assert out["gamma_l"] == {0: 0.05, 1: 0.05}
    held = out["held_out"]["per_seed"][0]
    # held out: ms, tumour (4, 5) against healthy 0, 1, 2, 3: SAD 8/8, SVDD (3, 4 vs 0, 1, 2, 5) 6/8
    assert (held["auroc_a"], held["auroc_b"], held["difference"]) == pytest.approx((1.0, 0.75, 0.25))
    assert held["n"] == 6 and held["n_anomalous"] == 2
    labelled = out["labelled"]["per_seed"][0]
    assert (labelled["auroc_a"], labelled["auroc_b"]) == pytest.approx((1.0, 0.0))
    assert out["held_out"]["margin"] == 0.05 and out["labelled"]["margin"] == 0.0
    text = "\n".join(detection.seeds_markdown({"seeds": [0, 1], "runs": ["deep-sad-2d", "deep-svdd-2d"],
                                               "n_bootstrap": 100, "schirrmeister": {}, "ruff": out}))  # fmt: skip
    assert "Deep SAD (γ_l = 0.05)" in text and "held out: ms, tumour" in text


def test_run_seed_needs_a_finished_demo_cohort(tmp_path):
    from mri_anomaly.pipeline import run_seed

    with pytest.raises(MissingInputError, match="no finished demo cohort"):
        run_seed(tmp_path, 1)


def test_best_column_over_seeds_is_chosen_on_seed_0_and_read_on_every_seed(detection):
    tables = {
        seed: {"run": {"volume": _table(scores), "score_columns": ["a", "b"]}}
        for seed, scores in ((0, SEED0), (1, SEED1))
    }
    out = detection.best_column_over_seeds(tables)["run"]
    # seed 0 picks a (AUROC 1 against 5/6); on seed 1, a is read even though it is 5/6 there
    assert out["column"] == "a" and out["seeds"] == [0, 1]
    assert out["auroc"] == pytest.approx([1.0, 5 / 6])
    assert out["mean"] == pytest.approx(11 / 12) and out["sd"] == pytest.approx((1 / 6) / np.sqrt(2))


def test_best_column_over_seeds_against_the_baselines_and_where_a_seed_loses(detection):
    sizes = {"size_stratum": [None, None, None, None, "small", "small", "large"]}
    tables = {
        seed: {"run": {"volume": _table(scores, **sizes), "score_columns": ["a", "b"]}}
        for seed, scores in ((0, SEED0), (1, SEED1))
    }
    # the baseline is not seeded: its best column (seed 0's b: AUROC 5/6) is paired with the run at every seed
    baselines = {"intensity": {"volume": _table({"base": SEED0["b"]}), "score_columns": ["base"]}}
    out = detection.best_column_over_seeds(tables, baselines, n_resamples=200)["run"]
    vs = out["vs_baselines"]["intensity"]
    assert vs["baseline_column"] == "base"
    assert [p["difference"] for p in vs["per_seed"]] == pytest.approx([1 / 6, 0.0])
    assert vs["verdict"] == "does not hold" and any("seed 1" in r for r in vs["reasons"])
    seed0, seed1 = out["per_seed"]
    # healthy scores of a at seed 0: 0, 1, 2, 3
    assert seed0["healthy_median"] == pytest.approx(1.5) and seed0["healthy_q90"] == pytest.approx(2.7)
    assert seed0["strata"] == pytest.approx({"small": 1.0, "large": 1.0})
    # seed 1: the small lesions (3, 4) each outrank 3 of the 4 healthy scans (0, 1, 2, 5)
    assert seed1["strata"] == pytest.approx({"small": 0.75, "large": 1.0})
    assert "focal_opposite" not in seed1["strata"]
    lines = "\n".join(
        detection.seeds_markdown(
            {"seeds": [0, 1], "runs": ["run"], "best_column": {"run": out}, "n_bootstrap": 200}
        )
    )
    assert "| run | `a` | intensity `base` | +0.083 ± 0.118 |" in lines
    assert "| run | `a` | 1 | 0.833 | +0.000" in lines


def _column(run, method, column, volume, slice_auroc=None, voxel_ap=None):
    return {"run": run, "method": method, "column": column, "volume_auroc": volume, "slice_auroc": slice_auroc,
            "voxel_ap": voxel_ap}  # fmt: skip


def test_targets_by_hand(detection):
    ae = _column("ae", "latent-norm-ae", "residual_top200mm3", 0.90, 0.80, 0.55)
    glow = _column("glow", "glow-ratio", "llr_top200mm3", 0.70, 0.72, 0.20)
    intensity = _column("intensity", "intensity", "intensity_top200mm3", 0.85, 0.79, 0.52)
    vs = lambda d, lo, hi: {"difference": d, "difference_ci": [lo, hi]}  # noqa: E731
    result = {
        "summary": {
            "best": {"ae": ae, "glow": glow, "intensity": intensity},
            "columns": [ae, {**ae, "column": "residual_q999", "volume_auroc": 0.75}, glow, intensity],
            "strata": {
                "ae": {
                    "size:medium": {"auroc": 0.9, "n_anomalous": 30},
                    "size:large": {"auroc": 1.0, "n_anomalous": 10},
                }
            },  # fmt: skip
            "baselines": {
                "ae": {
                    "verdict": "ahead, CI includes 0",
                    "beats_all_baselines": True,
                    "vs": {"intensity": vs(0.05, -0.01, 0.11), "normative": vs(0.1, 0.02, 0.2)},
                },
                "glow": {"verdict": "no", "vs": {"intensity": vs(-0.15, -0.2, -0.1)}},
            },  # fmt: skip
        },
        "seeds": {
            "ruff": {
                "held_out": {
                    "margin": 0.05,
                    "verdict": "does not hold",
                    "pooled": {"difference": 0.02, "difference_ci": [0.0, 0.04]},
                }
            }  # fmt: skip
        },
        "real": {
            "cases": ["ms-patient07"],
            "slice": {
                "ae": {"ms-patient07": {"residual_slice_top200mm3": {"auroc": 0.6}}},
                "glow": {"ms-patient07": {"llr_slice_top200mm3": {"auroc": 0.9}}},
            },  # fmt: skip
            "voxel": {
                "ae": {"ms-patient07": {"residual": {"ap": 0.02}}},
                "intensity": {"ms-patient07": {"intensity": {"ap": 0.03}}},
            },  # fmt: skip
        },
    }
    rows = {r["target"]: r for r in detection.targets(result)}
    best = rows["volume AUROC, best learned"]
    assert (best["measured"], best["met"]) == (0.90, False) and "ae" in best["detail"]
    # lesions >= 1 cm³: the count-weighted mean of the medium and large strata (the AUROC of their union)
    assert rows["volume AUROC on lesions ≥ 1 cm³, best learned column"]["measured"] == pytest.approx(0.925)
    assert (
        rows["ae: a column ≥ 0.85 (volume AUROC)"]["met"]
        and not rows["glow: a column ≥ 0.85 (volume AUROC)"]["met"]
    )
    # ahead of both baselines with a CI across 0 is not shown to beat them
    beats = rows["ae: best column beats both baselines (paired CIs above 0)"]
    assert (
        not beats["met"]
        and beats["verdict"].startswith("**not shown**")
        and "intensity +0.050" in beats["detail"]
    )
    assert rows["glow: best column beats both baselines (paired CIs above 0)"]["verdict"] == "**missed**"
    # the slice target names the run's best volume column among the columns sharing the best slice column
    slice_row = rows["slice AUROC, best learned column"]
    assert slice_row["measured"] == 0.80 and "`residual_top200mm3`" in slice_row["detail"]
    voxel = rows["voxel AP, best learned map (≥ 0.5 and ≥ the `intensity` map)"]
    assert (voxel["goal"], voxel["met"]) == (0.52, True)
    ruff = rows["Ruff et al.: Deep SAD − Deep SVDD on the kinds never labelled"]
    assert ruff["verdict"] == "**does not hold**" and ruff["measured"] == 0.02
    # real: the best learned run at its demo-chosen slice column, and the best map against the intensity map
    real_slice = rows["real ms-patient07: slice AUROC, best learned (column chosen on the demo)"]
    assert (real_slice["measured"], real_slice["detail"], real_slice["met"]) == (0.9, "glow", True)
    real_voxel = rows["real ms-patient07: voxel AP, best learned map next to the `intensity` map"]
    assert (real_voxel["measured"], real_voxel["goal"], real_voxel["met"]) == (0.02, 0.03, False)
    text = "\n".join(detection.targets_markdown(list(rows.values())))
    assert "| volume AUROC, best learned | 0.900 | 0.95 | **missed** by 0.050 |" in text
    assert "| ae: a column ≥ 0.85 (volume AUROC) | 0.900 | 0.85 | met | `residual_top200mm3` |  |" in text


def test_from_json_rewrites_the_document_with_its_targets(detection, tmp_path):
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "detection.json"
    assert detection.main(["--from-json", str(committed), "--docs", str(tmp_path)]) == 0
    text = (tmp_path / "detection.md").read_text()
    assert "## The issue's targets" in text and "## Every method's best column, against the baselines" in text
    # the seeds' tables are keyed by integer seeds: read back from JSON they still show their values
    assert "| 0 | 0.675 | 0.502 | 0.651 |" in text
    assert '"targets"' in (tmp_path / "detection.json").read_text()
