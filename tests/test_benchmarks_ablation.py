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


def _demo_with_test_labels(tmp_path, labels):
    """A demo folder whose datalist has one test scan ``s<i>`` per label (no images: only labels are read)."""
    demo = tmp_path / "demo"
    (demo / "data").mkdir(parents=True)
    test = [{"subject_id": f"s{i}", "image": f"images/s{i}.nii.gz", "label": y} for i, y in enumerate(labels)]
    (demo / "data" / "datalist.json").write_text(json.dumps({"test": test}))
    return demo


def _auroc(y, s):
    """Mann-Whitney by hand: P(anomalous > healthy) + 0.5 P(tie)."""
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_variant_differences_pairs_scans_by_subject(ab, tmp_path):
    labels = [0, 0, 0, 1, 1, 1]
    shipped = [0.1, 0.5, 0.3, 0.4, 0.9, 0.2]  # AUROC 6/9
    variant = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8]  # AUROC 8/9
    demo = _demo_with_test_labels(tmp_path, labels)
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


def test_variant_differences_over_seeds_pairs_each_seed_and_pools(ab, tmp_path):
    labels = [0, 0, 0, 1, 1, 1]
    demo = _demo_with_test_labels(tmp_path, labels)
    rows = lambda values: [  # noqa: E731
        {"subject_id": f"s{i}", "section": "test", "x_q999": v} for i, v in enumerate(values)
    ]
    shipped = {0: [0.1, 0.5, 0.3, 0.4, 0.9, 0.2], 1: [0.1, 0.2, 0.3, 0.4, 0.9, 0.8]}  # AUROC 6/9, 9/9
    variant = {0: [0.1, 0.2, 0.3, 0.4, 0.9, 0.8], 1: [0.1, 0.5, 0.3, 0.4, 0.9, 0.2]}  # 9/9, 6/9
    for seed in (0, 1):
        folder = demo if seed == 0 else demo / "seeds" / str(seed)
        _scores(folder / "scores" / "run", rows(shipped[seed]))
        _scores(folder / "scores" / "run-aug", rows(variant[seed]))
    _scores(demo / "scores" / "once-aug", rows(variant[0]))  # seed 0 only: no comparison over seeds

    out = ab.variant_differences_over_seeds(
        demo, [1, 2], {"run-aug": "run", "once-aug": "run"}, n_resamples=200
    )

    assert list(out) == ["run-aug/x_q999"]
    c = out["run-aug/x_q999"]
    assert [p["seed"] for p in c["per_seed"]] == [0, 1]  # seed 2 has no scores: left out
    assert [p["difference"] for p in c["per_seed"]] == pytest.approx([3 / 9, -3 / 9])
    assert c["mean"]["difference"] == pytest.approx(0.0) and c["pooled"]["difference"] == pytest.approx(0.0)
    assert c["verdict"] == "does not hold"
    (line,) = [x for x in "\n".join(ab.seeds_lines(out)).splitlines() if x.startswith("| run-aug")]
    # mean 5/6 at both, SD (1/3)/sqrt(2) = 0.236
    assert "| run-aug | `run` | `x_q999` | 0.833 ± 0.236 | 0.833 ± 0.236 | +0.333 / −0.333 |" in line
    assert line.endswith("| no |")


def test_real_seeds_lines_best_column_per_seed_then_mean_and_range(ab):
    over = {
        "run": {
            "seeds": [0, 1],
            "slice": {"a": {"c1": [0.6, 0.9], "c2": [0.8, None]}},  # best per seed: 0.8, 0.9
            "voxel": {"a": {"m": [0.1, 0.3]}},
        }
    }
    lines, data = ab.real_seeds_lines(over, ["a", "b"])
    assert "| run (seeds 0, 1) | 0.85 (0.80–0.90) / 0.20 (0.10–0.30) | – / – |" in "\n".join(lines)
    assert data["run"]["a"]["slice_auroc"]["per_seed"] == [0.8, 0.9]
    assert data["run"]["b"] == {"slice_auroc": None, "voxel_ap": None}


def test_reuse_shipped_runs_for_a_seed_folder(ab, tmp_path):
    from mri_anomaly.pipeline import DemoRun

    demo, out = tmp_path / "demo" / "seeds" / "1", tmp_path / "out" / "seeds" / "1"
    for folder in ("runs", "scores"):
        (demo / folder / "latent-norm-ae-2d").mkdir(parents=True)
    done = {"done": True, "seconds": 2.0}
    (demo / ab.SEED_STATE).write_text(
        json.dumps(
            {"settings": {"seed": 1}, "train:latent-norm-ae-2d": done, "score:latent-norm-ae-2d": done}
        )
    )
    runs = (DemoRun("latent-norm-ae-2d", "latent-norm-ae-2d.yaml"),)
    assert ab.reuse_shipped_runs(demo, out, runs, ab.SEED_STATE) == ["latent-norm-ae-2d"]
    state = json.loads((out / ab.SEED_STATE).read_text())
    assert state == {
        "train:latent-norm-ae-2d": done,
        "score:latent-norm-ae-2d": done,
    }  # no settings: run_seed's
    assert ab.reuse_shipped_runs(demo, out, runs, ab.SEED_STATE) == []  # already there: nothing copied twice
    assert ab.reuse_shipped_runs(tmp_path / "nowhere", out, runs, ab.SEED_STATE) == []


def test_against_baseline_over_seeds_chooses_columns_at_seed_0(ab, tmp_path):
    labels = [0, 0, 0, 1, 1, 1]
    demo = _demo_with_test_labels(tmp_path, labels)

    def rows(**columns):
        return [
            {"subject_id": f"s{i}", "section": "test", **{c: v[i] for c, v in columns.items()}}
            for i in range(len(labels))
        ]

    perfect, six_ninths = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8], [0.1, 0.5, 0.3, 0.4, 0.9, 0.2]
    # intensity: q999 (6/9) beats top200mm3 (ranks them backwards: 0): q999 is its best column
    _scores(demo / "scores" / "intensity", rows(i_q999=six_ninths, i_top200mm3=[-v for v in perfect]))
    # the run: at seed 0 x_q999 is perfect (its best), x_top200mm3 6/9; at seed 1 x_q999 is 6/9 and is still read
    _scores(demo / "scores" / "run", rows(x_q999=perfect, x_top200mm3=six_ninths))
    _scores(demo / "seeds" / "1" / "scores" / "run", rows(x_q999=six_ninths, x_top200mm3=perfect))
    _scores(demo / "scores" / "seed0-only", rows(x_q999=perfect))

    out = ab.against_baseline_over_seeds(demo, [1], ["run", "seed0-only", "absent"], n_resamples=200)

    assert list(out) == ["run"]
    c = out["run"]
    assert (c["column"], c["baseline_column"]) == ("x_q999", "i_q999")
    assert [p["difference"] for p in c["per_seed"]] == pytest.approx([3 / 9, 0.0])
    assert c["verdict"] == "does not hold"
    (line,) = [x for x in "\n".join(ab.baseline_lines(out)).splitlines() if x.startswith("| run | `")]
    assert line.startswith("| run | `x_q999` | 1.000 / 0.667 | 0.833 ± 0.236 | +0.333 / +0.000 | +0.167 [")
    assert line.endswith("| no |")
    assert "`i_q999` (0.667)" in "\n".join(ab.baseline_lines(out))


def test_seeds_note_names_the_runs_taken_from_the_demo_per_seed(ab, tmp_path):
    assert ab.seeds_note(tmp_path, [1, 2]) == "Seeds: seed 1: all trained here; seed 2: all trained here."
    (tmp_path / ab.REUSED_FILE).write_text(
        json.dumps({"demo": "d", "runs": [], "seeds": {"2": ["glow2d-ratio", "latent-norm-ae-2d"]}})
    )
    assert ab.seeds_note(tmp_path, [1, 2]) == (
        "Seeds: seed 1: all trained here; seed 2: `glow2d-ratio`, `latent-norm-ae-2d` from the demo's "
        "`seeds/2/`, the rest trained here."
    )
