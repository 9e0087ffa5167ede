"""``benchmarks/lesion_conspicuity.py``: its conspicuity measures and per-variant AUROCs on hand-made arrays and
score tables (no scoring)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def lc(load_benchmark):
    return load_benchmark("lesion_conspicuity")


def test_conspicuity_by_hand(lc):
    healthy = np.arange(1, 101, dtype=np.float64)  # 1..100: median 50.5, IQR 75.25 - 25.75 = 49.5, q99 99.01
    image = np.r_[healthy, [100.0, 99.5, 30.0], [500.0]]
    lesion = np.r_[np.zeros(100, bool), [True, True, True], [True]]
    brain = np.r_[np.ones(103, bool), [False]]  # the last lesion voxel lies outside the brain: not counted
    c = lc.conspicuity(image, lesion, brain)
    assert c["lesion_voxels"] == 3 and c["chance"] == pytest.approx(3 / 103)
    assert c["above_q99"] == pytest.approx(2 / 3)  # 100 and 99.5 lie above 99.01, 30 does not
    assert c["contrast_iqr"] == pytest.approx((99.5 - 50.5) / 49.5)
    # 100 ties the top healthy voxel and beats 99; 99.5 beats 99; 30 beats 29 and ties one
    assert c["auroc"] == pytest.approx((99.5 + 99 + 29.5) / 300)
    y = np.r_[np.ones(3), np.zeros(100)]
    from sklearn.metrics import average_precision_score

    assert c["ap"] == pytest.approx(average_precision_score(y, np.r_[[100.0, 99.5, 30.0], healthy]))
    empty = lc.conspicuity(image, np.zeros(104, bool), brain)
    assert empty["lesion_voxels"] == 0 and np.isnan(empty["ap"])


def test_group_medians_order_and_values(lc):
    rows = [
        {"group": "focal", "size_stratum": "small", "ap": 0.2},
        {"group": "ms", "size_stratum": "large", "ap": 0.9},
        {"group": "ms", "size_stratum": "small", "ap": 0.1},
        {"group": "ms", "size_stratum": "small", "ap": 0.5},
        {"group": "ms", "size_stratum": "small", "ap": 0.4},
    ]
    out = lc.group_medians(rows, ["ap"])
    assert [(g["group"], g["size_stratum"], g["n"]) for g in out] == [
        ("ms", "small", 3),
        ("ms", "large", 1),
        ("focal", "small", 1),
    ]
    assert out[0]["ap"] == pytest.approx(0.4)


def test_variant_aurocs_and_chosen_columns(lc):
    volume = pd.DataFrame(
        {
            "subject_id": list("abcdef"),
            "label": [0, 0, 0, 1, 1, 1],
            "lesion_variant": [None, None, None, "ms", "ms", "focal_opposite"],
            "good": [0.1, 0.2, 0.3, 0.9, 0.25, 0.05],
            "other": [0.0] * 6,
        }
    )
    table = {"volume": volume, "score_columns": ["good", "other"]}
    v = lc.variant_aurocs([table, table], "good")
    assert v["ms"] == pytest.approx((3 + 2) / 6)  # 0.9 above all three healthy scans, 0.25 above two
    assert v["focal_opposite"] == pytest.approx(0.0)
    assert "tumour" not in v
    cut = lc.chosen_only({0: {"run": table, "dropped": table}}, {"run": "good"})
    assert list(cut[0]) == ["run"] and cut[0]["run"]["score_columns"] == ["good"]


def test_map_summary_medians_per_variant(lc):
    rows = [
        {"map": "image", "group": "ms", "ap": 0.1, "above_q99": 0.2},
        {"map": "image", "group": "ms", "ap": 0.3, "above_q99": 0.4},
        {"map": "image", "group": "ms", "ap": 0.2, "above_q99": np.nan},
        {"map": "run `nll`", "group": "tumour", "ap": 0.5, "above_q99": 0.6},
    ]
    out = lc.map_summary(rows)
    assert [m["map"] for m in out] == ["image", "run `nll`"]
    assert out[0]["ms"] == {"ap": pytest.approx(0.2), "above_q99": pytest.approx(0.3)}  # NaN left out
    assert "tumour" not in out[0] and out[1]["tumour"]["ap"] == pytest.approx(0.5)


def test_lesion_response_by_hand(lc):
    free = np.arange(1, 101, dtype=np.float64)  # healthy voxels 1..96; median 48.5, 99th percentile 95.05
    lesion = np.zeros(100, bool)
    lesion[96:] = True  # voxels 97..100 carry the lesion
    image = free.copy()
    image[96:] += [10.0, 20.0, 30.0, 40.0]  # in the region: 10, 20, 30, median 20
    region = np.ones(100, bool)
    region[99] = False  # the last lesion voxel lies outside the scored region
    healthy = free[:96]
    q50, q99 = np.quantile(healthy, [0.5, 0.99])
    assert lc.lesion_response(image, free, lesion, region) == pytest.approx(20.0 / (q99 - q50))
    assert np.isnan(lc.lesion_response(image, free, np.zeros(100, bool), region))
