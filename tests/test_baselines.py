"""The baselines `intensity` and `normative` against hand-computed cases, and as trainer methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mri_anomaly.data import TINY_PREPROCESSING
from mri_anomaly.scoring.maps import map_region, map_volume_scores
from mri_anomaly.training import Trainer, validate_config
from mri_anomaly.training.methods import available_methods, get_method_class

pytestmark = pytest.mark.usefixtures("single_thread")


def _volume(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32)[None, None]  # (1, 1, *spatial)


def test_baselines_are_registered():
    assert {"intensity", "normative"} <= set(available_methods())


def _q999(out, name: str, image: torch.Tensor) -> float:
    """The volume score the scoring layer makes from a baseline's map (no erosion)."""
    return map_volume_scores({name: out.maps[name][0]}, map_region(image[0], (0, 0, 0)), n_top=1)[
        f"{name}_q999"
    ]


def test_intensity_map_and_quantiles_over_brain_by_hand():
    method = get_method_class("intensity")(spatial_dims=3)
    rng = np.random.default_rng(0)
    x = np.zeros((6, 6, 6))
    x[1:5, 1:5, 1:5] = rng.uniform(0.1, 1.0, (4, 4, 4))  # brain: 64 voxels > 0; the background is 0
    out = method.score({"image": _volume(x)})
    assert torch.equal(out.maps["intensity"], _volume(x))
    assert out.scores == {}  # its volume score is made from the map, as for every method
    brain = x[x > 0]
    assert _q999(out, "intensity", _volume(x)) == pytest.approx(np.quantile(brain, 0.999), rel=1e-6)
    # the background does not count: a huge box around the same brain gives the same score
    big = np.zeros((12, 12, 12))
    big[1:5, 1:5, 1:5] = x[1:5, 1:5, 1:5]
    out_big = method.score({"image": _volume(big)})
    assert _q999(out_big, "intensity", _volume(big)) == pytest.approx(np.quantile(brain, 0.999), rel=1e-6)


def test_normative_statistics_and_z_map_by_hand():
    method = get_method_class("normative")(spatial_dims=3, min_std=0.05)
    healthy = np.array([[1.0, 2.0], [1.2, 2.0], [0.7, 2.0], [1.1, 2.0]])  # 4 volumes of 2 x 1 x 1 voxels
    batches = [
        {"image": torch.as_tensor(healthy[i : i + 2], dtype=torch.float32).reshape(2, 1, 2, 1, 1)}
        for i in (0, 2)
    ]
    method.begin_phase("fit", batches)
    # voxel 0: values 0.7, 1.0, 1.1, 1.2 -> median 1.05; |dev| 0.35, 0.05, 0.05, 0.15 -> MAD 0.1 -> spread 0.14826
    # voxel 1: all 2.0 -> MAD 0 -> spread floored at min_std
    assert method.center.flatten().tolist() == pytest.approx([1.05, 2.0])
    assert method.spread.flatten().tolist() == pytest.approx([1.4826 * 0.1, 0.05], rel=1e-5)
    assert int(method.n_fitted) == 4
    test = torch.tensor([1.35, 1.9]).reshape(1, 1, 2, 1, 1)
    out = method.score({"image": test})
    expected = [abs(1.35 - 1.05) / (1.4826 * 0.1), abs(1.9 - 2.0) / 0.05]
    assert out.maps["abs_z"].flatten().tolist() == pytest.approx(expected, rel=1e-5)
    assert _q999(out, "abs_z", test) == pytest.approx(np.quantile(expected, 0.999), rel=1e-5)
    # fitted once: a second begin_phase (a resumed run) keeps the statistics
    method.begin_phase("fit", [{"image": torch.zeros(1, 1, 2, 1, 1)}])
    assert method.center.flatten().tolist() == pytest.approx([1.05, 2.0])
    # the statistics travel with the state dict, whatever the grid (the buffers take the saved shape)
    fresh = get_method_class("normative")(spatial_dims=3)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.score({"image": test}).maps["abs_z"], out.maps["abs_z"])


def test_normative_refuses_slices_other_grids_and_being_unfitted():
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        get_method_class("normative")(spatial_dims=2)
    with pytest.raises(ValueError, match="min_std"):
        get_method_class("normative")(spatial_dims=3, min_std=0)
    method = get_method_class("normative")(spatial_dims=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        method.score({"image": torch.ones(1, 1, 2, 2, 2)})
    with pytest.raises(ValueError, match="one fixed grid"):
        method.begin_phase(
            "fit", [{"image": torch.ones(1, 1, 2, 2, 2)}, {"image": torch.ones(1, 1, 3, 2, 2)}]
        )
    method.begin_phase("fit", [{"image": torch.ones(2, 1, 2, 2, 2)}])
    with pytest.raises(ValueError, match="differs from the normative model"):
        method.score({"image": torch.ones(1, 1, 3, 2, 2)})


def _baseline_config(method: str, steps: int = 0) -> dict:
    return validate_config(
        {
            "method": method,
            "spatial_dims": 3,
            "seed": 0,
            "preprocessing": dict(TINY_PREPROCESSING),
            "train": {"batch_size": 1, "init_batches": 1000, "phases": {"fit": {"steps": steps}}},
            "score": {"allow_few_calibration_scans": True},  # the tiny cohort has one validation scan
        }
    )


def test_normative_trains_on_every_training_volume_and_calibrates(demo_cohort, tmp_path):
    from mri_anomaly.data import VolumeDataset, load_datalist
    from mri_anomaly.runs import load_run

    result = Trainer(_baseline_config("normative"), demo_cohort, tmp_path / "run", progress=False).fit()
    assert result.completed and set(result.thresholds) == {"abs_z_q999", "abs_z_top200mm3"}
    method, config, _ = load_run(tmp_path / "run")
    items = load_datalist(demo_cohort)["training"]
    volumes = VolumeDataset(items, preprocessing_config=config["preprocessing"], cache="none")
    stack = torch.stack([torch.as_tensor(volumes[i]["image"]) for i in range(len(volumes))]).double()
    assert int(method.n_fitted) == len(items)
    assert np.allclose(method.center.double().numpy(), np.median(stack.numpy(), axis=0), atol=1e-6)


def test_fit_only_method_with_steps_is_a_clear_error(demo_cohort, tmp_path):
    with pytest.raises(ValueError, match=r"nothing to train in phase 'fit'.*steps to 0"):
        Trainer(_baseline_config("intensity", steps=2), demo_cohort, tmp_path / "run", progress=False).fit()


def test_normative_has_no_norm_outside_the_median_brain():
    """A voxel that is background in most training volumes (median 0) gets map 0, the least anomalous value."""
    method = get_method_class("normative")(spatial_dims=3, min_std=0.05)
    healthy = np.array([[1.0, 0.0], [1.2, 0.0], [0.7, 0.6], [1.1, 0.0]])  # voxel 1: brain in 1 of 4 volumes
    method.begin_phase(
        "fit", [{"image": torch.as_tensor(healthy, dtype=torch.float32).reshape(4, 1, 2, 1, 1)}]
    )
    assert method.center.flatten().tolist() == pytest.approx([1.05, 0.0])
    test = torch.tensor([1.35, 0.9]).reshape(1, 1, 2, 1, 1)  # a bigger brain reaches voxel 1
    out = method.score({"image": test})
    inside = abs(1.35 - 1.05) / (1.4826 * 0.1)
    assert out.maps["abs_z"].flatten().tolist() == pytest.approx(
        [inside, 0.0], rel=1e-5
    )  # not 0.9 / 0.05 = 18
    assert _q999(out, "abs_z", test) == pytest.approx(0.999 * inside, rel=1e-5)  # quantile of [0, inside]
