"""Anti-aliasing before downsampling (data.antialias) and median-anchored intensity scaling (upper_value)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from mri_anomaly.data import ScaleIntensityInMask, preprocessing, validate_preprocessing_config
from mri_anomaly.data.antialias import AntiAlias, AntiAliasd, antialias_sigma


def test_sigma_by_hand():
    assert antialias_sigma([1, 1, 1], [4, 4, 4]) == pytest.approx([0.42 * np.sqrt(15)] * 3)
    assert antialias_sigma([1, 2, 4], [2, 2, 2]) == pytest.approx([0.42 * np.sqrt(3), 0.0, 0.0])


def test_same_or_coarser_input_is_untouched_and_metadata_kept():
    x = MetaTensor(torch.rand(1, 8, 8, 8), affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0])))
    assert AntiAlias([4, 4, 4])(x) is x
    fine = MetaTensor(torch.rand(2, 12, 12, 12), affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])))
    out = AntiAliasd("image", pixdim=[4, 4, 4])({"image": fine})["image"]
    assert isinstance(out, MetaTensor) and out.shape == fine.shape
    assert torch.equal(out.affine, fine.affine)
    with pytest.raises(TypeError, match="MetaTensor"):
        AntiAlias([4, 4, 4])(torch.rand(1, 4, 4, 4))


def test_impulse_becomes_the_gaussian_of_the_rule_per_axis():
    x = MetaTensor(torch.zeros(1, 21, 21, 21), affine=torch.diag(torch.tensor([1.0, 1.0, 4.0, 1.0])))
    x[0, 10, 10, 10] = 1.0
    y = AntiAlias([4, 4, 4])(x)[0].double()
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-3)  # a low-pass: the mean level is kept
    s = 0.42 * np.sqrt(15)
    profile = y[:, 10, 10].numpy() / float(y[:, 10, 10].sum())
    var = float((profile * (np.arange(21) - 10) ** 2).sum())
    assert var == pytest.approx(s**2, rel=0.05)  # the x axis: sigma of a 1 mm -> 4 mm step
    assert torch.allclose(
        y[10, 10, 9:12], torch.tensor([0.0, float(y[10, 10, 10]), 0.0], dtype=y.dtype)
    )  # z: 4 mm


def test_the_box_faces_keep_a_nonzero_background():
    """A z-scored scan's constant background (BRATS: -3.6) stays at its level up to the box's faces; with zero
    padding it rose towards 0 there. A scan with a zero background filters exactly as with zero padding."""
    from monai.networks.layers import GaussianFilter

    x = MetaTensor(torch.full((1, 16, 16, 16), -3.6), affine=torch.eye(4))
    y = AntiAlias([4, 4, 4])(x)
    assert torch.allclose(y.as_tensor(), torch.full((1, 16, 16, 16), -3.6), atol=1e-5)
    blob = torch.zeros(1, 32, 32, 32)
    blob[0, 10:22, 10:22, 10:22] = 1.0
    sigma = antialias_sigma([1, 1, 1], [4, 4, 4])
    zero_padded = GaussianFilter(spatial_dims=3, sigma=sigma, truncated=4.0)(blob[None])[0]
    assert torch.equal(AntiAlias([4, 4, 4])(MetaTensor(blob, affine=torch.eye(4))).as_tensor(), zero_padded)


def test_a_z_scored_scan_has_no_brain_at_the_box_faces(tmp_path):
    """A 1 mm scan z-scored in its brain (background -3.6, as BRATS) through the 4 mm preprocessing: the first and
    last axial slices, pure background, stay background (with the zero-padded low-pass they came out as all brain)."""
    rng = np.random.default_rng(0)
    arr = np.full((64, 64, 64), -3.6, np.float32)
    arr[16:48, 16:48, 16:48] = rng.standard_normal((32, 32, 32))
    path = _write(tmp_path / "zscored.nii.gz", arr, 1.0)
    x = preprocessing(
        {"spacing": [4, 4, 4], "spatial_size": [16, 16, 16], "crop_foreground": False}, ["image"]
    )({"image": path})["image"][0]
    fraction = (x > 0).float().mean(dim=(0, 1))
    assert float(fraction[0]) == 0.0 and float(fraction[-1]) == 0.0
    assert float(fraction[8]) == pytest.approx(
        0.25, abs=0.01
    )  # the brain is there, at its size (8 of 16 voxels)


def _write(path, arr, spacing):
    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return str(path)


def test_downsampled_noise_matches_a_4mm_acquisition_only_with_anti_aliasing(tmp_path):
    """1 mm white noise in a brain-like block, taken to 4 mm: without the low-pass every output voxel is one
    input sample (the noise passes at full strength); with it the noise drops to about that of a 4 mm voxel's
    average (64 samples: 1/8 of the s.d.); the mean level is unchanged."""
    rng = np.random.default_rng(0)
    arr = np.zeros((96, 96, 96), np.float32)
    arr[8:88, 8:88, 8:88] = 100 + 10 * rng.standard_normal((80, 80, 80))
    path = _write(tmp_path / "fine.nii.gz", arr, 1.0)
    cfg = {
        "spacing": [4, 4, 4],
        "spatial_size": [24, 24, 24],
        "intensity": {"clip": False, "lower": 0, "upper": 100},
    }
    inner = (slice(5, 19),) * 3

    def noise(anti_alias: bool) -> float:
        x = preprocessing({**cfg, "anti_alias": anti_alias}, keys=["image"])({"image": path})["image"][0]
        v = x[inner].numpy()
        return float(v.std() / v.mean())

    plain, filtered = noise(False), noise(True)
    assert plain > 0.08  # ~0.1 of 100 relative, after the 0-100 percentile scaling
    assert filtered < plain / 4


def test_upper_value_anchors_a_tissue_percentile_and_clips_at_1():
    """Tissue 100-200 in 3/4 of the brain, a lesion of 1000 in 1/4: the brain's median (tissue's 2/3 quantile,
    ~166.7) goes to 0.5, tissue's maximum to 0.5 * 100 / 66.7 = 0.75, the lesion saturates at 1."""
    x = torch.zeros(1, 10, 10, 10)
    x[0, 1:3, 1:9, 1:9] = 1000.0
    x[0, 3:9, 1:9, 1:9] = torch.linspace(100, 200, 384).reshape(6, 8, 8)
    mask = (x > 0).float()
    out = ScaleIntensityInMask(lower=0, upper=50, b_max=0.5, clip_max=1.0)(x, mask)
    tissue, lesion = out[(mask > 0.5) & (x < 999)], out[x > 999]
    assert float(out[mask > 0.5].median()) == pytest.approx(0.5, abs=0.01)
    assert float(tissue.min()) == pytest.approx(0.0, abs=0.01)
    assert float(tissue.max()) == pytest.approx(0.75, abs=0.01)
    assert torch.all(lesion == 1.0)
    with pytest.raises(ValueError, match="clip_max"):
        ScaleIntensityInMask(b_max=1.0, clip_max=0.5)
    assert any("upper_value" in p for p in validate_preprocessing_config({"intensity": {"upper_value": 0}}))
    assert any("anti_alias" in p for p in validate_preprocessing_config({"anti_alias": "yes"}))
