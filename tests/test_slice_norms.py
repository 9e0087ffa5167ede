"""Slice scores standardised per slice position, brain-only statistics, and their use in scoring."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from mri_anomaly.data import TINY_PREPROCESSING, load_datalist
from mri_anomaly.scoring.brain import brain_mask, brain_mean, brain_quantile
from mri_anomaly.scoring.slice_norms import fit_slice_norms, standardise_slice_scores
from mri_anomaly.training import Trainer, validate_config

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fit_and_standardise_by_hand():
    volumes = [{"s": [1.0, 10.0, 5.0]}, {"s": [2.0, 10.0, 7.0]}, {"s": [4.0, 10.0, 6.0]}]
    norms = fit_slice_norms(volumes, floor_fraction=0.1)
    column = norms["columns"]["s"]
    # position 0: 1, 2, 4 -> median 2, |dev| 1, 0, 2 -> MAD 1; position 2: 5, 7, 6 -> median 6, MAD 1
    # position 1: constant -> MAD 0 -> floor = 0.1 * median(1.4826, 1.4826) (the positive scales)
    assert column["center"] == pytest.approx([2.0, 10.0, 6.0])
    assert column["scale"] == pytest.approx([1.4826, 0.14826, 1.4826])
    assert norms["n_volumes"] == 3 and norms["depth"] == 3
    z = standardise_slice_scores(
        {"s": torch.tensor([3.4826, 10.14826, 6.0]), "other": torch.tensor([7.0])}, norms
    )
    assert z["s"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert z["other"].tolist() == [7.0]  # a column without norms stays raw
    assert standardise_slice_scores({"s": torch.tensor([1.0])}, None)["s"].tolist() == [1.0]
    with pytest.raises(ValueError, match="not on the run's grid"):
        standardise_slice_scores({"s": torch.tensor([1.0, 2.0])}, norms)
    with pytest.raises(ValueError, match="one fixed grid"):
        fit_slice_norms([{"s": [1.0, 2.0]}, {"s": [1.0]}])
    with pytest.raises(ValueError, match="no healthy volumes"):
        fit_slice_norms([])


def test_brain_fraction_covariate_removes_a_size_trend():
    """A score that rises with the slice's brain fraction at every position loses that trend once the norms
    condition on the brain fraction; norms by position alone keep it."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)

    def volumes(n):
        base = np.linspace(0.05, 0.6, 12)  # typical brain fraction per position
        f = np.clip(base + rng.normal(0, 0.05, (n, 12)), 0.01, 1)
        s = (
            3.0 * np.arange(12) + 4.0 * f + rng.normal(0, 0.05, (n, 12))
        )  # position effect + size effect + noise
        return [{"s": row} for row in s], list(f)

    fit_scores, fit_fractions = volumes(40)
    test_scores, test_fractions = volumes(40)
    with_covariate = fit_slice_norms(fit_scores, fit_fractions)
    by_position = fit_slice_norms(fit_scores)
    assert np.mean(with_covariate["columns"]["s"]["slope"]) == pytest.approx(4.0, rel=0.15)
    assert by_position["columns"]["s"]["slope"] == [0.0] * 12 and by_position["brain_fraction_center"] is None

    def rho(norms):
        z = [
            standardise_slice_scores({"s": torch.tensor(v["s"])}, norms, torch.tensor(f))["s"].numpy()
            for v, f in zip(test_scores, test_fractions)
        ]
        return spearmanr(np.concatenate(z), np.concatenate(test_fractions)).statistic

    assert rho(by_position) > 0.2 and abs(rho(with_covariate)) < 0.1
    with pytest.raises(ValueError, match="brain fraction"):
        standardise_slice_scores({"s": torch.tensor(test_scores[0]["s"])}, with_covariate)

    # a read-only stored profile (a memory-mapped array) standardises as its tensor does, without torch's
    # "non-writable" warning
    read_only = np.array(test_fractions[0])
    read_only.setflags(write=False)
    scores = {"s": torch.tensor(test_scores[0]["s"])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_array = standardise_slice_scores(scores, with_covariate, read_only)["s"]
    from_tensor = standardise_slice_scores(scores, with_covariate, torch.tensor(test_fractions[0]))["s"]
    assert torch.equal(from_array, from_tensor)
    # scores and profiles as MONAI MetaTensors (what scoring passes), without NumPy 2's DeprecationWarning about
    # the __array__ MetaTensor inherits
    from monai.data import MetaTensor

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_meta = standardise_slice_scores(
            {"s": MetaTensor(scores["s"])}, with_covariate, MetaTensor(torch.tensor(test_fractions[0]))
        )["s"]
        refit = fit_slice_norms([{"s": MetaTensor(torch.tensor(v["s"]))} for v in fit_scores])
    assert torch.equal(torch.as_tensor(from_meta), from_tensor) and refit == by_position


def test_brain_statistics_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]]).reshape(1, 1, 4)
    image = torch.tensor([[0.5, 0.2, 0.9, 0.0]]).reshape(1, 1, 4)  # the last voxel is background
    mask = brain_mask(image)
    assert mask.flatten().tolist() == [True, True, True, False]
    assert brain_mean(values, mask).item() == pytest.approx(2.0)
    assert brain_quantile(values, mask, 0.5).item() == pytest.approx(2.0)
    # no brain voxel: all voxels count
    assert brain_mean(values, torch.zeros_like(mask)).item() == pytest.approx(26.5)


def _glow2d_config() -> dict:
    return validate_config(
        {
            "method": "glow",
            "spatial_dims": 2,
            "seed": 0,
            "preprocessing": dict(TINY_PREPROCESSING),
            "slices": {"min_brain_fraction": 0.1},
            "model": {"levels": 2, "steps": 1, "hidden_channels": 8},
            "train": {"batch_size": 4, "init_batches": 1, "phases": {"train": {"steps": 2}}},
            "score": {"top_k": 3},
        }
    )


@pytest.mark.slow
def test_glow_scores_are_brain_means_of_their_maps(demo_cohort, tmp_path):
    from mri_anomaly.runs import load_run

    Trainer(_glow2d_config(), demo_cohort, tmp_path / "run", progress=False).fit()
    method, _, _ = load_run(tmp_path / "run")
    x = torch.rand(2, 1, 24, 24) * 0.8 + 0.1
    x[:, :, :, 12:] = 0.0  # half of each slice is background
    out = method.score({"image": x})
    brain = x > 0
    for score, map_name in (("nll_bpd", "nll"), ("final_scale", "final_scale")):
        expected = torch.stack([out.maps[map_name][i][brain[i]].mean() for i in range(2)])
        assert torch.allclose(out.scores[score], expected, rtol=1e-5)
        whole = out.maps[map_name].mean(dim=(1, 2, 3))
        assert not torch.allclose(out.scores[score], whole, rtol=1e-3)  # the background would change it


@pytest.mark.slow
def test_calibration_stores_norms_and_scoring_applies_them(demo_cohort, tmp_path):
    from mri_anomaly.data import VolumeDataset
    from mri_anomaly.runs import load_run
    from mri_anomaly.scoring.runner import score_datalist
    from mri_anomaly.scoring.volume import score_volume

    Trainer(_glow2d_config(), demo_cohort, tmp_path / "run", progress=False).fit()
    stored = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    norms = stored["slice_norms"]
    assert set(norms["columns"]) == {
        "nll_bpd",
        "final_scale",
        "nll_slice_top200mm3",
        "final_scale_slice_top200mm3",
    }
    assert norms["depth"] == 24
    # the norms are the robust statistics of the raw validation slice scores
    method, config, _ = load_run(tmp_path / "run")
    items = load_datalist(demo_cohort)["validation"]
    volumes = VolumeDataset(items, preprocessing_config=config["preprocessing"], cache="none")
    raw = [score_volume(method, config, volumes[i], want_maps=False) for i in range(len(volumes))]
    assert norms["n_volumes"] == len(raw)
    from mri_anomaly.data import slice_brain_fractions

    fractions = [slice_brain_fractions(torch.as_tensor(volumes[i]["image"])) for i in range(len(volumes))]
    refit = fit_slice_norms(
        [r.raw_slice_scores for r in raw], fractions, counted=[f >= 0.1 for f in fractions]
    )
    for column in ("nll_bpd", "final_scale", "nll_slice_top200mm3"):
        assert norms["columns"][column]["center"] == pytest.approx(
            refit["columns"][column]["center"], rel=1e-9
        )
        assert norms["columns"][column]["scale"] == pytest.approx(refit["columns"][column]["scale"], rel=1e-9)
        assert norms["columns"][column]["slope"] == pytest.approx(
            refit["columns"][column]["slope"], rel=1e-9, abs=1e-12
        )
    # score writes the standardised slice scores, and the 2D volume scores aggregate them
    score_datalist(
        tmp_path / "run", demo_cohort, tmp_path / "scores", sections=("validation", "test"), progress=False
    )
    import pandas as pd

    slices = pd.read_csv(tmp_path / "scores" / "slice_scores.csv")
    volumes_table = pd.read_csv(tmp_path / "scores" / "scores.csv")
    meta = json.loads((tmp_path / "scores" / "score_meta.json").read_text())
    assert meta["slice_standardisation"]
    first = raw[0]
    expected = standardise_slice_scores(first.raw_slice_scores, norms, fractions[0])
    rows = slices[
        (slices["section"] == "validation") & (slices["subject_id"] == items[0]["subject_id"])
    ].sort_values("slice")
    assert rows["nll_bpd"].to_numpy() == pytest.approx(expected["nll_bpd"].numpy(), rel=1e-6, abs=1e-9)
    counted = rows["counted"].to_numpy() == 1
    row = volumes_table[volumes_table["subject_id"] == items[0]["subject_id"]].iloc[0]
    assert row["nll_bpd_max"] == pytest.approx(float(np.max(expected["nll_bpd"].numpy()[counted])), rel=1e-6)
    # a recalibration of the thresholds alone keeps the norms
    from mri_anomaly.evaluation.thresholds import calibrate_thresholds, save_thresholds

    save_thresholds(tmp_path / "run", calibrate_thresholds({"nll_bpd_max": [1.0, 2.0]}, 0.95))
    assert json.loads((tmp_path / "run" / "thresholds.json").read_text())["slice_norms"] == norms


def test_norms_of_map_profiles_made_another_way_are_refused(tmp_path):
    from mri_anomaly.errors import UserInputError
    from mri_anomaly.scoring.slice_norms import check_map_profile

    scores = [{"llr": torch.arange(4.0) + i, "llr_slice_q99": torch.arange(4.0) * i} for i in range(3)]
    norms = fit_slice_norms(scores)
    check_map_profile(norms, "run")  # fitted now: accepted
    old = {k: v for k, v in norms.items() if k != "map_profile"}  # fitted before map profiles used the region
    with pytest.raises(UserInputError, match=r"run: .*predate.*llr_slice_q99.*recalibrate"):
        check_map_profile(old, "run")
    # norms without any map profile column are not affected
    check_map_profile({**old, "columns": {"llr": old["columns"]["llr"]}}, "run")
    # norms fitted on the q99 profiles, current otherwise, meet a run that makes top200mm3 profiles: refused,
    # where standardise_slice_scores would leave those columns raw
    check_map_profile(norms, "run", ["llr", "llr_slice_q99"])
    with pytest.raises(UserInputError, match=r"run: .*predate.*llr_slice_top200mm3.*recalibrate"):
        check_map_profile(norms, "run", ["llr", "llr_slice_top200mm3"])
    # a run directory whose stored norms are old: refused when scoring loads them
    from mri_anomaly.runs import run_slice_norms

    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {}, "slice_norms": old}))
    with pytest.raises(UserInputError, match=str(tmp_path)):
        run_slice_norms(tmp_path, {})
