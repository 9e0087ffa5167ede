"""Bad input files: each case raises InputFileError naming the file; cohort runs record and go on."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from monai.data import DataLoader
from mri_anomaly.data import (
    InputFileError,
    VolumeDataset,
    collate_with_errors,
    load_volume,
    preprocessing,
    safe_load,
)
from mri_anomaly.data.phantom import write_phantom

CFG = {"spacing": [6, 6, 6], "spatial_size": [24, 32, 24], "divisible_by": 8}


def _save(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture
def bad_files(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.random((12, 12, 12)).astype(np.float32)
    files = {}
    files["ok"] = _save(tmp_path / "ok.nii.gz", good)
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = str(tmp_path / "truncated.nii.gz")
    (tmp_path / "corrupt.nii.gz").write_bytes(gzip.compress(b"this is not a nifti file at all" * 20))
    files["corrupt"] = str(tmp_path / "corrupt.nii.gz")
    files["4d"] = _save(tmp_path / "four_d.nii.gz", rng.random((12, 12, 12, 3)).astype(np.float32))
    files["2d"] = _save(tmp_path / "two_d.nii.gz", rng.random((12, 12)).astype(np.float32))
    nan = good.copy()
    nan[3, 3, 3] = np.nan
    files["nan"] = _save(tmp_path / "nan.nii.gz", nan)
    inf = good.copy()
    inf[1, 2, 3] = np.inf
    files["inf"] = _save(tmp_path / "inf.nii.gz", inf)
    files["constant"] = _save(tmp_path / "constant.nii.gz", np.full((12, 12, 12), 7.0, np.float32))
    files["missing"] = str(tmp_path / "missing.nii.gz")
    return files


EXPECTED = {
    "truncated": "truncated or corrupt",
    "corrupt": "cannot read",
    "4d": "expected a 3D volume, got 4D",
    "2d": "expected a 3D volume",
    "nan": "1 NaN, 0 Inf",
    "inf": "0 NaN, 1 Inf",
    "constant": "constant",
    "missing": "file not found",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_load_volume_names_file_and_problem(bad_files, case):
    with pytest.raises(InputFileError) as ei:
        load_volume(bad_files[case])
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.path == bad_files[case]
    assert str(err).startswith(bad_files[case] + ": ")
    assert EXPECTED[case] in str(err), str(err)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_preprocessing_chain_raises_unwrapped_error_from_dataset(bad_files, case):
    ds = VolumeDataset([{"image": bad_files[case]}], preprocessing_config=CFG, cache="none")
    with pytest.raises(InputFileError) as ei:
        ds[0]
    assert ei.value.path == bad_files[case]
    assert EXPECTED[case] in str(ei.value)


def test_good_file_and_empty_mask_load(bad_files, tmp_path):
    arr, aff = load_volume(bad_files["ok"])
    assert arr.shape == (12, 12, 12) and aff.shape == (4, 4)
    empty = _save(tmp_path / "empty_mask.nii.gz", np.zeros((12, 12, 12), np.uint8))
    m, _ = load_volume(empty, is_mask=True)  # masks may be empty
    assert m.sum() == 0
    # a singleton 4th axis is accepted as 3D
    s = _save(tmp_path / "single.nii.gz", np.random.default_rng(1).random((12, 12, 12, 1)).astype(np.float32))
    assert load_volume(s)[0].shape == (12, 12, 12)


def test_safe_load_returns_error_instead_of_raising(bad_files):
    transform = preprocessing(CFG, keys=("image",))
    item, err = safe_load(transform, {"image": bad_files["nan"]})
    assert item is None and isinstance(err, InputFileError) and err.path == bad_files["nan"]
    with pytest.raises(KeyError):  # other errors (bugs) still propagate
        safe_load(lambda d: d["nope"], {})


def test_cohort_run_records_failures_and_goes_on(bad_files, tmp_path):
    good = write_phantom(tmp_path / "ph", axcodes="LPS")
    items = [{"image": good["image"], "mask": good["mask"], "label": 1}] + [
        {"image": bad_files[c], "subject_id": c} for c in ("truncated", "4d", "missing")
    ]
    ds = VolumeDataset(items, preprocessing_config=CFG, cache="memory", on_error="return")
    assert ds.cache == "memory"
    errs = [ds[i] for i in range(1, 4)]
    assert [e["subject_id"] for e in errs] == ["truncated", "4d", "missing"]
    assert all(e["error"].startswith(e["error_path"]) for e in errs)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_with_errors)))
    assert tuple(batch["image"].shape) == (1, 1, 24, 32, 24)
    assert batch["label"].tolist() == [1]
    assert [e["subject_id"] for e in batch["errors"]] == ["truncated", "4d", "missing"]
    only_errors = collate_with_errors([errs[0]])
    assert set(only_errors) == {"errors"}
