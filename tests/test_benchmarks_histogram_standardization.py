"""``benchmarks/histogram_standardization.py``: its document from a hand-made result (no cohort, no real data)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def hs(load_benchmark):
    return load_benchmark("histogram_standardization")


def _row(case: str, site: str, w1: tuple[float, float], lesion: bool) -> dict:
    row = {
        "case": case,
        "site": site,
        "w1_before": w1[0],
        "w1_after": w1[1],
        "landmark_mae_before": w1[0],
        "landmark_mae_after": w1[1],
        "healthy_above_p95_before": 0.05,
        "healthy_above_p95_after": 0.05,
    }
    if lesion:
        row.update(lesion_diff_before=0.4, lesion_diff_after=0.3, cnr_before=2.0, cnr_after=1.5)
        row.update(lesion_above_p95_before=0.9, lesion_above_p95_after=0.8)
    return row


def test_scaling_text_follows_the_config(hs):
    pre = {"spacing": [4.0, 4.0, 4.0], "intensity": {"lower": 1.0, "upper": 50.0, "upper_value": 0.5,
                                                      "inside_mask": True, "clip": True}}  # fmt: skip
    assert hs.scaling_text(pre) == "4 mm, brain percentiles 1 / 50 -> 0 / 0.5, clipped"
    pre = {"intensity": {"lower": 1.0, "upper": 99.0}}
    assert hs.scaling_text(pre) == "percentiles 1 / 99 -> 0 / 1"


def test_document_lists_real_cases_and_summarises_the_demo_scans(hs):
    rows = [_row("ms-patient07", "", (0.02, 0.01), True)] + [
        _row(f"demo-test-{i:03d}", "demo test (healthy)", (w, w / 10), False)
        for i, w in enumerate([0.1, 0.3, 0.2])
    ]
    result = {
        "rows": rows,
        "landmarks": [0.0, 0.5, 1.0],
        "percentiles": [1, 50, 99],
        "training_scans": 3,
        "fit_seconds": 0.1,
        "preprocessing": {"intensity": {"lower": 1.0, "upper": 50.0, "upper_value": 0.5}},
        "ref_p95": {"before": 0.6, "after": 0.6},
        "machine": "test",
        "uptime": "up",
        "date": "today",
        "total_seconds": 1.0,
    }
    md = hs.to_markdown(result, "cmd")
    assert "| ms-patient07 | 0.020 | 0.010 |" in md
    assert "demo-test-000" not in md  # the demo's scans appear as one summary line
    # W1 before over the demo scans 0.1, 0.3, 0.2: median 0.2, max 0.3; after: 0.02 (0.03)
    assert "| demo held-out healthy (3): median (max) | 0.200 (0.300) | 0.020 (0.030) |" in md
    assert "Means over the real FLAIR cases: W1 0.020 -> 0.010" in md
    assert "lowered W1 on 1, the landmark MAE on 1 and raised the CNR on 0" in md
