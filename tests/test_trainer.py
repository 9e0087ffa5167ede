"""The Trainer: exact resume, non-finite step skipping, checkpoints, thresholds, refusing to overwrite."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from mri_anomaly.data import TINY_PREPROCESSING, load_datalist
from mri_anomaly.evaluation.thresholds import calibrate_thresholds
from mri_anomaly.training import Trainer, load_checkpoint, validate_config
from mri_anomaly.training.methods import AnomalyMethod, BatchScores, register_method

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny(config: dict, **train) -> dict:
    """A config shrunk to the tiny demo cohort (8 mm, 24^3)."""
    cfg = {**config, "preprocessing": dict(TINY_PREPROCESSING)}
    cfg["train"] = {**config.get("train", {}), "batch_size": 2, "init_batches": 1, "log_every": 1, **train}
    cfg["score"] = {**config.get("score", {}), "allow_few_calibration_scans": True}  # one validation scan
    return validate_config(cfg)


def deep_svdd_config(pretrain: int, train: int, **extra) -> dict:
    return tiny(
        {
            "method": "deep-sad",
            "spatial_dims": 2,
            "seed": 3,
            "slices": {"min_brain_fraction": 0.1},
            "model": {"rep_dim": 8, "channels": [4, 8], "pooled_size": 2, "gamma_l": 0.0},
            "train": {
                "phases": {"pretrain": {"steps": pretrain, "lr": 1e-3}, "train": {"steps": train, "lr": 1e-3}}
            },
        },
        **extra,
    )


def glow3d_config(steps: int, **extra) -> dict:
    return tiny(
        {
            "method": "glow",
            "spatial_dims": 3,
            "seed": 5,
            "model": {"levels": 2, "steps": 1, "hidden_channels": 8},
            "train": {"phases": {"train": {"steps": steps, "lr": 1e-3}}},
        },
        **extra,
    )


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    a, b = load_checkpoint(run_a / "checkpoint.pt"), load_checkpoint(run_b / "checkpoint.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def read_log(run: Path) -> list[dict[str, str]]:
    with open(run / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_resume_across_a_phase_boundary_matches_uninterrupted(demo_cohort, tmp_path):
    """Deep SVDD: pretrain 3 steps, train 3 steps; interrupted after steps 2 and 4, resumed twice."""
    config = deep_svdd_config(pretrain=3, train=3, checkpoint_every=100)
    full = Trainer(config, demo_cohort, tmp_path / "full", progress=False).fit()
    assert full.completed and full.global_step == 6

    part = tmp_path / "part"
    first = Trainer(config, demo_cohort, part, max_steps=2, progress=False).fit()
    assert not first.completed and first.global_step == 2
    assert load_checkpoint(part / "checkpoint.pt")["progress"]["phase_step"] == 2
    second = Trainer(config, demo_cohort, part, max_steps=4, resume=True, progress=False).fit()
    assert second.global_step == 4
    progress = load_checkpoint(part / "checkpoint.pt")["progress"]
    assert (progress["phase_index"], progress["phase_step"]) == (1, 1)  # inside phase "train"
    last = Trainer(config, demo_cohort, part, resume=True, progress=False).fit()
    assert last.completed and last.global_step == 6

    assert_same_weights(tmp_path / "full", part)
    assert last.thresholds == pytest.approx(full.thresholds, rel=1e-6)
    # the log is continuous: one row per step, steps 1..6, with the same losses where the runs overlap
    full_log, part_log = read_log(tmp_path / "full"), read_log(part)
    assert [int(r["global_step"]) for r in part_log] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in part_log] == [r["loss"] for r in full_log]


@pytest.mark.slow
def test_resume_restores_the_random_streams_of_training(demo_cohort, tmp_path):
    """Glow draws dequantisation noise from the global RNG every step: resume must restore it exactly."""
    config = glow3d_config(steps=4, checkpoint_every=1)
    Trainer(config, demo_cohort, tmp_path / "full", progress=False).fit()
    Trainer(config, demo_cohort, tmp_path / "part", max_steps=2, progress=False).fit()
    Trainer(config, demo_cohort, tmp_path / "part", resume=True, progress=False).fit()
    assert_same_weights(tmp_path / "full", tmp_path / "part")
    # and a run that did not restore the RNG would differ: a different seed changes the weights
    other = Trainer({**config, "seed": 6}, demo_cohort, tmp_path / "other", progress=False).fit()
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["state_dict"]
    b = load_checkpoint(other.checkpoint)["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_checkpoint_contents_and_thresholds(demo_cohort, tmp_path):
    config = glow3d_config(steps=2)
    result = Trainer(config, demo_cohort, tmp_path / "run", progress=False).fit()
    raw = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert raw["method"] == "glow" and raw["progress"]["completed"] is True
    assert raw["optimizer"] is None or isinstance(raw["optimizer"], dict)
    assert {"mri_anomaly", "torch", "monai"} <= set(raw["versions"])
    assert "glow.initialized" in raw["state_dict"] and bool(
        raw["state_dict"]["glow.initialized"]
    )  # data-init state
    assert validate_config(__import__("yaml").safe_load(raw["config"])) == config
    assert (tmp_path / "run" / "config.yaml").read_text() == raw["config"]
    # thresholds: one per score column, at the configured specificity, calibrated on the validation scans
    columns = (
        "nll_bpd",
        "final_scale",
        "nll_q999",
        "final_scale_q999",
        "nll_top200mm3",
        "final_scale_top200mm3",
    )
    assert set(raw["thresholds"]) == set(columns)
    assert raw["threshold_info"]["specificity"] == 0.95 and raw["threshold_info"]["section"] == "validation"
    stored = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    assert stored["thresholds"] == pytest.approx(raw["thresholds"])
    assert result.thresholds == pytest.approx(raw["thresholds"])
    # recompute from the scorer's validation scores: the same numbers
    from mri_anomaly.data import VolumeDataset
    from mri_anomaly.runs import load_run
    from mri_anomaly.scoring.volume import score_volume

    method, cfg, _ = load_run(tmp_path / "run")
    volumes = VolumeDataset(
        load_datalist(demo_cohort)["validation"], preprocessing_config=cfg["preprocessing"], cache="none"
    )
    rows = [score_volume(method, cfg, volumes[i], want_maps=False) for i in range(len(volumes))]
    expected = calibrate_thresholds({c: [r.scores[c] for r in rows] for c in columns}, 0.95)
    assert raw["thresholds"] == pytest.approx(expected["thresholds"], rel=1e-6)


def test_existing_run_is_never_overwritten_and_config_changes_are_named(demo_cohort, tmp_path):
    config = deep_svdd_config(pretrain=1, train=0)
    Trainer(config, demo_cohort, tmp_path / "run", progress=False).fit()
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config, demo_cohort, tmp_path / "run", progress=False)
    changed = validate_config({**config, "model": {**config["model"], "rep_dim": 16}})
    with pytest.raises(ValueError, match=r"model.rep_dim: 8 in the checkpoint, 16 now"):
        Trainer(changed, demo_cohort, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    # steps of a finished phase cannot change (its end already happened)
    longer = validate_config(
        {
            **config,
            "train": {
                **config["train"],
                "phases": {
                    "pretrain": {"steps": 2, "lr": 1e-3, "weight_decay": 0.0},
                    "train": {"steps": 0, "lr": 1e-3, "weight_decay": 0.0},
                },
            },
        }
    )
    with pytest.raises(ValueError, match="phase 'pretrain' already finished after 1 steps"):
        Trainer(longer, demo_cohort, tmp_path / "run", resume=True, progress=False)


def test_steps_of_the_phase_in_progress_may_grow_on_resume(demo_cohort, tmp_path):
    Trainer(flaky_config(4, []), demo_cohort, tmp_path / "run", max_steps=2, progress=False).fit()
    result = Trainer(flaky_config(6, []), demo_cohort, tmp_path / "run", resume=True, progress=False).fit()
    assert result.completed and result.global_step == 6
    reference = Trainer(flaky_config(6, []), demo_cohort, tmp_path / "ref", progress=False).fit()
    assert_same_weights(tmp_path / "run", tmp_path / "ref")
    assert reference.global_step == 6


# ------------------------------------------------------------------ non-finite steps (a purpose-built method)
@register_method
class _FlakyLoss(AnomalyMethod):
    """A linear score whose loss is NaN on every step listed in ``nan_steps`` (counted from 1)."""

    name = "test-flaky-loss"
    score_names = ("linear",)

    def __init__(self, spatial_dims: int, in_channels: int = 1, nan_steps: list[int] | None = None) -> None:
        super().__init__(spatial_dims, in_channels)
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.nan_steps = set(nan_steps or [])
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def training_loss(self, phase, batch, general_batch=None):
        self.calls += 1
        x = torch.as_tensor(batch["image"]).float().mean()
        loss = (self.weight * x - 2.0) ** 2
        if int(self.calls) in self.nan_steps:
            loss = loss * float("nan")
        return loss

    @torch.no_grad()
    def score(self, batch):
        x = torch.as_tensor(batch["image"]).float().flatten(1).mean(1)
        return BatchScores(scores={"linear": self.weight * x})


def flaky_config(steps: int, nan_steps: list[int], **train) -> dict:
    return tiny(
        {
            "method": "test-flaky-loss",
            "spatial_dims": 3,
            "seed": 0,
            "model": {"nan_steps": nan_steps},
            "train": {"phases": {"train": {"steps": steps, "lr": 0.1}}},
        },
        **train,
    )


def test_non_finite_steps_are_skipped_counted_and_logged(demo_cohort, tmp_path):
    result = Trainer(flaky_config(5, [2, 4]), demo_cohort, tmp_path / "run", progress=False).fit()
    assert result.completed and result.skipped_steps == 2
    log = read_log(tmp_path / "run")
    assert [int(r["skipped_steps"]) for r in log] == [0, 1, 1, 2, 2]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["progress"]["skipped_steps"] == 2
    weight = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state_dict"]["weight"]
    assert torch.isfinite(weight)
    # the NaN steps did not move the weight: same as 3 clean steps of a run without NaNs
    clean = Trainer(flaky_config(3, []), demo_cohort, tmp_path / "clean", progress=False).fit()
    assert clean.skipped_steps == 0
    assert torch.equal(weight, load_checkpoint(clean.checkpoint)["state_dict"]["weight"])


def test_too_many_consecutive_non_finite_steps_abort_with_the_last_good_state(demo_cohort, tmp_path):
    config = flaky_config(10, [3, 4, 5, 6], max_consecutive_skips=3)
    with pytest.raises(RuntimeError, match="3 steps in a row had a non-finite loss"):
        Trainer(config, demo_cohort, tmp_path / "run", progress=False).fit()
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["progress"]["skipped_steps"] == 3
    assert torch.isfinite(checkpoint["state_dict"]["weight"])


def test_too_small_training_section_is_a_clear_error(demo_cohort, tmp_path):
    config = flaky_config(1, [], batch_size=50)
    with pytest.raises(ValueError, match="fewer than batch_size 50"):
        Trainer(config, demo_cohort, tmp_path / "run", progress=False).fit()


def _datalist_with(demo_cohort: Path, folder: Path, section: str) -> Path:
    """The demo datalist (absolute paths) plus a corrupt scan (gzip garbage) in ``section``."""
    data = json.loads(Path(demo_cohort).read_text())
    base = Path(demo_cohort).parent
    for items in data.values():
        if isinstance(items, list):
            for it in items:
                for k in ("image", "mask"):
                    if k in it:
                        it[k] = str(base / it[k])
    broken = folder / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    data[section].append({"image": str(broken), "subject_id": "broken"})
    path = folder / f"datalist-{section}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_bad_training_file_stops_before_any_work_and_a_bad_test_file_does_not(demo_cohort, tmp_path):
    from mri_anomaly.data import DatalistError

    config = flaky_config(1, [])
    with pytest.raises(DatalistError) as info:
        Trainer(
            config, _datalist_with(demo_cohort, tmp_path, "training"), tmp_path / "run", progress=False
        ).fit()
    assert any("broken.nii.gz" in p for p in info.value.problems)
    assert not (tmp_path / "run").exists()
    result = Trainer(
        config, _datalist_with(demo_cohort, tmp_path, "test"), tmp_path / "run2", progress=False
    ).fit()
    assert result.completed


def test_deep_sad_centre_is_the_mean_over_the_whole_training_set(demo_cohort, tmp_path):
    """Ruff et al.: c is the mean embedding of the training set after pretraining. With init_batches covering an
    epoch (the shipped configs) begin_phase sees every training slice once (batch size 1: nothing dropped)."""
    from mri_anomaly.runs import load_run
    from mri_anomaly.training.loaders import build_dataset

    config = deep_svdd_config(pretrain=1, train=0, batch_size=1, init_batches=100000)
    Trainer(config, demo_cohort, tmp_path / "run", progress=False).fit()
    method, cfg, _ = load_run(tmp_path / "run")
    slices = build_dataset(cfg, load_datalist(demo_cohort)["training"], train=True)
    images = torch.stack([torch.as_tensor(slices[i]["image"]) for i in range(len(slices))]).float()
    with torch.no_grad():
        expected = method.net.encoder(images).double().mean(dim=0)
    small = expected.abs() < 0.1
    expected[small] = torch.where(expected[small] < 0, -0.1, 0.1).double()
    torch.testing.assert_close(method.net.center.double(), expected, rtol=1e-4, atol=1e-5)
    assert len(slices) > 8  # more slices than the 8 batches of 1 that the old configs would have used


def test_each_section_dataset_is_built_once_per_run_with_its_cache_in_the_run(
    demo_cohort, tmp_path, monkeypatch
):
    import mri_anomaly.training.loaders as loaders

    built = []
    real = loaders.build_dataset

    def counting(config, items, train=True, cache_dir=None, shared_cache=None):
        built.append(cache_dir)
        return real(config, items, train=train, cache_dir=cache_dir, shared_cache=shared_cache)

    monkeypatch.setattr(loaders, "build_dataset", counting)
    # Deep SVDD: two phases (pretrain, train) on the training section
    Trainer(deep_svdd_config(pretrain=2, train=2), demo_cohort, tmp_path / "run", progress=False).fit()
    assert built == [tmp_path / "run" / "cache"]


@pytest.mark.slow
def test_runs_sharing_a_preprocessed_cache_read_each_scan_once_and_train_as_alone(
    demo_cohort, tmp_path, preprocessing_reads
):
    """A 3D Glow with augmentation (the random part runs after the shared part) and then Deep SVDD on slices, the
    second reading nothing: checkpoints and thresholds equal to the runs without the cache."""
    from mri_anomaly.data import PreprocessedCache
    from mri_anomaly.evaluation.thresholds import load_thresholds

    configs = {"glow": glow3d_config(steps=2, augment=True), "svdd": deep_svdd_config(pretrain=2, train=1)}
    for name, config in configs.items():
        Trainer(config, demo_cohort, tmp_path / "alone" / name, progress=False).fit()
    reads = preprocessing_reads
    reads.clear()  # the runs above read every scan themselves
    cache = PreprocessedCache()
    data = load_datalist(demo_cohort)
    scans = len(data["training"]) + len(data["validation"])
    for name, config in configs.items():
        Trainer(
            config, demo_cohort, tmp_path / "shared" / name, progress=False, preprocessed_cache=cache
        ).fit()
        assert len(reads) == scans and len(cache.items) == scans  # the second run read nothing
        assert_same_weights(tmp_path / "alone" / name, tmp_path / "shared" / name)
        alone = load_thresholds(tmp_path / "alone" / name)
        assert alone is not None and load_thresholds(tmp_path / "shared" / name) == alone


def test_thresholds_from_too_few_validation_scans_are_refused_unless_allowed(demo_cohort, tmp_path):
    from mri_anomaly.evaluation.thresholds import load_thresholds

    config = glow3d_config(steps=1)
    config["score"]["allow_few_calibration_scans"] = (
        False  # the default; the tiny cohort has one validation scan
    )
    result = Trainer(config, demo_cohort, tmp_path / "run", progress=False).fit()
    stored = load_thresholds(tmp_path / "run")
    assert result.thresholds == {} and stored["thresholds"] == {}
    assert "needs at least 20" in stored["refused"] and stored["slice_norms"]  # the norms are still fitted
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["thresholds"] == {}
