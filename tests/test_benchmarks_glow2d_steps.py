"""``benchmarks/glow2d_steps.py``: its training settings and its comparison with the baselines, on hand-made score
tables (no training)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

Y = [0, 0, 0, 0, 1, 1, 1]
IDS = [f"s{i}" for i in range(len(Y))]


@pytest.fixture(scope="module")
def steps(load_benchmark):
    return load_benchmark("glow2d_steps")


def test_settings_parse_and_name(steps):
    s = steps.Setting
    assert s.parse("200", 32) == s(200, 200, 32, steps.IN_LR)
    assert s.parse("200+100", 32) == s(200, 100, 32, steps.IN_LR)
    assert s.parse("200x16", 32) == s(200, 200, 16, steps.IN_LR)
    assert s.parse("100@1e-3", 32) == s(100, 100, 32, 1e-3)
    assert s.parse("200+100x16@1e-3", 32) == s(200, 100, 16, 1e-3)
    for text in ("200", "200+100", "200x16", "200+100x16"):
        assert s.parse(text, 32).name(32) == text
    assert s.parse("100@1e-3", 32).name(32) == "100@0.001"
    assert s.parse("200", 32).plain(32) and not s.parse("200+100", 32).plain(32)
    assert not s.parse("100@1e-3", 32).plain(32) and not s.parse("100x16", 32).plain(32)
    with pytest.raises(SystemExit, match="not N"):
        s.parse("200-100", 32)


def _write_scores(folder: Path, **columns) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"subject_id": IDS, "section": "test", **columns}).to_csv(folder / "scores.csv", index=False)
    return folder


def test_against_baselines_by_hand(steps, tmp_path):
    labels = dict(zip(IDS, Y))
    demo = tmp_path / "demo"
    # intensity: q999 wins 10 of 12 healthy/anomalous pairs (5/6), top200mm3 6 of 12 (1/2): q999 is its best
    _write_scores(demo / "scores" / "intensity", intensity_q999=[0, 1, 2, 5, 3, 4, 6],
                  intensity_top200mm3=[0, 1, 2, 3, 0.5, 1.5, 2.5])  # fmt: skip
    _write_scores(demo / "scores" / "normative", abs_z_q999=[6, 5, 4, 3, 2, 1, 0], abs_z_top200mm3=Y)
    baselines = steps.baseline_columns(demo, labels)
    assert baselines["intensity"][0] == "intensity_q999"
    assert baselines["normative"][0] == "abs_z_top200mm3"  # AUROC 1 against 0
    # the setting's runs: seed 0 ranks perfectly (1), seed 1 as intensity's best (5/6)
    dirs = {"200": {0: _write_scores(tmp_path / "s0", nll_top200mm3=[0, 1, 2, 3, 4, 5, 6]),
                    1: _write_scores(tmp_path / "s1", nll_top200mm3=[0, 1, 2, 5, 3, 4, 6])}}  # fmt: skip
    result = steps.against_baselines(dirs, labels, baselines, n_resamples=200, column="nll_top200mm3")["200"]
    vs = result["intensity"]
    assert [p["difference"] for p in vs["per_seed"]] == pytest.approx([1 / 6, 0.0])
    assert vs["mean"]["auroc_b"] == pytest.approx(5 / 6)
    assert vs["verdict"] == "does not hold" and "seed 1" in vs["reasons"][0]
    assert [p["difference"] for p in result["normative"]["per_seed"]] == pytest.approx([0.0, -1 / 6])
    table = steps.baselines_table({"200": result}, "nll_top200mm3")
    assert "`intensity` (`intensity_q999`, 0.833)" in table and "+0.167 / +0.000" in table
    assert "`nll_top200mm3` − baseline per seed" in table


def test_real_table_means_and_ranges_over_seeds(steps):
    real = {"100": {0: {"ms": {"nll_slice_q99": 0.6, "llr_slice_q99": None}, "brats": {"nll_slice_q99": 0.9, "llr_slice_q99": 0.8}},
                    1: {"ms": {"nll_slice_q99": 0.7, "llr_slice_q99": None}, "brats": {"nll_slice_q99": 0.7, "llr_slice_q99": 0.6}}}}  # fmt: skip
    table = steps.real_table(real, "nll_slice_q99")
    assert "| setting | ms | brats |" in table
    assert "| 100 | 0.65 (0.60–0.70) | 0.80 (0.70–0.90) |" in table
    assert "| 100 | n/a | 0.70 (0.60–0.80) |" in steps.real_table(real, "llr_slice_q99")


def test_measured_slices_are_made_once_per_section(steps, monkeypatch):
    made = []
    monkeypatch.setattr(steps, "slices_of", lambda items, config: made.append(len(items)) or len(items))
    datalist = {"training": list(range(100)), "validation": list(range(30))}
    cache = {}
    assert steps.measured_slices(datalist, {}, cache) == {"training": 80, "validation": 30}
    assert list(steps.measured_slices(datalist, {}, cache)) == ["training", "validation"] and made == [80, 30]


def _reading_row(steps, general: int, batch: int, seed: int, held_out: float, auroc: float) -> dict:
    return {"general_steps": general, "in_steps": general, "batch_size": batch, "in_lr": steps.IN_LR, "seed": seed,
            "bpd": {"validation": held_out}, "auroc": {"llr_top200mm3": auroc, "nll_top200mm3": auroc}}  # fmt: skip


def test_reading_states_a_trend_only_over_several_step_counts(steps):
    # one step count at the demo's batch beside an equal-compute setting: no "still falling" from one point
    one = [_reading_row(steps, 100, 32, s, 4.7 + s / 10, 0.75) for s in (0, 1)]
    one += [_reading_row(steps, 200, 16, s, 4.3, 0.76) for s in (0, 1)]
    text = steps.reading(one, 32)
    assert text.startswith("Held-out bits/dim (mean over seeds) 4.75 at 100 steps per phase; 200x16 4.30;")
    assert "falling" not in text
    assert "100 → 200x16) of `llr_top200mm3` 0.750 ± 0.000 → 0.760 ± 0.000" in text
    two = one[:2] + [_reading_row(steps, 200, 32, s, 4.1, 0.78) for s in (0, 1)]
    assert "4.75 at 100 steps per phase, 4.10 at 200: still falling" in steps.reading(two, 32)
