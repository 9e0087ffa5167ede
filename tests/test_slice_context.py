"""2.5D runs (``slices.context``): train, score and export a latent-norm autoencoder that sees each slice with its
neighbours, end to end on the tiny demo cohort."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from mri_anomaly.cli import main
from mri_anomaly.data import VolumeDataset, load_datalist, slice_stack
from mri_anomaly.export import METADATA_FILE
from mri_anomaly.runs import load_run
from mri_anomaly.scoring.volume import raw_volume_scores

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "preprocessing.spacing=[8, 8, 8]",
    "preprocessing.spatial_size=[24, 24, 24]",
    "slices.context=1",
    "model.latent_dim=8",
    "model.channels=[4, 8]",
    "model.pooled_size=2",
    "train.batch_size=4",
    "train.phases.train.steps=3",
    "score.top_k=3",
    "score.allow_few_calibration_scans=true",  # the tiny cohort has one validation scan
]


@pytest.fixture(scope="module")
def stack_run(demo_cohort, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stack") / "run"
    args = ["train", "--config", str(CONFIGS / "latent-norm-ae-2d.yaml"), "--datalist", str(demo_cohort)]
    assert main([*args, "--out", str(run), "--no-progress", *[a for o in TINY for a in ("--set", o)]]) == 0
    return run


def test_a_stack_run_scores_each_slice_with_its_neighbours(stack_run, demo_cohort, tmp_path):
    method, config, _ = load_run(stack_run)
    assert config["slices"]["context"] == 1 and method.slice_context == 1 and method.net.in_channels == 3
    out = tmp_path / "scores"
    args = ["score", "--run", str(stack_run), "--datalist", str(demo_cohort), "--section", "test"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    test = load_datalist(demo_cohort)["test"]
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == len(test) and "residual_top200mm3" in scores and "latent_norm_top3_mean" in scores
    slices = pd.read_csv(out / "slice_scores.csv", dtype={"subject_id": str})
    assert len(slices) == 24 * len(test)

    # each slice's score is the model's on that slice stacked with the ones above and below it (zeros beyond)
    item = VolumeDataset(test[:1], preprocessing_config=config["preprocessing"])[0]
    raw = raw_volume_scores(method, config, item, torch.device("cpu"), want_maps=True)
    image = item["image"].as_tensor()
    for k in (0, 11, 23):
        by_hand = method.score({"image": slice_stack(image, k, 1)[None]}).scores["latent_norm"]
        torch.testing.assert_close(raw.slice_scores["latent_norm"][k : k + 1].double(), by_hand.double())
    assert tuple(raw.maps["residual"].shape) == (1, 24, 24, 24)

    # the maps are written on the input file's grid with its affine, one channel as for plain slices
    sid = str(scores["subject_id"][0])
    written = nib.load(out / "maps" / "test" / f"{sid}_residual.nii.gz")
    source = nib.load(test[0]["image"])
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)


def test_an_exported_stack_run_takes_slice_stacks_and_scores_as_score(stack_run, demo_cohort, tmp_path):
    import mri_anomaly

    out = tmp_path / "scores"
    args = ["score", "--run", str(stack_run), "--datalist", str(demo_cohort), "--section", "validation,test"]
    assert main([*args, "--out", str(out), "--no-maps", "--no-progress"]) == 0
    assert main(["export", "--run", str(stack_run), "--out", str(tmp_path / "model.pt2")]) == 0
    extra = {METADATA_FILE: ""}
    torch.export.load(str(tmp_path / "model.pt2"), extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert meta["model_input"]["shape"] == ["N", 3, 24, 24] and meta["model_input"]["slice_context"] == 1
    scored = pd.read_csv(out / "scores.csv")
    table = mri_anomaly.load_exported(tmp_path / "model.pt2").score_table(list(scored["image"]))
    for column in json.loads((out / "score_meta.json").read_text())["score_columns"]:
        np.testing.assert_allclose(table[column].to_numpy(), scored[column].to_numpy(), rtol=1e-5, atol=1e-5)
