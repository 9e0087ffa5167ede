"""Deep SAD's labelled synthetic anomalies come from the DataLoader workers: the same batches for any number of
workers and on resume, the expected fraction γ_l, and exact resume of a training run with γ_l > 0."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from mri_anomaly.data import TINY_PREPROCESSING, load_datalist
from mri_anomaly.runs import build_method
from mri_anomaly.training import Trainer, load_checkpoint, validate_config
from mri_anomaly.training.loaders import ResumableBatches, build_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def deep_sad_config(pretrain: int, train: int, gamma_l: float = 0.5, **train_extra) -> dict:
    """Deep SAD on the tiny demo cohort (8 mm, 24^3 slices), focal lesions as the labelled anomalies."""
    return validate_config(
        {
            "method": "deep-sad",
            "spatial_dims": 2,
            "seed": 3,
            "preprocessing": dict(TINY_PREPROCESSING),
            "slices": {"min_brain_fraction": 0.1},
            "model": {
                "rep_dim": 8,
                "channels": [4, 8],
                "pooled_size": 2,
                "gamma_l": gamma_l,
                "lesion": {"kinds": ["focal"]},
                "voxel_size_mm": 8.0,
            },
            "train": {
                "batch_size": 4,
                "init_batches": 1,
                "log_every": 1,
                "checkpoint_every": 100,
                "phases": {
                    "pretrain": {"steps": pretrain, "lr": 1e-3},
                    "train": {"steps": train, "lr": 1e-3},
                },
                **train_extra,
            },
            "score": {"allow_few_calibration_scans": True},
        }
    )


def _train_stream(config: dict, dataset, num_workers: int = 0, start_step: int = 0) -> ResumableBatches:
    method = build_method(config)
    return ResumableBatches(
        dataset,
        config["train"]["batch_size"],
        seed=config["seed"],
        phase_index=1,
        num_workers=num_workers,
        rank=0,
        world_size=1,
        start_step=start_step,
        sample_transform=method.phase_sample_transform("train"),
    )


def test_train_batches_are_the_same_for_any_workers_and_on_resume(demo_cohort: Path, tmp_path: Path) -> None:
    config = deep_sad_config(1, 1)
    dataset = build_dataset(config, load_datalist(demo_cohort)["training"], cache_dir=tmp_path / "cache")
    in_process = list(itertools.islice(iter(_train_stream(config, dataset)), 6))
    with_worker = list(itertools.islice(iter(_train_stream(config, dataset, num_workers=1)), 6))
    resumed = list(itertools.islice(iter(_train_stream(config, dataset, start_step=3)), 3))
    for a, b in zip(in_process, with_worker, strict=True):
        for key in ("image", "semi_target", "mask", "label", "slice_index"):
            assert torch.equal(a[key], b[key]), key
    for a, b in zip(in_process[3:], resumed, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["semi_target"], b["semi_target"])
    # the labelled items (and only they) carry a lesion: compare with the same slices as loaded
    semi_target = torch.cat([b["semi_target"] for b in in_process])
    assert 0 < int((semi_target == -1).sum()) < semi_target.numel() and bool((semi_target <= 0).all())
    for batch in in_process:
        plain = torch.stack([dataset[int(i)]["image"] for i in _indices(config, dataset, batch)])
        lesioned = (batch["image"] != plain).flatten(1).any(dim=1)
        assert torch.equal(lesioned, batch["semi_target"] == -1)
        assert torch.equal(batch["label"] == 1, batch["semi_target"] == -1)
        assert torch.equal(batch["mask"].flatten(1).any(dim=1), lesioned)  # healthy training slices: no mask


def _indices(config: dict, dataset, batch: dict) -> list[int]:
    """The dataset indices of a batch's slices (by subject and slice index)."""
    lookup = {(dataset[i]["subject_id"], dataset[i]["slice_index"]): i for i in range(len(dataset))}
    return [lookup[(s, int(k))] for s, k in zip(batch["subject_id"], batch["slice_index"], strict=True)]


def test_labelled_fraction_is_gamma_l(demo_cohort: Path, tmp_path: Path) -> None:
    """Each unlabelled slice becomes a labelled anomaly with probability γ_l (unless it has no brain)."""
    gamma_l = 0.2
    config = deep_sad_config(1, 1, gamma_l=gamma_l)
    dataset = build_dataset(config, load_datalist(demo_cohort)["training"], cache_dir=tmp_path / "cache")
    batches = list(itertools.islice(iter(_train_stream(config, dataset)), 100))
    semi_target = torch.cat([b["semi_target"] for b in batches])
    n, k = semi_target.numel(), int((semi_target == -1).sum())
    tolerance = 4 * math.sqrt(n * gamma_l * (1 - gamma_l))  # binomial: 4 standard deviations
    assert abs(k - gamma_l * n) < tolerance, (k, n)


@pytest.mark.slow
def test_resume_with_synthetic_labels_matches_uninterrupted(demo_cohort: Path, tmp_path: Path) -> None:
    """γ_l = 0.5: interrupted inside phase "train" and resumed with a DataLoader worker -> the same weights."""
    config = deep_sad_config(2, 4)
    Trainer(config, demo_cohort, tmp_path / "full", progress=False).fit()
    Trainer(config, demo_cohort, tmp_path / "part", max_steps=4, progress=False).fit()
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["progress"]["phase_step"] == 2
    resumed = {**config, "train": {**config["train"], "num_workers": 1}}  # num_workers may change on resume
    Trainer(resumed, demo_cohort, tmp_path / "part", resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and the labelled anomalies took part: without them (γ_l = 0) the "train" phase ends elsewhere
    Trainer(deep_sad_config(2, 4, gamma_l=0.0), demo_cohort, tmp_path / "svdd", progress=False).fit()
    c = load_checkpoint(tmp_path / "svdd" / "checkpoint.pt")["state_dict"]
    assert torch.equal(a["net.center"], c["net.center"])  # same pretraining and centre
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("net.encoder"))


def test_volumes_get_lesions_and_keep_their_metadata(demo_cohort: Path, tmp_path: Path) -> None:
    from monai.data import MetaTensor
    from mri_anomaly.training.loaders import collate

    config = validate_config({**deep_sad_config(1, 1, gamma_l=0.99), "spatial_dims": 3})
    dataset = build_dataset(config, load_datalist(demo_cohort)["training"], cache_dir=tmp_path / "cache")
    transform = build_method(config).phase_sample_transform("train")
    torch.manual_seed(0)
    items = [transform(dataset[i]) for i in range(2)]
    for i, item in enumerate(items):
        assert isinstance(item["image"], MetaTensor) and torch.equal(
            item["image"].affine, dataset[i]["image"].affine
        )
        assert item["semi_target"] == -1 and item["label"] == 1 and item["has_mask"] == 1
        changed = (item["image"] != dataset[i]["image"]).any(0)
        outside = changed & (item["mask"][0] == 0)
        assert bool(changed.any()) and not bool(
            outside.any()
        )  # focal lesions change voxels in their mask only
    assert collate(items)["image"].shape == (2, 1, 24, 24, 24)
