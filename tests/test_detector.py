"""The estimator API: ``Detector`` fits, scores and flags exactly as ``mri-anomaly train`` / ``score`` do."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from mri_anomaly import Detector
from mri_anomaly.cli import main
from mri_anomaly.data import load_datalist
from mri_anomaly.errors import UserInputError
from mri_anomaly.training import ConfigError

TINY = {
    "preprocessing.spacing": [8, 8, 8],
    "preprocessing.spatial_size": [24, 24, 24],
    "train.batch_size": 4,
    "train.init_batches": 1,
    "train.phases.train.steps": 2,
    "score.top_k": 3,
    "score.allow_few_calibration_scans": True,  # the tiny cohort has one validation scan
    "model.levels": 2,
    "model.steps": 1,
    "model.hidden_channels": 8,
}


@pytest.fixture(scope="module")
def fitted(demo_cohort, tmp_path_factory):
    data = load_datalist(demo_cohort)
    det = Detector("glow2d-slices", device="cpu", **TINY)
    det.fit([it["image"] for it in data["training"]], [it["image"] for it in data["validation"]])
    run = det.save(tmp_path_factory.mktemp("detector") / "run")
    return det, run, data


def test_decision_function_and_predict_equal_the_cli(fitted, demo_cohort, tmp_path):
    det, run, data = fitted
    images = [it["image"] for it in data["test"]] + [it["image"] for it in data["validation"]]
    scores = det.decision_function(images)
    flags = det.predict(images)
    assert scores.shape == flags.shape == (len(images),) and scores.dtype == np.float64
    assert det.score_name_ == "nll_bpd_mean" and set(np.unique(flags)) <= {0, 1}

    assert (
        main(
            [
                "score",
                "--run",
                str(run),
                "--datalist",
                str(demo_cohort),
                "--section",
                "test,validation",
                "--out",
                str(tmp_path / "cli"),
                "--no-progress",
            ]
        )
        == 0
    )
    cli = pd.read_csv(tmp_path / "cli" / "scores.csv").set_index("image").loc[images]
    np.testing.assert_allclose(scores, cli["nll_bpd_mean"].to_numpy(), rtol=0, atol=1e-6)
    assert flags.tolist() == cli["flag:nll_bpd_mean"].tolist()
    # the flag is the calibrated threshold applied to the score; validation scans are never above it
    assert det.threshold_ is not None and flags.tolist() == (scores > det.threshold_).astype(int).tolist()
    assert flags[len(data["test"]) :].tolist() == [0] * len(data["validation"])

    # another column, and a run loaded from its folder, give the CLI's numbers too
    loaded = Detector.load(run, device="cpu", score="nll_bpd_max")
    np.testing.assert_allclose(
        loaded.decision_function(images), cli["nll_bpd_max"].to_numpy(), rtol=0, atol=1e-6
    )
    assert loaded.specificity == det.specificity == 0.95


def test_score_table_and_maps(fitted, tmp_path):
    det, _, data = fitted
    images = [it["image"] for it in data["test"]]
    table = det.score_table(images)
    assert list(table["image"]) == images
    for column in det.score_columns_:
        assert column in table and f"flag:{column}" in table
    profile = table.loc[0, "slices:nll_bpd"]
    counted = table.loc[0, "slices:counted"].astype(bool)
    assert profile.shape == (24,)  # one value per axial slice of the 24^3 model grid
    assert table.loc[0, "nll_bpd_mean"] == pytest.approx(profile[counted].mean(), rel=1e-9)
    assert table.loc[0, "nll_bpd_max"] == pytest.approx(profile[counted].max(), rel=1e-9)

    maps = det.anomaly_maps(images[:2], tmp_path / "maps")
    assert len(maps) == 2 and set(maps[0]) == {"nll", "final_scale"}
    for image, entry in zip(images, maps):
        written, source = nib.load(entry["nll"]), nib.load(image)
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)


def test_errors_name_the_file(fitted, tmp_path):
    det, _, data = fitted
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        det.decision_function([data["test"][0]["image"], str(broken)])
    with pytest.raises(ConfigError, match="model.levels"):
        Detector("glow2d-slices", **{"model.levels": "three"})
    with pytest.raises(ConfigError, match="shipped"):  # the message lists the shipped configs
        Detector("no-such-config")
    with pytest.raises(RuntimeError, match="not fitted"):
        Detector("glow2d-slices").decision_function([data["test"][0]["image"]])
    unfitted = Detector("glow2d-slices", device="cpu", **TINY)
    unfitted.fit([it["image"] for it in data["training"]])  # no validation scans: no thresholds
    with pytest.raises(ValueError, match="no threshold"):
        unfitted.predict([data["test"][0]["image"]])


def test_predict_says_why_thresholds_were_refused(demo_cohort):
    """One healthy validation scan cannot calibrate a 95 % threshold: fit stores none, predict says why."""
    data = load_datalist(demo_cohort)
    tiny = {**TINY, "score.allow_few_calibration_scans": False}
    det = Detector("glow2d-slices", device="cpu", **tiny)
    det.fit([it["image"] for it in data["training"]], [it["image"] for it in data["validation"]])
    assert det.threshold_ is None and det.thresholds_ == {}
    with pytest.raises(UserInputError, match="needs at least 20"):
        det.predict([it["image"] for it in data["test"]])
    assert np.isfinite(det.decision_function([it["image"] for it in data["test"]])).all()  # scores still work
