"""Histogram (Nyúl–Udupa) standardisation: the mapping, the fit, the config, the cache, train/score/resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from mri_anomaly.data import TINY_PREPROCESSING, VolumeDataset, load_datalist, preprocessing
from mri_anomaly.data.histogram import (
    DEFAULT_PERCENTILES,
    HistogramStandardize,
    HistogramStandardized,
    healthy_items,
    mapping_knots,
    scan_landmarks,
    standardize,
)
from mri_anomaly.data.histogram_fit import fit_standard_landmarks, scaled_volumes
from mri_anomaly.data.preprocessing import validate_preprocessing_config
from mri_anomaly.training import Trainer, load_checkpoint, validate_config

pytestmark = pytest.mark.usefixtures("single_thread")


def _volume(values: list[float], background: int = 3) -> torch.Tensor:
    """(1, n + background, 1, 1): the brain values then a zero background."""
    return torch.tensor(values + [0.0] * background, dtype=torch.float32).reshape(1, -1, 1, 1)


# ------------------------------------------------------------------------------------------- the mapping
def test_mapping_on_a_hand_made_case():
    # brain 0.1 .. 0.5: percentiles 25/50/75 are 0.2/0.3/0.4; standard 0.4/0.6/0.8
    # knots (0, 0), (0.2, 0.4), (0.3, 0.6), (0.4, 0.8), (1, 1)
    img = _volume([0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(scan_landmarks(img, [25, 50, 75]), [0.2, 0.3, 0.4], atol=1e-7)
    out = standardize(img, [0.4, 0.6, 0.8], [25, 50, 75])
    expected = [0.2, 0.4, 0.6, 0.8, 0.8 + 0.1 * 0.2 / 0.6, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(out.flatten().numpy(), expected, atol=1e-6)
    assert out.dtype == torch.float32
    # beyond 1 (no clipping): the last segment extends, slope 0.2 / 0.6; with clipping: 1
    img = _volume([0.1, 0.2, 0.3, 0.4, 1.3])
    np.testing.assert_allclose(scan_landmarks(img, [25, 50, 75]), [0.2, 0.3, 0.4], atol=1e-7)
    free = standardize(img, [0.4, 0.6, 0.8], [25, 50, 75], clip=False).flatten()
    assert float(free[4]) == pytest.approx(1.0 + 0.3 * 0.2 / 0.6, abs=1e-6)
    assert float(free[0]) == pytest.approx(0.2, abs=1e-6)
    clipped = standardize(img, [0.4, 0.6, 0.8], [25, 50, 75], clip=True).flatten()
    assert float(clipped[4]) == 1.0


def test_knots_keep_0_and_1_and_drop_landmarks_that_collide():
    xs, ys = mapping_knots([0.0, 0.3, 0.3, 0.9995, 1.0], [0.0, 0.5, 0.55, 0.99, 1.0])
    np.testing.assert_allclose(xs, [0.0, 0.3, 1.0])
    np.testing.assert_allclose(ys, [0.0, 0.5, 1.0])


def test_brain_mask_limits_the_landmarks_and_the_background_stays_zero():
    img = _volume([0.1, 0.2, 0.3, 0.4, 0.9], background=0)
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]).reshape(1, -1, 1, 1)
    np.testing.assert_allclose(scan_landmarks(img, [50], mask), [0.25], atol=1e-7)
    out = HistogramStandardize([0.5], [50])(torch.cat([img, torch.zeros(1, 2, 1, 1)], 1), None)
    assert out.flatten()[-2:].tolist() == [0.0, 0.0]


def test_dict_transform_uses_the_named_mask_and_refuses_a_missing_one():
    img = _volume([0.1, 0.2, 0.3, 0.4, 0.9], background=0)
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]).reshape(1, -1, 1, 1)
    transform = HistogramStandardized("image", mask_key="brain", landmarks=[0.5], percentiles=[50])
    out = transform({"image": img, "brain": mask})["image"]
    torch.testing.assert_close(out, HistogramStandardize([0.5], [50])(img, mask))
    # without the mask the 0.9 voxel counts as brain: another median, another mapping
    assert not torch.allclose(out, HistogramStandardize([0.5], [50])(img, None))
    with pytest.raises(KeyError, match="'brain' missing from the item"):
        transform({"image": img})


# ----------------------------------------------------------------------------------------------- the fit
# the landmark mapping on the 1st-99th percentile scale it was designed on (the ablation's setting); the
# median-anchored default scale is tested in test_data_antialias.py
P1_P99 = {"upper": 99.0, "upper_value": 1.0}


def _tiny(**intensity) -> dict:
    return {**TINY_PREPROCESSING, "intensity": {**P1_P99, "standardize": "histogram", **intensity}}


def test_standard_landmarks_are_the_mean_of_the_training_scans_landmarks(demo_cohort):
    items = healthy_items(load_datalist(demo_cohort)["training"])
    assert len(items) == 2
    chain, _ = scaled_volumes(_tiny())
    per_scan = [scan_landmarks(chain({"image": it["image"]})["image"], DEFAULT_PERCENTILES) for it in items]
    fitted = fit_standard_landmarks(items, _tiny())
    np.testing.assert_allclose(fitted, np.mean(per_scan, axis=0), atol=1e-12)
    assert len(fitted) == 11 and all(a <= b for a, b in zip(fitted, fitted[1:]))
    assert 0.0 < fitted[0] < 0.1 and fitted[-1] == pytest.approx(1.0, abs=1e-3)
    # the two scans differ, so the mean is not simply one of them
    assert np.abs(per_scan[0] - per_scan[1]).max() > 0.01


def test_healthy_items_skip_labelled_anomalies():
    items = [
        {"image": "a"},
        {"image": "b", "label": 0},
        {"image": "c", "label": 1},
        {"image": "d", "semi_target": -1},
    ]
    assert [it["image"] for it in healthy_items(items)] == ["a", "b"]


def test_a_monotone_nonlinear_intensity_change_is_undone(demo_cohort, tmp_path):
    """The same anatomy with intensities x -> x**2 (another "scanner"): the percentile scaling alone leaves the
    images far apart; the landmark mapping brings them back together. The brain is a given mask (the
    estimated foreground itself moves under a non-linear change, which no intensity mapping can undo)."""
    data = load_datalist(demo_cohort)
    item = data["training"][0]
    src = nib.load(item["image"])
    raw = np.asarray(src.dataobj, dtype=np.float32)
    assert raw.min() >= 0
    brain_mask, other = tmp_path / "brain.nii.gz", tmp_path / "warped.nii.gz"
    nib.save(nib.Nifti1Image((raw > 0).astype(np.float32), src.affine), str(brain_mask))
    nib.save(nib.Nifti1Image(raw**2, src.affine, src.header), str(other))
    masked = {**TINY_PREPROCESSING, "brain_mask_key": "brain_mask", "intensity": P1_P99}
    items = [{**it, "brain_mask": str(brain_mask)} for it in healthy_items(data["training"])]
    landmarks = fit_standard_landmarks(items, {**masked, "intensity": {**P1_P99, "standardize": "histogram"}})
    plain = preprocessing(masked, keys=("image",))
    std = preprocessing(
        {**masked, "intensity": {**P1_P99, "standardize": "histogram", "histogram_landmarks": landmarks}},
        keys=("image",),
    )
    a0, b0, a1, b1 = (
        chain({"image": path, "brain_mask": str(brain_mask)})["image"]
        for chain, path in (
            (plain, item["image"]),
            (plain, str(other)),
            (std, item["image"]),
            (std, str(other)),
        )
    )
    brain = (a0 > 0) | (b0 > 0)
    before = float((a0 - b0).abs()[brain].mean())
    after = float((a1 - b1).abs()[brain].mean())
    assert before > 0.1  # measured 0.132
    assert after < 0.01  # measured 0.0055
    # the background stays exactly 0 and the output in [0, 1]
    assert torch.equal(a1 == 0, a0 == 0) and torch.equal(b1 == 0, b0 == 0)
    assert float(a1.min()) == 0.0 and float(a1.max()) <= 1.0 and float(b1.max()) <= 1.0


def test_background_stays_zero_with_a_brain_mask_and_without_clipping(tmp_path):
    rng = np.random.default_rng(0)
    vol = np.zeros((12, 12, 12), np.float32)
    vol[3:9, 3:9, 3:9] = rng.uniform(100, 900, (6, 6, 6))
    vol[0:2] = 50.0  # outside the brain mask, not zero in the file
    mask = np.zeros_like(vol)
    mask[3:9, 3:9, 3:9] = 1
    for name, arr in (("img", vol), ("bm", mask)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    cfg = {
        "spacing": None,
        "spatial_size": [16, 16, 16],
        "brain_mask_key": "brain_mask",
        "intensity": {
            **P1_P99,
            "clip": False,
            "standardize": "histogram",
            "histogram_landmarks": [0.02] + [0.1 * k for k in range(1, 10)] + [0.98],
        },
    }
    out = preprocessing(cfg, keys=("image",))(
        {"image": str(tmp_path / "img.nii.gz"), "brain_mask": str(tmp_path / "bm.nii.gz")}
    )
    img, bm = out["image"], out["brain_mask"]
    assert torch.all(img[bm == 0] == 0)
    assert float(img[bm > 0].min()) < 0 and float(img[bm > 0].max()) > 1  # the tails stay (no clipping)


# -------------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize(
    ("intensity", "message"),
    [
        ({"standardize": "nyul"}, "standardize: expected null or 'histogram'"),
        ({"histogram_percentiles": [10, 5, 50]}, "strictly increasing numbers in (0, 100)"),
        ({"histogram_percentiles": [0, 50]}, "strictly increasing numbers in (0, 100)"),
        ({"histogram_percentiles": [50, 100]}, "strictly increasing numbers in (0, 100)"),
        ({"histogram_percentiles": []}, "histogram_percentiles: expected a non-empty list"),
        ({"histogram_landmarks": [0.1, 0.2]}, "2 landmarks for 11 histogram_percentiles"),
        ({"histogram_landmarks": [0.5, 0.4], "histogram_percentiles": [10, 90]}, "must be non-decreasing"),
        ({"histogram_landmarks": "0.1, 0.2"}, "histogram_landmarks: expected null or a list of numbers"),
        ({"histogram_landmarks": [0.1, float("nan")], "histogram_percentiles": [10, 90]}, "list of numbers"),
        ({"standardize": "histogram", "bins": 3}, "unknown key 'bins'"),
    ],
)
def test_config_validation_names_the_key(intensity, message):
    problems = validate_preprocessing_config({"intensity": intensity})
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith("preprocessing.intensity")


def test_valid_configs_and_a_chain_without_landmarks_is_refused():
    assert validate_preprocessing_config(_tiny()) == []
    assert (
        validate_preprocessing_config(
            _tiny(histogram_percentiles=[5, 50, 95], histogram_landmarks=[0.1, 0.5, 0.9])
        )
        == []
    )
    with pytest.raises(ValueError, match="histogram_landmarks is null: `mri-anomaly train` fits them"):
        preprocessing(_tiny())
    # and the full config validator reports the problems with the section's name
    from mri_anomaly.training.config import ConfigError

    with pytest.raises(ConfigError, match="histogram_percentiles"):
        validate_config(
            {"method": "intensity", "spatial_dims": 3, "preprocessing": _tiny(histogram_percentiles=[50, 10])}
        )


def test_the_disk_cache_is_keyed_by_the_landmarks(demo_cohort, tmp_path):
    items = load_datalist(demo_cohort)["test"][:1]
    a = VolumeDataset(
        items,
        _tiny(histogram_landmarks=[0.05 + 0.09 * k for k in range(11)]),
        cache="disk",
        cache_dir=tmp_path,
    )
    b = VolumeDataset(
        items,
        _tiny(histogram_landmarks=[0.02 + 0.098 * k for k in range(11)]),
        cache="disk",
        cache_dir=tmp_path,
    )
    c = VolumeDataset(items, TINY_PREPROCESSING, cache="disk", cache_dir=tmp_path)
    assert len({a.cache_dir, b.cache_dir, c.cache_dir}) == 3
    xa, xb, xc = (ds[0]["image"] for ds in (a, b, c))
    assert float((xa - xb).abs().max()) > 0.01 and float((xa - xc).abs().max()) > 0.01


# --------------------------------------------------------------------------------------- train and score
def _run_config(method: str = "intensity", **extra) -> dict:
    cfg = {
        "method": method,
        "spatial_dims": 3,
        "seed": 0,
        "preprocessing": _tiny(),
        "train": {"batch_size": 2, "init_batches": 1, "log_every": 1},
        "score": {"allow_few_calibration_scans": True},
        **extra,
    }
    if method == "intensity":
        cfg["preprocessing"]["intensity"].update(upper=50.0, clip=False)
        cfg["train"]["phases"] = {"fit": {"steps": 0}}
    return validate_config(cfg)


def test_train_stores_the_landmarks_and_scoring_uses_them(demo_cohort, tmp_path, monkeypatch):
    from mri_anomaly.data import histogram
    from mri_anomaly.scoring.runner import score_datalist

    config = _run_config()
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(config, demo_cohort, run, progress=False).fit()
    expected = fit_standard_landmarks(
        healthy_items(load_datalist(demo_cohort)["training"]), config["preprocessing"]
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())["preprocessing"]["intensity"]
    assert saved["standardize"] == "histogram"
    assert saved["histogram_landmarks"] == pytest.approx(expected, abs=1e-12)
    stored = yaml.safe_load(load_checkpoint(run / "checkpoint.pt")["config"])["preprocessing"]["intensity"]
    assert stored["histogram_landmarks"] == pytest.approx(expected, abs=1e-12)
    assert (
        config["preprocessing"]["intensity"].get("histogram_landmarks") is None
    )  # the caller's dict untouched

    used = []
    real = histogram.standardize

    def spy(img, standard, *args, **kwargs):
        used.append(list(standard))
        return real(img, standard, *args, **kwargs)

    monkeypatch.setattr(histogram, "standardize", spy)
    summary = score_datalist(
        run, demo_cohort, tmp_path / "scores", sections=("test",), progress=False, save_maps=False
    )
    n_test = len(load_datalist(demo_cohort)["test"])
    assert summary is not None and len(used) == n_test
    assert all(u == pytest.approx(expected, abs=1e-12) for u in used)

    # the bundle carries the same mapping
    from mri_anomaly.bundle import write_bundle_metadata

    meta = json.loads(write_bundle_metadata(run, tmp_path / "metadata.json").read_text())
    assert meta["mri_anomaly"]["preprocessing"]["intensity"]["histogram_landmarks"] == pytest.approx(expected)


def test_resume_reuses_the_stored_landmarks_and_given_landmarks_are_used_as_given(
    demo_cohort, tmp_path, monkeypatch
):
    import mri_anomaly.training.trainer as trainer_module

    config = _run_config(
        "glow",
        model={"levels": 2, "steps": 1, "hidden_channels": 8},
        train={
            "batch_size": 2,
            "init_batches": 1,
            "log_every": 1,
            "phases": {"train": {"steps": 2, "lr": 1e-3}},
        },
    )
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(config, demo_cohort, run, max_steps=1, progress=False).fit()
        first = yaml.safe_load((run / "config.yaml").read_text())["preprocessing"]["intensity"][
            "histogram_landmarks"
        ]
        assert first is not None

        def refuse(*args, **kwargs):
            raise AssertionError("the landmarks were fitted again")

        monkeypatch.setattr(trainer_module, "fit_standard_landmarks", refuse)
        result = Trainer(config, demo_cohort, run, resume=True, progress=False).fit()
        assert result.completed and result.global_step == 2
        again = yaml.safe_load((run / "config.yaml").read_text())["preprocessing"]["intensity"][
            "histogram_landmarks"
        ]
        assert again == first
        # the exported program preprocesses with the stored landmarks: the numbers of `score`
        import mri_anomaly
        import pandas as pd
        from mri_anomaly.export import export_run
        from mri_anomaly.scoring.runner import score_datalist

        score_datalist(
            run, demo_cohort, tmp_path / "scores", sections=("test",), progress=False, save_maps=False
        )
        export_run(run, tmp_path / "model.pt2")
        scored = pd.read_csv(tmp_path / "scores" / "scores.csv")
        scorer = mri_anomaly.load_exported(tmp_path / "model.pt2")
        assert scorer.config_["preprocessing"]["intensity"]["histogram_landmarks"] == first
        table = scorer.score_table(list(scored["image"]))
        column = scorer.score_columns_[0]
        np.testing.assert_allclose(table[column].to_numpy(), scored[column].to_numpy(), rtol=1e-5)
        # a config that carries landmarks uses them as given (no fit either)
        given = [0.02 + 0.098 * k for k in range(11)]
        pre = {
            **config["preprocessing"],
            "intensity": {**config["preprocessing"]["intensity"], "histogram_landmarks": given},
        }
        Trainer(
            {**config, "preprocessing": pre}, demo_cohort, tmp_path / "given", max_steps=1, progress=False
        ).fit()
    saved = yaml.safe_load((tmp_path / "given" / "config.yaml").read_text())["preprocessing"]["intensity"]
    assert saved["histogram_landmarks"] == given


def test_a_training_section_without_healthy_scans_is_a_clear_error(demo_cohort, tmp_path):
    from mri_anomaly.errors import UserInputError

    data = load_datalist(demo_cohort)
    data["training"] = [{**it, "label": 1} for it in data["training"]]
    with pytest.raises(UserInputError, match="needs healthy scans"):
        Trainer(_run_config(), data, tmp_path / "run", progress=False).fit()
    assert not Path(tmp_path / "run" / "config.yaml").exists()
