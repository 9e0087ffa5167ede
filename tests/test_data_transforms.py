"""Transforms of mri_anomaly.data: loading checks, intensity scaling, the preprocessing chain
and its inversion back to the input grid and affine (on a phantom with known geometry)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from mri_anomaly.data import (
    DEMO_PREPROCESSING,
    PREPROCESSING_DEFAULTS,
    ScaleIntensityInMask,
    ScaleIntensityInMaskd,
    invert_to_input_space,
    preprocessing,
    save_map_in_input_space,
    validate_preprocessing_config,
)
from mri_anomaly.data.phantom import write_phantom


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_scale_intensity_in_mask_maps_brain_percentiles_to_0_1():
    x = torch.zeros(1, 10, 10, 10)
    x[0, 2:8, 2:8, 2:8] = torch.linspace(100, 200, 216).reshape(6, 6, 6)
    mask = (x > 0).float()
    x[0, 0, 0, 0] = -50.0  # outside the mask: must not influence the percentiles
    out = ScaleIntensityInMask(lower=0, upper=100)(x, mask)
    assert out[0, 2, 2, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, 7, 7, 7].item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 0, 0, 0].item() == 0.0  # zeroed outside the given mask
    # without a mask, the estimated foreground excludes the zero background
    out2 = ScaleIntensityInMask(lower=0, upper=100)(torch.where(x < 0, torch.zeros_like(x), x))
    assert out2[0, 2, 2, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert out2.max().item() == pytest.approx(1.0)


def test_scale_intensity_keeps_metatensor_and_dict_twin_uses_mask_key():
    x = MetaTensor(torch.rand(1, 6, 6, 6) * 100 + 1, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    d = ScaleIntensityInMaskd("image", mask_key="brain", lower=1, upper=99)(
        {"image": x, "brain": torch.ones_like(x)}
    )
    assert isinstance(d["image"], MetaTensor)
    assert torch.equal(d["image"].affine, x.affine)
    assert 0.0 <= d["image"].min().item() and d["image"].max().item() <= 1.0
    with pytest.raises(KeyError, match="brain"):
        ScaleIntensityInMaskd("image", mask_key="brain")({"image": x})


def test_validate_preprocessing_config_lists_every_problem():
    assert validate_preprocessing_config(PREPROCESSING_DEFAULTS) == []
    assert validate_preprocessing_config(DEMO_PREPROCESSING) == []
    assert validate_preprocessing_config(None) == []
    probs = validate_preprocessing_config(
        {
            "spacing": [4, -1, 4],
            "orientation": "RAX",
            "intensity": {"lower": 99, "upper": 1, "bogus": 1},
            "spatial_size": [40, 44, 40],
            "divisible_by": 8,
            "colour": "red",
        }
    )
    text = "\n".join(probs)
    assert len(probs) == 6, probs
    for needle in (
        "spacing",
        "orientation",
        "lower < upper",
        "bogus",
        "not divisible by divisible_by=8",
        "'colour'",
    ):
        assert needle in text
    assert any("axial axis" in p for p in validate_preprocessing_config({"orientation": "RSA"}))
    with pytest.raises(ValueError, match="spatial_size"):
        preprocessing({"spatial_size": [30, 30, 30]})


@pytest.mark.parametrize("axcodes", ["LPS", "PSR", "RAS"])
def test_preprocessing_reaches_model_grid_in_ras(tmp_path, axcodes):
    files = write_phantom(tmp_path, axcodes=axcodes)
    cfg = {"spacing": [4, 4, 4], "spatial_size": [32, 40, 32], "divisible_by": 8}
    out = preprocessing(cfg)({"image": files["image"], "mask": files["mask"]})
    img, mask = out["image"], out["mask"]
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    assert tuple(img.shape) == (1, 32, 40, 32) and tuple(mask.shape) == (1, 32, 40, 32)
    assert 0.0 <= img.min().item() and img.max().item() == pytest.approx(1.0)
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    # RAS: the affine's direction part is a positive diagonal of 4 mm
    assert np.allclose(np.asarray(img.affine)[:3, :3], np.diag([4.0, 4.0, 4.0]), atol=1e-4)
    # the lesion (world centre (20, 10, 8) mm) sits where the affine says it does
    idx = np.argwhere(mask[0].numpy() > 0.5).mean(0)
    world = np.asarray(img.affine) @ np.r_[idx, 1.0]
    assert np.allclose(world[:3], [20.0, 10.0, 8.0], atol=2.5)
    # lesion is bright in the image
    assert img[mask > 0.5].mean().item() > 0.9


def test_in_memory_volumes_preprocess_like_their_files(tmp_path):
    """A volume given as a tensor (no channel) is spatial in all three axes: MONAI's MetaTensor would count its
    first axis as a channel and give two spacings, which the anti-aliasing filter cannot use."""
    files = write_phantom(tmp_path, axcodes="RAS")
    cfg = {"spacing": [4, 4, 4], "spatial_size": [32, 40, 32], "divisible_by": 8}
    from_file = preprocessing(cfg)({"image": files["image"]})["image"]
    nii = nib.load(files["image"])
    voxels = torch.as_tensor(np.asarray(nii.dataobj, dtype=np.float32))
    in_memory = preprocessing(cfg)({"image": MetaTensor(voxels, affine=torch.as_tensor(nii.affine))})["image"]
    assert torch.equal(in_memory.as_tensor(), from_file.as_tensor())
    assert np.allclose(np.asarray(in_memory.affine), np.asarray(from_file.affine))
    bare = preprocessing(cfg)({"image": voxels})["image"]  # no affine: 1 mm voxels
    assert tuple(bare.shape) == (1, 32, 40, 32) and len(bare.pixdim) == 3


@pytest.mark.parametrize("axcodes", ["LPS", "PSR"])
def test_inversion_restores_input_grid_affine_and_mask(tmp_path, axcodes):
    files = write_phantom(tmp_path, axcodes=axcodes)
    transform = preprocessing({"spacing": [4, 4, 4], "spatial_size": [32, 40, 32], "divisible_by": 8})
    item = transform({"image": files["image"], "mask": files["mask"]})
    inv = invert_to_input_space(item["mask"], item, transform)
    ref = nib.load(files["mask"])
    assert tuple(inv.shape[1:]) == ref.shape
    assert np.allclose(np.asarray(inv.affine), ref.affine, atol=1e-4)
    path = save_map_in_input_space(item["mask"], item, tmp_path / "out" / "map.nii.gz", transform)
    back = nib.load(path)
    assert back.get_data_dtype() == np.float32
    assert back.shape == ref.shape
    assert np.allclose(back.affine, ref.affine, atol=1e-5)
    truth = np.asarray(ref.dataobj) > 0.5
    dice = _dice(back.get_fdata() > 0.5, truth)
    assert dice >= 0.85, dice  # 3x3x4 mm -> 4 mm -> back: only resampling loss, no shift
    # at the input's own spacing the round trip is (almost) exact
    native = preprocessing({"spacing": None, "spatial_size": [64, 64, 48], "divisible_by": 8})
    it2 = native({"image": files["image"], "mask": files["mask"]})
    back2 = invert_to_input_space(it2["mask"], it2, native)[0].numpy() > 0.5
    assert _dice(back2, truth) >= 0.99


def test_inversion_rejects_wrong_shapes_and_raw_items(tmp_path):
    files = write_phantom(tmp_path)
    transform = preprocessing({"spacing": [4, 4, 4], "spatial_size": [32, 40, 32]})
    item = transform({"image": files["image"]})
    with pytest.raises(ValueError, match="does not match the model grid"):
        invert_to_input_space(torch.zeros(1, 8, 8, 8), item, transform)
    with pytest.raises(ValueError, match="applied_operations"):
        invert_to_input_space(torch.zeros(1, 32, 40, 32), {"image": torch.zeros(1, 32, 40, 32)}, transform)


def test_brain_mask_key_drives_scaling_and_crop(tmp_path):
    files = write_phantom(tmp_path, axcodes="LPS")
    # replace the background by a BRATS-like negative constant: with the brain mask it becomes 0
    img = nib.load(files["image"])
    brain = np.asarray(nib.load(files["brain_mask"]).dataobj) > 0
    arr = np.where(brain, img.get_fdata(), -1.7).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, img.affine), files["image"])
    cfg = {"spacing": [4, 4, 4], "spatial_size": [32, 40, 32], "brain_mask_key": "brain_mask"}
    out = preprocessing(cfg)({"image": files["image"], "brain_mask": files["brain_mask"]})
    x, b = out["image"], out["brain_mask"]
    assert x[b < 0.5].abs().max().item() == 0.0
    assert x[b > 0.5].mean().item() > 0.3


# ------------------------------------------------------------------------------------------ grid crop warning (issue 13)
def _box_volume(path, size: int, box: int) -> str:
    """A ``size``^3 volume at 4 mm whose foreground is a centred ``box``^3 cube of varied intensities."""
    rng = np.random.default_rng(0)
    arr = np.zeros((size, size, size), np.float32)
    lo = (size - box) // 2
    arr[lo : lo + box, lo : lo + box, lo : lo + box] = rng.uniform(100, 200, (box, box, box))
    nib.save(nib.Nifti1Image(arr, np.diag([4.0, 4.0, 4.0, 1.0])), str(path))
    return str(path)


def test_cropped_foreground_fraction_by_hand():
    from mri_anomaly.data.preprocessing import cropped_foreground_fraction

    fg = torch.zeros(1, 10, 4, 4)
    fg[0, :, 1:3, 1:3] = 1.0  # 40 voxels along x
    assert cropped_foreground_fraction(fg, [6, 4, 4]) == pytest.approx(0.4)  # x 2..8 kept: 24 of 40
    assert cropped_foreground_fraction(fg, [10, 8, 8]) == 0.0
    assert cropped_foreground_fraction(torch.zeros(1, 10, 4, 4), [6, 4, 4]) == 0.0


def test_a_grid_that_crops_the_foreground_warns_with_the_file_and_keeps_the_arrays(tmp_path):
    from monai.transforms import Compose
    from mri_anomaly.data.preprocessing import GridCropWarning, WarnGridCropd

    path = _box_volume(tmp_path / "big_head.nii.gz", size=40, box=30)
    config = {**DEMO_PREPROCESSING, "spatial_size": [16, 24, 32], "crop_margin": 0}
    chain = preprocessing(config, keys=("image",))
    with pytest.warns(GridCropWarning) as caught:
        out = chain({"image": path})
    message = str(caught[0].message)
    # foreground box 30^3 cropped to 16 x 24 x 30: 1 - (16 * 24 * 30) / 30**3 lost
    assert message.startswith(
        f"{path}: the model grid [16, 24, 32] crops {100 * (1 - 16 * 24 / 900):.1f}% of the foreground"
    )
    from mri_anomaly.data.preprocessing import CROP_FRACTION_KEY

    assert out[CROP_FRACTION_KEY] == pytest.approx(1 - 16 * 24 / 900, abs=1e-3)  # recorded for scores.csv
    plain = Compose([t for t in chain.transforms if not isinstance(t, WarnGridCropd)])
    reference = plain({"image": path})["image"]
    np.testing.assert_array_equal(out["image"].numpy(), reference.numpy())
    np.testing.assert_array_equal(np.asarray(out["image"].affine), np.asarray(reference.affine))
    assert [op["class"] for op in out["image"].applied_operations] == [
        op["class"] for op in reference.applied_operations
    ]
    # a grid that holds the whole foreground: silent
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", GridCropWarning)
        whole = preprocessing({**config, "spatial_size": [32, 32, 32]}, keys=("image",))({"image": path})
    assert whole[CROP_FRACTION_KEY] == 0.0


def test_foreground_ignores_a_few_negative_ringing_voxels():
    """Skull-stripped, resampled scans carry a few negative voxels at the brain's edge: the zero background
    must stay background (with the minimum as the background level the whole box was foreground)."""
    from mri_anomaly.data.intensity import estimate_foreground

    img = torch.zeros(40, 40, 40)
    img[10:30, 10:30, 10:30] = 100.0  # brain: 12.5 % of the box
    img[9, 10:12, 10:20] = -20.0  # 20 ringing voxels (0.03 %)
    fg = estimate_foreground(img)
    assert bool(fg[10:30, 10:30, 10:30].all()) and int(fg.sum()) == 20**3


def _sphere_with_a_dark_surface(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1 mm 'brain' (sphere, tissue 100 +- 10) whose outer 3 mm are dark (15 +- 3, FLAIR's suppressed CSF), in a
    zero background; and its mask."""
    rng = np.random.default_rng(seed)
    r = np.sqrt(((np.mgrid[:n, :n, :n] - (n - 1) / 2.0) ** 2).sum(0))
    brain = r < 0.375 * n
    img = np.zeros((n, n, n), np.float32)
    img[brain] = 100 + 10 * rng.standard_normal(int(brain.sum()))
    surface = brain & (r > 0.375 * n - 3)
    img[surface] = 15 + 3 * rng.standard_normal(int(surface.sum()))
    return img, brain.astype(np.float32)


def test_the_estimated_brain_on_a_coarser_grid_is_the_voxels_mostly_brain(tmp_path):
    """1 mm -> 4 mm without a brain mask: the scan's brain on the grid (voxels > 0) is its own mask taken through
    the chain as a mask (voxels mostly brain), less the few dark partial-volume voxels the 1st-percentile floor
    clips. Estimated on the low-passed grid instead, it reached voxels a few percent brain: 6 % beyond the mask."""
    img, brain = _sphere_with_a_dark_surface(64)
    paths = {}
    for key, arr in (("image", img), ("mask", brain)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(arr, np.eye(4)), paths[key])
    out = preprocessing({"spacing": [4, 4, 4], "spatial_size": [16, 16, 16]}, keys=["image", "mask"])(paths)
    assert sorted(map(str, out)) == [
        "cropped_foreground_fraction",
        "image",
        "mask",
    ]  # the estimate is dropped
    scored, mask = out["image"][0] > 0, out["mask"][0] > 0.5
    assert int((scored & ~mask).sum()) == 0
    assert int((mask & ~scored).sum()) <= 0.02 * int(mask.sum())


def test_at_the_input_spacing_the_estimate_is_the_foreground_of_the_grid(tmp_path):
    """A scan already at the model's spacing (the demo's 4 mm) is scaled exactly as in its estimated foreground
    on the grid, and nothing outside that foreground is above 0."""
    from mri_anomaly.data.intensity import estimate_foreground

    img, _ = _sphere_with_a_dark_surface(24, seed=1)
    path = str(tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(img, np.diag([4.0, 4.0, 4.0, 1.0])), path)
    cfg = {"spacing": [4, 4, 4], "spatial_size": [24, 24, 24], "crop_foreground": False}
    out = preprocessing(cfg, keys=["image"])({"image": path})["image"]
    x = torch.from_numpy(img)[None]
    expected = ScaleIntensityInMask(lower=1.0, upper=50.0, b_max=0.5, clip_max=1.0, zero_outside=False)(x)
    assert torch.equal(out.as_tensor(), expected)
    assert not bool((out.as_tensor() > 0)[~estimate_foreground(x)].any())
