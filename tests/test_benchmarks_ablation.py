"""``benchmarks/ablation.py``: its tables, the paired comparison of each variant with its shipped run and the reuse
of a demo's runs, by hand on folders written here (no training)."""

from __future__ import annotations

import csv
import json

import pytest


@pytest.fixture(scope="module")
def ab(load_benchmark):
    return load_benchmark("ablation")


def _scores(folder, rows):
    folder.mkdir(parents=True)
    with open(folder / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _auroc(y, s):
    """Mann-Whitney by hand: P(anomalous > healthy) + 0.5 P(tie)."""
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_variant_differences_pairs_scans_by_subject(ab, tmp_path):
    labels = [0, 0, 0, 1, 1, 1]
    shipped = [0.1, 0.5, 0.3, 0.4, 0.9, 0.2]  # AUROC 5/9
    variant = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8]  # AUROC 8/9
    demo = tmp_path / "demo"
    (demo / "data").mkdir(parents=True)
    test = [{"subject_id": f"s{i}", "image": f"images/s{i}.nii.gz", "label": y} for i, y in enumerate(labels)]
    (demo / "data" / "datalist.json").write_text(json.dumps({"test": test}))
    rows = lambda values: [  # noqa: E731
        {"subject_id": f"s{i}", "section": "test", "x_q999": v, "x_top200mm3": -v, "x_mean": v}
        for i, v in enumerate(values)
    ]
    _scores(demo / "scores" / "run", rows(shipped))
    # the variant's table in another order: paired by subject, not by row
    _scores(demo / "scores" / "run-hist", rows(variant)[::-1])
    out = ab.variant_differences(demo, {"run-hist": "run", "absent-hist": "run"}, n_resamples=200)

    assert set(out) == {"run-hist/x_q999", "run-hist/x_top200mm3"}  # map columns only; absent runs skipped
    d = out["run-hist/x_q999"]
    assert d["auroc_difference"] == pytest.approx(_auroc(labels, variant) - _auroc(labels, shipped))
    assert d["auroc_difference"] == pytest.approx(3 / 9)
    lo, hi = d["auroc_difference_ci"]
    assert lo <= d["auroc_difference"] <= hi
    neg = out["run-hist/x_top200mm3"]["auroc_difference"]
    assert neg == pytest.approx(_auroc(labels, [-v for v in variant]) - _auroc(labels, [-v for v in shipped]))

    _scores(demo / "scores" / "short-hist", rows(variant)[:4])
    with pytest.raises(ValueError, match="different test scans"):
        ab.variant_differences(demo, {"short-hist": "run"}, n_resamples=0)


def test_tables_rows_differences_and_real_cells(ab):
    metrics = {
        "volume": {
            "run/x_q999": {"auroc": 0.7, "auroc_ci": [0.6, 0.8], "n": 10, "n_anomalous": 4},
            "run/x_top200mm3": {"auroc": 0.75, "auroc_ci": [0.65, 0.85], "n": 10, "n_anomalous": 4},
            "run/x_mean": {"auroc": 0.9, "auroc_ci": [0.8, 1.0], "n": 10, "n_anomalous": 4},
            "run-hist/x_q999": {"auroc": 0.8, "auroc_ci": [0.7, 0.9], "n": 10, "n_anomalous": 4},
        },
        "voxel": {"run/x": {"ap": 0.25}, "run-hist/x": {"ap": 0.5}},
    }
    differences = {"run-hist/x_q999": {"auroc_difference": 0.1, "auroc_difference_ci": [-0.02, 0.25]}}
    real = {
        "cases": ["a", "b"],
        "runs": ["run"],
        "slice": {"run": {"a": {"c1": {"auroc": 0.6}, "c2": {"auroc": 0.8}, "note": "x"}}},
        "voxel": {"run": {"a": {"m": {"ap": 0.3}}, "b": {"m": {"ap": None}}}},
    }
    md, data = ab.tables(metrics, real, differences)

    assert "## Demo test scans (6 healthy, 4 anomalous)" in md
    assert "| run-hist | `x_q999` | 0.800 [0.700, 0.900] | +0.100 [−0.020, +0.250] | 0.500 |" in md
    assert "| run | `x_top200mm3` | 0.750 [0.650, 0.850] | – | 0.250 |" in md
    assert "x_mean" not in md and "run/x_mean" not in data["demo"]
    assert data["demo"]["run-hist/x_q999"]["vs_shipped"]["auroc_difference"] == 0.1
    assert "| run | 0.800 / 0.300 | – / – |" in md
    assert data["real"]["run"]["a"] == {"slice_auroc": 0.8, "voxel_ap": 0.3}


def test_reuse_shipped_runs_copies_only_runs_defined_as_the_demo(ab, tmp_path):
    from mri_anomaly.pipeline import STATE_FILE, DemoRun

    demo, out = tmp_path / "demo", tmp_path / "out"
    for name in ("latent-norm-ae-2d", "normative", "intensity"):
        for folder in ("runs", "scores"):
            (demo / folder / name).mkdir(parents=True)
            (demo / folder / name / "marker").write_text(name)
    done = {"done": True, "seconds": 1.0}
    demo_state = {f"{k}:{n}": done for k in ("train", "score") for n in ("latent-norm-ae-2d", "normative")}
    demo_state["train:intensity"] = done  # scoring not finished: not reused
    (demo / STATE_FILE).write_text(json.dumps(demo_state))
    out.mkdir()
    (out / STATE_FILE).write_text(json.dumps({"settings": {}, "data": done}))
    runs = (
        DemoRun("latent-norm-ae-2d", "latent-norm-ae-2d.yaml"),
        DemoRun("normative", "normative.yaml", ab.HIST),  # same name, other overrides: not the demo's run
        DemoRun("intensity", "intensity.yaml"),
    )

    assert ab.reuse_shipped_runs(demo, out, runs) == ["latent-norm-ae-2d"]
    assert (out / "scores" / "latent-norm-ae-2d" / "marker").read_text() == "latent-norm-ae-2d"
    assert not (out / "runs" / "normative").exists() and not (out / "runs" / "intensity").exists()
    state = json.loads((out / STATE_FILE).read_text())
    assert state["train:latent-norm-ae-2d"] == state["score:latent-norm-ae-2d"] == done
    assert "train:normative" not in state and state["data"] == done
