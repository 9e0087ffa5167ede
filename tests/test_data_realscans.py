"""Real public MRI cases (../shared/data): preprocessing to the model grid and back without shifting masks.

MS patient07 FLAIR (LAS, 1 mm, brain-extracted), BRATS pat0001-0003 FLAIR (LPS, z-scored, negative
constant outside the brain: its brainmask is used), the ISLES'22 DWI case (LAS, 2 mm), IXI T1 (PSR,
uint8-scaled, whole head). Skipped with a reason when the folder is absent.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from mri_anomaly.data import PREPROCESSING_DEFAULTS, VolumeDataset, preprocessing, save_map_in_input_space
from scipy import ndimage

pytestmark = pytest.mark.realdata

MS = ("ms-lesjak2017-mni/patient07/FLAIR.nii.gz", "ms-lesjak2017-mni/patient07/lesion_consensus.nii.gz", None)
BRATS = [
    (
        f"brats2015-deepmedic/brats_2013_pat000{i}_1/Flair_subtrMeanDivStd.nii.gz",
        f"brats2015-deepmedic/brats_2013_pat000{i}_1/OTMultiClass.nii.gz",
        f"brats2015-deepmedic/brats_2013_pat000{i}_1/brainmask.nii.gz",
    )
    for i in (1, 2, 3)
]
ISLES = (
    "isles22-sample/sub-strokecase0009/sub-strokecase0009_ses-0001_dwi.nii.gz",
    "isles22-sample/sub-strokecase0009/sub-strokecase0009_ses-0001_msk.nii.gz",
    None,
)
CASES = {"ms07": MS, "brats1": BRATS[0], "brats2": BRATS[1], "brats3": BRATS[2], "isles": ISLES}


def _item(root, case):
    image, mask, brain = case
    item = {"image": str(root / image), "mask": str(root / mask)}
    if brain:
        item["brain_mask"] = str(root / brain)
    return item, ({"brain_mask_key": "brain_mask"} if brain else {})


def _centroid_mm(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(arr).mean(0))


def _best_shift(truth: np.ndarray, soft: np.ndarray, r: int = 1) -> tuple[int, int, int]:
    lo = np.maximum(np.argwhere(truth).min(0) - 8, 0)
    hi = np.argwhere(truth).max(0) + 9
    t = truth[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    g = soft[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    shifts = [(a, b, c) for a in range(-r, r + 1) for b in range(-r, r + 1) for c in range(-r, r + 1)]
    return max(shifts, key=lambda sh: (float((np.roll(t, sh, (0, 1, 2)) * g).sum()), sh == (0, 0, 0)))


def _dice(a, b):
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_grid_and_back_at_4mm(shared_data, tmp_path, name):
    item, extra = _item(shared_data, CASES[name])
    transform = preprocessing({**PREPROCESSING_DEFAULTS, **extra})
    out = transform(item)
    img, mask = out["image"], out["mask"]
    assert tuple(img.shape) == (1, 40, 48, 40) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1 and mask.sum() > 0
    brain = img > 0
    assert img[mask > 0.5].mean() > img[brain & (mask < 0.5)].mean()  # lesions are hyperintense (FLAIR, DWI)
    path = save_map_in_input_space(mask, out, tmp_path / f"{name}.nii.gz", transform)
    back, ref = nib.load(path), nib.load(item["mask"])
    assert back.shape == ref.shape[:3] and back.get_data_dtype() == np.float32
    assert np.allclose(back.affine, ref.affine, atol=1e-5)
    truth, soft = np.asarray(ref.dataobj) > 0.5, back.get_fdata()
    # no shift: of all shifts of the truth by up to 1 input voxel per axis, none overlaps the
    # written-back (soft) mask better than no shift at all
    assert _best_shift(truth, soft) == (0, 0, 0)
    if name.startswith("brats"):  # large tumours survive 4 mm voxels
        got = soft > 0.5
        assert _dice(got, truth) >= 0.9
        shift = np.linalg.norm(_centroid_mm(got, back.affine) - _centroid_mm(truth, ref.affine))
        assert shift < 1.0, shift


@pytest.mark.parametrize("name", ["ms07", "brats1", "isles"])
def test_native_spacing_round_trip_is_exact(shared_data, tmp_path, name):
    item, extra = _item(shared_data, CASES[name])
    transform = preprocessing({"spacing": None, "spatial_size": None, "divisible_by": 16, **extra})
    out = transform(item)
    assert all(s % 16 == 0 for s in out["image"].shape[1:])
    path = save_map_in_input_space(out["mask"], out, tmp_path / "m.nii.gz", transform)
    back, ref = nib.load(path), nib.load(item["mask"])
    assert np.allclose(back.affine, ref.affine, atol=1e-5)
    assert _dice(back.get_fdata() > 0.5, np.asarray(ref.dataobj) > 0.5) >= 0.99


def test_brats_brainmask_zeroes_the_negative_background(shared_data):
    item, extra = _item(shared_data, BRATS[0])
    out = preprocessing({**PREPROCESSING_DEFAULTS, **extra})(item)
    outside = out["brain_mask"] < 0.5
    assert out["image"][outside].abs().max() == 0  # the z-score constant became 0
    assert 0.2 < out["image"][~outside].mean() < 0.8


def test_ixi_whole_head_psr(shared_data, tmp_path):
    items = [{"image": str(p)} for p in sorted((shared_data / "ixi-t1-2mm-nichart").glob("*_T1.nii.gz"))]
    ds = VolumeDataset(items, cache="none")
    assert len(ds) == 2
    for i in range(2):
        d = ds[i]
        assert tuple(d["image"].shape) == (1, 40, 48, 40) and d["label"] == -1 and d["has_mask"] == 0
        assert d["subject_id"].startswith("IXI01")
        # RAS grid, and the head's intensity-weighted centroid is where the input file puts it (world mm)
        assert np.allclose(np.asarray(d["image"].affine)[:3, :3], np.diag([4.0, 4.0, 4.0]), atol=1e-4)
        ref = nib.load(items[i]["image"])
        raw = ref.get_fdata()
        c_in = nib.affines.apply_affine(ref.affine, np.array(ndimage.center_of_mass(np.clip(raw, 0, None))))
        x = d["image"][0].numpy()
        c_model = nib.affines.apply_affine(np.asarray(d["image"].affine), np.array(ndimage.center_of_mass(x)))
        assert np.linalg.norm(c_in - c_model) < 8.0, (c_in, c_model)
        path = save_map_in_input_space(d["image"], d, tmp_path / f"{i}.nii.gz", ds.transform)
        back, ref = nib.load(path), nib.load(items[i]["image"])
        assert nib.aff2axcodes(back.affine) == ("P", "S", "R") and back.shape == ref.shape
        assert np.allclose(back.affine, ref.affine, atol=1e-5)
        # the written-back image lines up with the input: strong correlation of head voxels
        a, b = back.get_fdata(), ref.get_fdata()
        head = b > np.percentile(b, 60)
        assert np.corrcoef(a[head], b[head])[0, 1] > 0.7
