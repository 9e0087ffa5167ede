"""`mri-anomaly bundle` writes a standard MONAI bundle folder that MONAI verifies and runs, reproducing `mri-anomaly score`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    config = load_config(
        REPO / "configs" / "latent-norm-ae-2d.yaml",
        ["train.phases.train.steps=2", "train.init_batches=1", "score.allow_few_calibration_scans=true"],
    )
    Trainer(config, datalist, root / "run", progress=False).fit()
    return root, datalist


def test_metadata_carries_thresholds_and_preprocessing(tiny_run):
    from mri_anomaly.bundle import write_bundle_metadata
    from mri_anomaly.evaluation.thresholds import load_thresholds

    root, _ = tiny_run
    meta = json.loads(write_bundle_metadata(root / "run", root / "metadata.json").read_text())
    for key in (
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ):
        assert key in meta, key
    ours = meta["mri_anomaly"]
    assert ours["method"] == "latent-norm-ae" and ours["spatial_dims"] == 2
    assert ours["thresholds"] == load_thresholds(root / "run")["thresholds"]
    assert (
        set(ours["thresholds"])
        == set(ours["score_columns"])
        == {
            "latent_norm_mean",
            "latent_norm_max",
            "latent_norm_top5_mean",
            "residual_q999",
            "residual_top200mm3",
        }
    )
    assert ours["preprocessing"]["spacing"] == [4.0, 4.0, 4.0] and ours["preprocessing"]["spatial_size"] == [
        40,
        48,
        40,
    ]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [40, 48, 40]
    assert "residual_map" in meta["network_data_format"]["outputs"]
    assert (
        ours["config"]["preprocessing"]["spatial_size"] == [40, 48, 40]
        and ours["config"]["spatial_dims"] == 2
    )
    # the committed template is valid JSON with MONAI's required keys
    template = json.loads((BUNDLE / "metadata.json").read_text())
    assert template["network_data_format"]["inputs"]["image"]["modality"] == "MR"


def _monai_bundle(*args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a fresh process that imports this checkout's package."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_bundle_folder_verifies_runs_and_matches_the_scorer(tiny_run):
    import torch
    from mri_anomaly.cli import main
    from mri_anomaly.scoring.runner import score_datalist
    from mri_anomaly.training.checkpoint import load_checkpoint

    root, datalist = tiny_run
    bundle = root / "bundle"
    assert main(["bundle", "--run", str(root / "run"), "--out", str(bundle)]) == 0
    for rel in ("configs/metadata.json", "configs/inference.yaml", "models/model.pt", "docs/README.md"):
        assert (bundle / rel).is_file(), rel
    assert main(["bundle", "--run", str(root / "run"), "--out", str(bundle)]) == 2  # never overwritten
    # models/model.pt: the run's weights only, loadable with weights_only=True
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    state = load_checkpoint(root / "run" / "checkpoint.pt")["state_dict"]
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["mri_anomaly"]["config"]["method"] == "latent-norm-ae"
    assert "latent_norm_mean" in (bundle / "docs" / "README.md").read_text()

    # MONAI's verify_metadata accepts it (schema: the specification's mandatory keys, kept offline in the
    # checkout; see configs/bundle/README.md) and rejects a metadata.json without a mandatory key
    schema = REPO / "configs" / "bundle" / "metadata_schema.json"
    verified = _monai_bundle(
        "verify_metadata", "--meta_file", str(bundle / "configs" / "metadata.json"), "--filepath", str(schema)
    )
    assert verified.returncode == 0, verified.stderr[-3000:]
    broken = dict(meta)
    del broken["task"]
    (root / "broken.json").write_text(json.dumps(broken))
    rejected = _monai_bundle(
        "verify_metadata", "--meta_file", str(root / "broken.json"), "--filepath", str(schema)
    )
    assert rejected.returncode != 0 and "task" in rejected.stderr

    # python -m monai.bundle run on the folder gives the numbers and flags of `mri-anomaly score`
    out = root / "bundle-out"
    ran = _monai_bundle(
        "run",
        "--bundle_root",
        str(bundle),
        "--config_file",
        str(bundle / "configs" / "inference.yaml"),
        "--datalist",
        str(datalist),
        "--output_dir",
        str(out),
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    scored_summary = score_datalist(
        root / "run", datalist, root / "scored", sections=("test",), progress=False
    )
    assert scored_summary.errors == 0
    result = pd.read_csv(out / "scores.csv")
    scored = pd.read_csv(root / "scored" / "scores.csv")
    assert list(result["subject_id"]) == list(scored["subject_id"])
    thresholds = meta["mri_anomaly"]["thresholds"]
    for col in ("latent_norm_mean", "latent_norm_max", "latent_norm_top5_mean"):
        np.testing.assert_allclose(result[col], scored[col], rtol=0, atol=1e-6)
        assert (
            list(result[f"flag:{col}"])
            == list(scored[f"flag:{col}"])
            == [int(v > thresholds[col]) for v in result[col]]
        )
    # maps: one per scan, on the input's grid with the input's affine (MONAI Invertd + SaveImaged)
    for image in result["image"]:
        src = nib.load(image)
        name = Path(image).name.replace(".nii.gz", "")
        written = nib.load(out / "maps" / f"{name}_residual_map.nii.gz")
        assert written.shape == src.shape
        np.testing.assert_allclose(written.affine, src.affine, atol=1e-4)
        assert np.isfinite(np.asarray(written.dataobj)).all()
    slices = pd.read_csv(out / "slice_scores.csv")
    assert len(slices) == len(result) * 40  # 40 axial slices on the model grid
