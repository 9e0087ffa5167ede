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
from mri_anomaly.errors import UserInputError

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


def test_worker_processes_write_the_same_cohort(demo_cohort, tmp_path, monkeypatch):
    import mri_anomaly.data.demo as demo

    monkeypatch.setattr(demo, "MIN_SUBJECTS_FOR_WORKERS", 0)  # spawn workers even for 10 subjects
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parallel = make_demo_cohort(tmp_path / "parallel", seed=0, workers=2, **SMALL)
    a, b = _arrays(demo_cohort), _arrays(parallel)
    assert a.keys() == b.keys() and len(a) == 10 + 3
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert json.loads(Path(parallel).read_text()) == json.loads(Path(demo_cohort).read_text())
    assert _subjects(parallel) == _subjects(demo_cohort)


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
    assert json.loads((tmp_path / "d" / "cohort.json").read_text())["anatomy"].startswith("individual")
    smooth = [
        "demo-data",
        "--out",
        str(tmp_path / "s"),
        "--healthy",
        "3",
        "--anomalous",
        "0",
        "--general",
        "0",
    ]
    args = parser.parse_args([*smooth, "--spacing", "8", "--quiet", "--smooth-anatomy"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "s" / "cohort.json").read_text())["anatomy"] == "smooth template"
    args = parser.parse_args(["demo-data", "--out", str(tmp_path / "e"), "--healthy", "0"])
    assert args.func(args) == 2 and "healthy >= 1" in capsys.readouterr().err


def test_periventricular_weight_caps_the_lateral_ventricles():
    from mri_anomaly.data.demo import _template
    from scipy import ndimage

    tpl = _template(4.0)  # 2 mm template arrays
    pv, brain, csf = tpl["pv"], tpl["brain"] > 0.5, tpl["csf"]
    assert pv.min() >= 0 and 0.2 < pv.max() <= 1
    # the signal hugs the deep CSF: the heaviest voxels lie within 8 mm of CSF that is > 7 mm inside the brain
    depth = ndimage.distance_transform_edt(brain) * 2.0
    near = ndimage.distance_transform_edt(~((csf > 0.4) & (depth > 7))) * 2.0 <= 8
    heavy = pv > 0.5 * pv.max()
    assert heavy.sum() > 20 and near[heavy].all()
    assert pv[brain & (depth <= 6)].max() < 0.05 * pv.max()  # nothing at the cortex
    # caps: at the frontal and occipital ends of the band (along y) the weight is larger than at its middle
    ys = np.nonzero(pv > 0.05)[1]
    quarter, mid = (ys.max() - ys.min()) // 4, (ys.min() + ys.max()) // 2
    middle = pv[:, mid - 2 : mid + 3].max()
    assert pv[:, ys.min() : ys.min() + quarter].max() > 1.5 * middle
    assert pv[:, ys.max() - quarter : ys.max() + 1].max() > 1.5 * middle


def test_texture_keeps_brain_fraction_and_pure_tissue_and_varies_the_mixtures():
    from mri_anomaly.data.demo import _texture

    rng = np.random.default_rng(0)
    shape = (20, 22, 24)
    gm = np.zeros(shape, np.float32)
    wm = np.zeros(shape, np.float32)
    csf = np.zeros(shape, np.float32)
    wm[:10] = 1.0  # pure white matter
    gm[10:], csf[10:] = 0.6, 0.3  # a mixture (cortex), brain fraction 0.9
    tissues = {"gm": gm.copy(), "wm": wm.copy(), "csf": csf.copy()}
    _texture(rng, tissues, 0.4, 1.0)
    total = tissues["gm"] + tissues["wm"] + tissues["csf"]
    np.testing.assert_allclose(total, gm + wm + csf, atol=1e-5)
    np.testing.assert_allclose(tissues["wm"][:10], 1.0, atol=1e-6)
    assert tissues["gm"][:10].max() == 0 and tissues["csf"][:10].max() == 0
    mixed = tissues["gm"][10:]
    assert (
        0.03 < mixed.std() < 0.2 and abs(mixed.mean() - 0.6) < 0.05
    )  # varies around the template's fraction


def test_periventricular_signal_and_smooth_anatomy(tmp_path):
    import dataclasses

    from mri_anomaly.data.demo import HEALTHY_VARIATION, SMOOTH_ANATOMY, _template, _Variation

    # with and without periventricular signal, all else equal (no texture, so the draws match)
    base = dataclasses.replace(HEALTHY_VARIATION, texture=0.0, noise=(1e-6, 1e-6), bias=0.0)
    with_pv = dataclasses.replace(base, periventricular=(0.3, 0.3))
    without = dataclasses.replace(base, periventricular=(0.0, 1e-9))  # draws its amplitude too
    a = synthesize_subject(np.random.default_rng(3), 4.0, "flair", with_pv)["image"]
    b = synthesize_subject(np.random.default_rng(3), 4.0, "flair", without)["image"]
    assert isinstance(with_pv, _Variation) and _template(4.0)["pv"].max() > 0
    brain = (a > 0) & (b > 0)
    ratio = a[brain] / b[brain]
    assert ratio.max() > 1.1  # brighter caps
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)  # and nothing else changes much
    # smooth_anatomy writes the cohort of the SMOOTH_ANATOMY variation (no texture, no caps)
    small = dict(healthy=3, anomalous=0, general=0, spacing=8.0)
    make_demo_cohort(tmp_path / "smooth", seed=1, smooth_anatomy=True, **small)
    make_demo_cohort(tmp_path / "detail", seed=1, **small)
    img = lambda d: np.asarray(nib.load(d / "images" / "demo-train-000.nii.gz").dataobj)  # noqa: E731
    expected = synthesize_subject(
        np.random.default_rng([1, 1, 0]),
        8.0,
        "flair",
        dataclasses.replace(HEALTHY_VARIATION, **SMOOTH_ANATOMY),
    )["image"]
    np.testing.assert_array_equal(img(tmp_path / "smooth"), expected)
    assert not np.array_equal(img(tmp_path / "smooth"), img(tmp_path / "detail"))
    meta = json.loads((tmp_path / "smooth" / "cohort.json").read_text())
    assert meta["anatomy"] == "smooth template"


def test_t1_carries_the_texture_and_is_unchanged_without_it():
    from mri_anomaly.data.demo import HEALTHY_VARIATION, _contrast_image

    shape = (6, 7, 8)
    ones = np.ones(shape, np.float32)
    gm, wm, csf = 0.5 * ones, 0.3 * ones, 0.2 * ones
    t1 = np.full(shape, 0.8, np.float32)

    def image(tissues):
        return _contrast_image(np.random.default_rng(0), "t1", HEALTHY_VARIATION, tissues, lambda: t1)

    plain = image({"gm": gm, "wm": wm, "csf": csf, "brain": ones})
    same = image({"gm": gm, "wm": wm, "csf": csf, "brain": ones, "smooth": (gm, wm, csf)})
    np.testing.assert_allclose(same, plain, rtol=1e-6)  # no texture, no change
    more_wm = image({"gm": 0.3 * ones, "wm": 0.5 * ones, "csf": csf, "brain": ones, "smooth": (gm, wm, csf)})
    # the WM-richer voxel is brighter in T1 by the ratio of the T1 mixtures (jitter aside, which is +-5 %)
    expected = (0.06 + 0.195 + 0.5 + 1e-3) / (0.06 + 0.325 + 0.3 + 1e-3)
    assert float((more_wm / plain).mean()) == pytest.approx(expected, rel=0.06)
    assert float((more_wm / plain).mean()) > 1.05


def test_partial_volume_lesions_image_the_same_subjects_fainter(tmp_path):
    """``partial_volume_lesions`` (the default) against full contrast: the same cohort (healthy scans, masks,
    strata) with each lesion's edge voxels changed by the fraction of them it fills; MS patterns keep their masks
    and fade where partly filled."""
    ms_dir = find_ms_lesion_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = (
            make_demo_cohort(
                tmp_path / name,
                healthy=3,
                anomalous=3,
                general=0,
                spacing=4.0,
                ms_dir=ms_dir,
                partial_volume_lesions=pv,
            )  # fmt: skip
            for name, pv in (("a", False), ("b", True))
        )
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    assert _subjects(a) == _subjects(b)  # kinds, variants, lesion volumes and strata
    assert json.loads((tmp_path / "b" / "cohort.json").read_text())["lesion_imaging"] == "partial volume"
    for key, x in arrays_a.items():
        if key.endswith(":mask") or "-anom-" not in key:
            assert np.array_equal(x, arrays_b[key]), key  # masks and healthy scans: the same files
            continue
        mask = arrays_a[key.replace(":image", ":mask")] > 0
        changed = x != arrays_b[key]
        assert changed[mask].any(), key
        # inside the mask the partial-volume lesion is nearer the surrounding tissue: fainter, whatever its sign
        median = np.median(x[x > 0])
        assert np.abs(arrays_b[key][mask] - median).mean() < np.abs(x[mask] - median).mean(), key


def _outer_layer_ratio(image: np.ndarray) -> float:
    """Mean of the outermost layer of nonzero voxels (6-connected) over the median of the rest."""
    from scipy import ndimage

    fg = image > 0
    outer = fg & ~ndimage.binary_erosion(fg)
    return float(image[outer].mean() / np.median(image[fg & ~outer]))


def test_skull_strip_cuts_the_partly_brain_edge(tmp_path):
    """``skull_strip_fraction`` only zeroes voxels: the default (0.5) keeps exactly the voxels of the faded cohort
    (0.05) that are at least half brain, so the outermost layer is brighter, like a real scan stripped by its mask;
    the lesion mask is cut with the image."""

    def subject(**kwargs):
        return synthesize_subject(np.random.default_rng([0, 4, 1]), 8.0, "flair", lesion="tumour", **kwargs)

    faded, cut = subject(skull_strip_fraction=0.05), subject()
    kept = cut["image"] > 0
    np.testing.assert_array_equal(cut["image"][kept], faded["image"][kept])
    assert not (kept & ~(faded["image"] > 0)).any()
    assert 0.03 < 1 - kept.sum() / (faded["image"] > 0).sum() < 0.3  # a rim of partly-brain voxels goes
    assert _outer_layer_ratio(cut["image"]) > _outer_layer_ratio(faded["image"]) + 0.1
    assert cut["mask"].sum() > 0 and (cut["image"][cut["mask"] > 0] > 0).all()
    assert not (cut["mask"] & ~faded["mask"]).any()
    for bad in (0.0, 1.0):
        with pytest.raises(UserInputError, match="skull_strip_fraction"):
            make_demo_cohort(
                tmp_path, healthy=1, anomalous=0, general=0, spacing=8.0, skull_strip_fraction=bad
            )
    make_demo_cohort(tmp_path / "c", healthy=1, anomalous=0, general=0, spacing=8.0)
    assert json.loads((tmp_path / "c" / "cohort.json").read_text())["skull_strip_fraction"] == 0.5
