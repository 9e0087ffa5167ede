"""Training augmentation: what each transform keeps, its seeding per sample, and exact resume with it on."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from mri_anomaly.data import TINY_PREPROCESSING, load_datalist
from mri_anomaly.data.augmentation import (
    AUGMENT_DEFAULTS,
    augment_config_problems,
    mri_augmentation,
    resolve_augment_config,
)
from mri_anomaly.training import Trainer, load_checkpoint, validate_config
from mri_anomaly.training.config import ConfigError
from mri_anomaly.training.loaders import ResumableBatches, build_dataset


def _brain_slice() -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 40, 48)
    image[:, 8:32, 8:40] = 0.2 + 0.6 * torch.rand(1, 24, 32, generator=g)
    mask = torch.zeros(1, 40, 48)
    mask[:, 18:22, 20:24] = 1.0
    return {"image": image, "mask": mask}


def test_augmentation_keeps_range_background_and_binary_mask() -> None:
    chain = mri_augmentation({**AUGMENT_DEFAULTS, "prob": 1.0}, spatial_dims=2, plain_tensors=True)
    item = _brain_slice()
    changed = 0
    for seed in range(5):
        chain.set_random_state(seed)
        out = chain(dict(item))
        image, mask = out["image"], out["mask"]
        assert type(image) is torch.Tensor and image.shape == (1, 40, 48)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        # far from the brain the box stays exactly 0 (zero padding, multiplicative field, min-based gamma)
        assert float(image[:, :3].abs().max()) == 0.0 and float(image[:, :, :3].abs().max()) == 0.0
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and 8 <= int(mask.sum()) <= 28
        changed += int(not torch.allclose(image, item["image"], atol=1e-3))
    assert changed == 5


def test_augmentation_is_a_function_of_its_seed() -> None:
    chain = mri_augmentation(AUGMENT_DEFAULTS, spatial_dims=3)
    volume = {"image": torch.rand(1, 16, 16, 16), "mask": torch.zeros(1, 16, 16, 16)}
    outs = []
    for seed in (7, 8, 7):
        chain.set_random_state(seed)
        outs.append(torch.as_tensor(chain(dict(volume))["image"]))
    assert torch.equal(outs[0], outs[2]) and not torch.equal(outs[0], outs[1])


def test_augment_config_values() -> None:
    assert resolve_augment_config(None) is None and resolve_augment_config(False) is None
    assert resolve_augment_config(True) == AUGMENT_DEFAULTS
    assert resolve_augment_config({"prob": 0.2})["prob"] == 0.2
    assert augment_config_problems({"prob": 0.3, "gamma": None}) == []
    problems = augment_config_problems({"prob": 2, "gamma": [1.5, 0.5], "rotation": 3, "scale": -1})
    assert len(problems) == 4
    assert any("'rotation'" in p for p in problems) and any("gamma" in p for p in problems)
    assert augment_config_problems("yes") == ["train.augment: expected true/false/null or a mapping, got str"]
    with pytest.raises(ConfigError, match="train.augment.prob"):
        validate_config({**_svdd_config(1, 1), "train": {"augment": {"prob": -0.1}}})


def _svdd_config(pretrain: int, train: int, **train_extra) -> dict:
    return validate_config(
        {
            "method": "deep-sad",
            "spatial_dims": 2,
            "seed": 3,
            "preprocessing": dict(TINY_PREPROCESSING),
            "slices": {"min_brain_fraction": 0.1},
            "model": {"rep_dim": 8, "channels": [4, 8], "pooled_size": 2, "gamma_l": 0.0},
            "train": {
                "batch_size": 2,
                "init_batches": 1,
                "log_every": 1,
                "checkpoint_every": 100,
                "phases": {
                    "pretrain": {"steps": pretrain, "lr": 1e-3, "warmup_steps": 2},
                    "train": {"steps": train, "lr": 1e-3},
                },
                **train_extra,
            },
            "score": {"allow_few_calibration_scans": True},
        }
    )


def test_augmented_training_batches_differ_by_epoch_and_resume_exactly(
    demo_cohort: Path, tmp_path: Path
) -> None:
    """The slice stream with augmentation on: resuming at step 3 gives the batches an uninterrupted stream gives."""
    config = _svdd_config(1, 1, augment={"prob": 1.0})
    dataset = build_dataset(config, load_datalist(demo_cohort)["training"], cache_dir=tmp_path / "cache")
    plain = build_dataset(
        config, load_datalist(demo_cohort)["training"], train=False, cache_dir=tmp_path / "c2"
    )

    def stream(ds, start: int = 0) -> ResumableBatches:
        return ResumableBatches(ds, 2, seed=3, phase_index=0, rank=0, world_size=1, start_step=start)

    full = list(itertools.islice(iter(stream(dataset)), 6))
    resumed = list(itertools.islice(iter(stream(dataset, start=3)), 3))
    for a, b in zip(full[3:], resumed, strict=True):
        assert torch.equal(a["image"], b["image"])
    not_augmented = list(itertools.islice(iter(stream(plain)), 6))
    for a, b in zip(full, not_augmented, strict=True):
        assert a["slice_index"].tolist() == b["slice_index"].tolist()  # the same slices, augmented
        assert not torch.allclose(a["image"], b["image"], atol=1e-3)


@pytest.mark.slow
def test_resume_with_augmentation_and_warmup_matches_uninterrupted(demo_cohort: Path, tmp_path: Path) -> None:
    config = _svdd_config(3, 2, augment=True)
    Trainer(config, demo_cohort, tmp_path / "full", progress=False).fit()
    Trainer(config, demo_cohort, tmp_path / "part", max_steps=2, progress=False).fit()
    Trainer(config, demo_cohort, tmp_path / "part", resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    import csv

    with open(tmp_path / "part" / "train_log.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3])  # warm-up over the pretrain phase's 2 steps
