"""``benchmarks/rim_width.py``: a run copied at another rim is recalibrated there, and the real-case tables."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def rw(load_benchmark):
    return load_benchmark("rim_width")


def test_run_with_rim_recalibrates_at_the_new_rim(rw, demo_cohort, tmp_path):
    from mri_anomaly.data import TINY_PREPROCESSING
    from mri_anomaly.evaluation.thresholds import load_thresholds
    from mri_anomaly.runs import load_run
    from mri_anomaly.training import Trainer, validate_config

    config = validate_config(
        {
            "method": "intensity",
            "spatial_dims": 3,
            "seed": 0,
            "preprocessing": dict(TINY_PREPROCESSING),
            "train": {"batch_size": 1, "init_batches": 1000, "phases": {"fit": {"steps": 0}}},
            "score": {"allow_few_calibration_scans": True, "map_erosion_mm": 8.0},
        }
    )
    Trainer(config, demo_cohort, tmp_path / "run", progress=False).fit()
    trained = load_thresholds(tmp_path / "run")
    # without a datalist: the copy has no calibration (its levels would be another region's)
    bare = rw.run_with_rim(tmp_path / "run", tmp_path / "bare", 0.0)
    assert load_thresholds(bare) is None
    # with one: the same rim recalibrates to the trained run's thresholds and norms, another rim to others
    same = load_thresholds(rw.run_with_rim(tmp_path / "run", tmp_path / "same", 8.0, demo_cohort))
    assert same["thresholds"] == pytest.approx(trained["thresholds"])
    assert same["slice_norms"] == trained["slice_norms"]
    none = rw.run_with_rim(tmp_path / "run", tmp_path / "none", 0.0, demo_cohort)
    assert load_run(none)[1]["score"]["map_erosion_mm"] == 0.0
    # the maps' statistics now take the brain's edge in, and their levels move with it
    at_zero = load_thresholds(none)
    assert at_zero["thresholds"]["intensity_q999"] != pytest.approx(trained["thresholds"]["intensity_q999"])
    assert at_zero["slice_norms"] != trained["slice_norms"]


def test_real_slice_markdown(rw):
    result = {
        "real_ceilings": {
            "8": [{"subject_id": "ms-patient07", "share_rim only": 0.36, "ceiling_scored_part": 0.821}],
            "4": [{"subject_id": "ms-patient07", "share_rim only": 0.1, "ceiling_scored_part": 0.95}],
        },
        "real_slice": {
            "8": {"intensity": {"ms-patient07": {"intensity_slice_top200mm3": 0.7}}},
            "4": {"intensity": {"ms-patient07": {"intensity_slice_top200mm3": None}}},
        },
    }
    text = "\n".join(rw._real_slice_markdown(result, ["8", "4"]))
    assert "| ms-patient07 | 36 %, 0.821 | 10 %, 0.950 |" in text
    assert "| intensity `intensity_slice_top200mm3` | 0.700 | – |" in text
    assert rw._with_rim({"score": {"map_erosion_mm": 8.0}}, 4)["score"]["map_erosion_mm"] == 4.0
