"""The demo cohort: determinism, layout and datalist, affines, anomaly kinds and masks, contrasts,
the MS-mask fallback, the model grid, and the demo-data command."""

from __future__ import annotations

import argparse
import csv
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mri_anomaly.data import (
    DEMO_PREPROCESSING,
    find_ms_lesion_dir,
    load_datalist,
    make_demo_cohort,
    preprocessing,
)
from mri_anomaly.data.commands import register_commands
from mri_anomaly.data.demo import SIZE_STRATA, demo_grid, size_stratum, synthesize_subject

SMALL = dict(healthy=4, anomalous=3, general=3, spacing=8.0)


def _arrays(datalist_path: Path) -> dict[str, np.ndarray]:
    out = {}
    for sec, items in load_datalist(datalist_path).items():
        for it in items:
            for k in ("image", "mask"):
                if k in it:
                    out[f"{it['subject_id']}:{k}"] = np.asarray(nib.load(it[k]).dataobj)
    return out


def _subjects(datalist_path: Path) -> dict[str, dict[str, str]]:
    with open(Path(datalist_path).parent / "subjects.csv") as f:
        return {r["subject_id"]: r for r in csv.DictReader(f)}


def test_same_seed_same_arrays_other_seed_different(demo_cohort, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = make_demo_cohort(tmp_path / "again", seed=0, **SMALL)
        other = make_demo_cohort(tmp_path / "other", seed=1, **SMALL)
    a, b, c = _arrays(demo_cohort), _arrays(again), _arrays(other)
    assert a.keys() == b.keys() == c.keys() and len(a) == 10 + 3
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not any(np.array_equal(a[k], c[k]) for k in a if k.endswith(":image"))
    strip = lambda p: json.loads(Path(p).read_text())  # noqa: E731
    assert strip(demo_cohort) == strip(again)  # relative paths: identical datalists


def test_datalist_sections_labels_and_masks(demo_cohort):
    dl = load_datalist(demo_cohort)  # validates: files exist, masks match their images' grid
    assert {k: len(v) for k, v in dl.items()} == {"training": 2, "validation": 1, "test": 4, "general": 3}
    assert all(it["label"] == 0 and "mask" not in it for s in ("training", "validation") for it in dl[s])
    test = dl["test"]
    assert sorted(it["label"] for it in test) == [0, 1, 1, 1]
    assert all(("mask" in it) == (it["label"] == 1) for it in test)
    assert all("label" not in it for it in dl["general"])
    raw = json.loads(Path(demo_cohort).read_text())
    assert raw["spacing_mm"] == 8.0 and raw["contrast"] == "flair"
    assert all(not it["image"].startswith("/") for it in raw["training"])


def test_affines_and_anatomy_in_mni_space(demo_cohort):
    shape, affine = demo_grid(8.0)
    for it in load_datalist(demo_cohort)["training"]:
        img = nib.load(it["image"])
        assert img.shape == shape and np.allclose(img.affine, affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        arr = np.asarray(img.dataobj)
        assert arr.dtype == np.float32 and arr.min() == 0.0 and np.isfinite(arr).all()
        centroid = nib.affines.apply_affine(img.affine, np.argwhere(arr > 0).mean(0))
        assert np.allclose(centroid, [0.0, -17.0, 5.0], atol=15.0)  # the MNI brain's centre
        assert 0.15 < (arr > 0).mean() < 0.6  # skull-stripped brain, zero background


def test_anomaly_kinds_masks_and_intensity(demo_cohort):
    subj = _subjects(demo_cohort)
    ms_present = find_ms_lesion_dir() is not None
    kinds = [subj[f"demo-anom-{i:03d}"]["lesion_kind"] for i in range(3)]
    assert kinds == (["ms", "tumour", "focal"] if ms_present else ["tumour", "focal", "tumour"])
    if ms_present:
        assert subj["demo-anom-000"]["ms_source"].startswith("patient")
        assert not subj["demo-anom-000"]["ms_source"].startswith("patient07")  # held out
    for it in load_datalist(demo_cohort)["test"]:
        if it["label"] != 1:
            continue
        img = np.asarray(nib.load(it["image"]).dataobj)
        mask = np.asarray(nib.load(it["mask"]).dataobj) > 0
        assert mask.sum() == int(subj[it["subject_id"]]["lesion_voxels"]) > 0
        # the stratification columns the report reads: measured volume (8 mm voxels) and its stratum
        volume = float(subj[it["subject_id"]]["lesion_volume_cm3"])
        assert volume == pytest.approx(mask.sum() * 8.0**3 / 1000.0)
        assert subj[it["subject_id"]]["size_stratum"] == size_stratum(volume)
        assert (img[mask] > 0).all()  # inside the brain
        # FLAIR: MS and focal lesions are brighter than the healthy brain, except focal lesions drawn with
        # the opposite sign (RandLesion's opposite_sign_prob), which are darker
        healthy_median = np.median(img[(img > 0) & ~mask])
        variant = subj[it["subject_id"]]["lesion_variant"]
        if variant in ("ms", "focal"):
            assert img[mask].mean() > healthy_median
        elif variant == "focal_opposite":
            assert img[mask].mean() < healthy_median


def test_size_strata_by_hand():
    assert list(SIZE_STRATA) == ["small", "medium", "large"]
    assert [size_stratum(v) for v in (0.0, 0.99, 1.0, 9.99, 10.0, 250.0)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
    with pytest.raises(ValueError, match=">= 0"):
        size_stratum(-1.0)


def test_lesion_size_targets_reach_their_strata():
    """At the demo's 4 mm, each kind's size settings put the lesion volume in the requested stratum."""
    for kind in ("tumour", "focal"):
        for i, stratum in enumerate(SIZE_STRATA):
            s = synthesize_subject(
                np.random.default_rng([7, i]), 4.0, "flair", lesion=kind, lesion_size=stratum
            )
            assert size_stratum(float(s["mask"].sum()) * 64 / 1000.0) == stratum, (kind, stratum)
    with pytest.raises(ValueError, match="lesion_size"):
        synthesize_subject(np.random.default_rng(0), 4.0, "flair", lesion="focal", lesion_size="huge")


def test_contrasts_from_tissue_maps_and_subject_variation():
    from scipy import ndimage

    t1 = synthesize_subject(np.random.default_rng(5), 4.0, "t1")["image"]
    t2 = synthesize_subject(np.random.default_rng(5), 4.0, "t2")["image"]
    fl = synthesize_subject(np.random.default_rng(5), 4.0, "flair")["image"]
    other = synthesize_subject(np.random.default_rng(6), 4.0, "t1")["image"]
    inner = ndimage.binary_erosion(t1 > 0, iterations=2)  # away from the partial-volume edge
    corr = lambda a, b: np.corrcoef(a[inner], b[inner])[0, 1]  # noqa: E731
    assert corr(t1, t2) < -0.5  # T2 inverts T1's CSF/WM contrast
    assert corr(t1, fl) > corr(t1, t2) + 0.5  # FLAIR: dark CSF, closer to T1 than T2 is
    both = (t1 > 0) & (other > 0)
    assert 0.3 < np.corrcoef(t1[both], other[both])[0, 1] < 0.999  # same anatomy, different subject
    assert not np.array_equal(t1 > 0, other > 0)  # deformed differently


def test_general_section_mixes_contrasts(demo_cohort):
    subj = _subjects(demo_cohort)
    assert {r["contrast"] for r in subj.values() if r["section"] == "general"} == {"t1", "t2", "flair"}
    assert {r["contrast"] for r in subj.values() if r["section"] != "general"} == {"flair"}


def test_fallback_without_ms_masks(tmp_path):
    with pytest.warns(UserWarning, match="MS lesion masks not found"):
        p = make_demo_cohort(
            tmp_path, seed=0, healthy=1, anomalous=2, general=0, spacing=8.0, ms_dir=tmp_path / "absent"
        )
    subj = _subjects(p)
    assert [subj[f"demo-anom-{i:03d}"]["lesion_kind"] for i in range(2)] == ["tumour", "focal"]
    assert set(load_datalist(p)) == {"training", "test"}


def test_default_spacing_fits_the_model_grid(tmp_path):
    transform = preprocessing(DEMO_PREPROCESSING, keys=("image",))
    for seed in range(3):
        s = synthesize_subject(np.random.default_rng(seed), 4.0, "flair")
        path = tmp_path / f"s{seed}.nii.gz"
        nib.save(nib.Nifti1Image(s["image"], s["affine"]), str(path))
        out = transform({"image": str(path)})["image"][0].numpy()
        assert out.shape == (40, 48, 40)
        # the whole brain fits: no brain voxel on any face of the model grid (nothing was cropped away)
        faces = [out[0], out[-1], out[:, 0], out[:, -1], out[..., 0], out[..., -1]]
        assert max(float(f.max()) for f in faces) == 0.0


def test_demo_data_command_and_montage(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_commands(parser.add_subparsers())
    args = parser.parse_args(
        [
            "demo-data",
            "--out",
            str(tmp_path / "d"),
            "--healthy",
            "3",
            "--anomalous",
            "2",
            "--general",
            "0",
            "--spacing",
            "8",
            "--contrast",
            "t2",
            "--quiet",
            "--montage",
            str(tmp_path / "m.png"),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert args.func(args) == 0
    dl = load_datalist(tmp_path / "d" / "datalist.json")
    assert {k: len(v) for k, v in dl.items()} == {"training": 1, "validation": 1, "test": 3}
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = parser.parse_args(["demo-data", "--out", str(tmp_path / "e"), "--healthy", "0"])
    assert args.func(args) == 2 and "healthy >= 1" in capsys.readouterr().err
