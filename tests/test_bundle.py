"""The MONAI bundle in configs/bundle runs on a tiny trained run and reproduces `mri-anomaly score`."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "configs" / "bundle"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mri_anomaly.data.demo import make_demo_cohort
    from mri_anomaly.training import Trainer, load_config

    root = tmp_path_factory.mktemp("bundle")
    datalist = make_demo_cohort(root / "data", seed=3, healthy=5, anomalous=2, general=0)
    config = load_config(REPO / "configs" / "latent-norm-ae-2d.yaml", ["train.phases.train.steps=2", "train.init_batches=1"])
    Trainer(config, datalist, root / "run", progress=False).fit()
    return root, datalist


def test_metadata_carries_thresholds_and_preprocessing(tiny_run):
    from mri_anomaly.evaluation.bundle import write_bundle_metadata
    from mri_anomaly.evaluation.thresholds import load_thresholds

    root, _ = tiny_run
    meta = json.loads(write_bundle_metadata(root / "run", root / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                "task", "description", "authors", "copyright", "network_data_format"):
        assert key in meta, key
    ours = meta["mri_anomaly"]
    assert ours["method"] == "latent-norm-ae" and ours["spatial_dims"] == 2
    assert ours["thresholds"] == load_thresholds(root / "run")["thresholds"]
    assert set(ours["thresholds"]) == set(ours["score_columns"]) == {"latent_norm_mean", "latent_norm_max", "latent_norm_top5_mean"}
    assert ours["preprocessing"]["spacing"] == [4.0, 4.0, 4.0] and ours["preprocessing"]["spatial_size"] == [40, 48, 40]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [40, 48, 40]
    assert "residual_map" in meta["network_data_format"]["outputs"]
    # the committed template is valid JSON with MONAI's required keys
    template = json.loads((BUNDLE / "metadata.json").read_text())
    assert template["network_data_format"]["inputs"]["image"]["modality"] == "MR"


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_bundle_runs_and_matches_the_scorer(tiny_run):
    from monai.bundle import run

    from mri_anomaly.evaluation.bundle import write_bundle_metadata
    from mri_anomaly.scoring.runner import score_datalist

    root, datalist = tiny_run
    meta_file = write_bundle_metadata(root / "run", root / "metadata.json")
    out = root / "bundle-out"
    # exactly what `python -m monai.bundle run --config_file ... --meta_file ... --run_dir ...` calls
    run(config_file=str(BUNDLE / "inference.yaml"), meta_file=str(meta_file), run_dir=str(root / "run"),
        datalist=str(datalist), section="test", output_dir=str(out))
    bundle = pd.read_csv(out / "scores.csv")
    score_datalist(root / "run", datalist, root / "scored", sections=("test",), progress=False)
    scored = pd.read_csv(root / "scored" / "scores.csv")
    assert list(bundle["subject_id"]) == list(scored["subject_id"])
    for col in ("latent_norm_mean", "latent_norm_max", "latent_norm_top5_mean"):
        np.testing.assert_allclose(bundle[col], scored[col], rtol=1e-5)
    thresholds = json.loads(meta_file.read_text())["mri_anomaly"]["thresholds"]
    for col, t in thresholds.items():
        assert list(bundle[f"flag:{col}"]) == [int(v > t) for v in bundle[col]]
    # maps: one per scan, on the input's grid with the input's affine (MONAI Invertd + SaveImaged)
    for image in bundle["image"]:
        src = nib.load(image)
        name = Path(image).name.replace(".nii.gz", "")
        written = nib.load(out / "maps" / f"{name}_residual_map.nii.gz")
        assert written.shape == src.shape
        np.testing.assert_allclose(written.affine, src.affine, atol=1e-4)
        assert np.isfinite(np.asarray(written.dataobj)).all()
    slices = pd.read_csv(out / "slice_scores.csv")
    assert len(slices) == len(bundle) * 40  # 40 axial slices on the model grid
