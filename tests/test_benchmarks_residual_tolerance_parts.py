"""``benchmarks/residual_tolerance.py --parts``: each channel's residual parts scored as maps of a tiny two-contrast
run, which must be calibrated with the parts as maps (the scorer refuses map profiles without slice norms)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mri_anomaly.data import TINY_PREPROCESSING
from mri_anomaly.errors import UserInputError
from mri_anomaly.scoring.runner import score_datalist
from mri_anomaly.training import Trainer
from mri_anomaly.training.config import validate_config
from mri_anomaly.training.methods.latent_norm import LatentNormMethod


@pytest.fixture(scope="module")
def two_contrast_run(demo_cohort_two_contrasts, tmp_path_factory) -> Path:
    config = validate_config(
        {
            "method": "latent-norm-ae",
            "spatial_dims": 2,
            "seed": 0,
            "in_channels": 2,
            "preprocessing": {**TINY_PREPROCESSING, "contrasts": ["flair", "t1"]},
            "slices": {"min_brain_fraction": 0.1},
            "model": {"latent_dim": 8, "channels": [4, 8], "pooled_size": 2},
            "train": {"batch_size": 4, "init_batches": 1, "phases": {"train": {"steps": 2, "lr": 1e-3}}},
            "score": {"top_k": 3, "allow_few_calibration_scans": True},
        }
    )
    run = tmp_path_factory.mktemp("parts") / "run"
    Trainer(config, demo_cohort_two_contrasts, run, progress=False).fit()
    return run


def test_parts_are_scored_by_a_copy_calibrated_with_them(
    load_benchmark, two_contrast_run, demo_cohort_two_contrasts, tmp_path
):
    rt = load_benchmark("residual_tolerance")
    datalist = Path(demo_cohort_two_contrasts)
    names_before = LatentNormMethod.map_names
    with rt.maps_per_part(["flair", "t1"]) as parts:
        assert parts == ["flair_pos", "flair_neg", "t1_pos", "t1_neg", "all_pos"]
        # the run as trained has no slice norms for the parts' profiles: scoring it is refused, naming them
        with pytest.raises(UserInputError, match="flair_pos_slice_"):
            score_datalist(
                two_contrast_run, datalist, tmp_path / "refused", sections=("test",), progress=False
            )
        run = rt.run_with_tolerance(two_contrast_run, tmp_path / "run-parts", 8.0, datalist, "positive")
        out = rt.part_aurocs(run, datalist, tmp_path / "parts")
    assert LatentNormMethod.map_names == names_before  # the method is restored on leaving
    assert {"residual", *parts} <= set(out)
    for value in out.values():
        assert 0.0 <= value["auroc"] <= 1.0 and value["healthy_median"] >= 0.0
