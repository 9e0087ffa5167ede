"""Multi-contrast input: datalist items naming several images, stacked as channels on the first contrast's grid.

Datalists (JSON lists, CSV ``image_<x>`` columns, one contrast count per datalist), loading (resampling onto the
first contrast's grid and affine), per-channel intensity scaling, ``preprocessing.contrasts`` against
``in_channels`` and the datalist, maps in the first contrast's input space, the two-contrast demo cohort (the
default cohort unchanged) and a tiny train + score with the shipped two-channel config.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mri_anomaly.cli import main
from mri_anomaly.data import (
    DatalistError,
    InputFileError,
    LoadVolume,
    ScaleIntensityInMask,
    VolumeDataset,
    load_datalist,
    make_demo_cohort,
    preprocessing,
    save_map_in_input_space,
    validate_preprocessing_config,
    write_datalist,
)
from mri_anomaly.data.commands import _contrast_list
from mri_anomaly.data.datalist import check_contrast_counts, first_image, image_paths, subject_id_of
from mri_anomaly.data.preprocessing import preprocessed_channels
from mri_anomaly.training.config import ConfigError, load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "latent-norm-ae-2d-multicontrast.yaml"


def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr.astype(np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def _brain(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A bright ellipsoid with texture on a zero background (skull-stripped-like)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.6
    rng = np.random.default_rng(seed)
    return np.where(inside, 100.0 + 20.0 * rng.random(shape), 0.0)


FIRST_AFFINE = np.array([[2.0, 0, 0, -20.0], [0, 2.0, 0, -24.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
SECOND_AFFINE = np.array([[1.5, 0, 0, -25.0], [0, 1.5, 0, -30.0], [0, 0, 1.5, -24.0], [0, 0, 0, 1]])


def _linear(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """f(world) = 200 + x + 2 y + 3 z on a grid: bilinear resampling reproduces it exactly inside."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return 200.0 + world[..., 0] + 2 * world[..., 1] + 3 * world[..., 2]


@pytest.fixture
def two_contrasts(tmp_path) -> dict[str, Path]:
    """FLAIR (20 x 24 x 16, 2 x 2 x 2.5 mm) and T1 (34 x 40 x 32, 1.5 mm, shifted) of one subject, plus a mask."""
    flair = _nifti(tmp_path / "flair" / "s01_flair.nii.gz", _brain((20, 24, 16)), FIRST_AFFINE)
    t1 = _nifti(tmp_path / "t1" / "s01_t1.nii.gz", _linear((34, 40, 32), SECOND_AFFINE), SECOND_AFFINE)
    mask = np.zeros((20, 24, 16))
    mask[8:12, 10:14, 6:10] = 1
    return {"flair": flair, "t1": t1, "mask": _nifti(tmp_path / "s01_mask.nii.gz", mask, FIRST_AFFINE)}


# ------------------------------------------------------------------------------------------ datalists
def test_json_item_lists_its_contrasts_relative_paths_resolved(two_contrasts, tmp_path):
    dl = {
        "test": [
            {"image": ["flair/s01_flair.nii.gz", "t1/s01_t1.nii.gz"], "mask": "s01_mask.nii.gz", "label": 1},
            {"image": [str(two_contrasts["flair"]), "t1/s01_t1.nii.gz"], "subject_id": "again"},
        ]
    }
    (tmp_path / "dl.json").write_text(json.dumps(dl))
    item, again = load_datalist(tmp_path / "dl.json")["test"]
    assert item["image"] == [str(two_contrasts["flair"]), str(two_contrasts["t1"])]
    assert item["subject_id"] == "s01_flair" == subject_id_of({"image": item["image"]})
    assert first_image(item) == str(two_contrasts["flair"]) and image_paths(again) == item["image"]


def test_csv_image_columns_are_further_contrasts_and_round_trip(two_contrasts, tmp_path):
    (tmp_path / "dl.csv").write_text(
        "section,image,image_t1,label,mask\ntest,flair/s01_flair.nii.gz,t1/s01_t1.nii.gz,1,s01_mask.nii.gz\n"
    )
    data = load_datalist(tmp_path / "dl.csv")
    assert data["test"][0]["image"] == [str(two_contrasts["flair"]), str(two_contrasts["t1"])]
    assert data["test"][0]["label"] == 1 and data["test"][0]["mask"] == str(two_contrasts["mask"])
    for name in ("back.csv", "back.json"):
        written = write_datalist(data, tmp_path / name)
        assert load_datalist(written) == data
    with open(tmp_path / "back.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert (row["image"], row["image_2"]) == ("flair/s01_flair.nii.gz", "t1/s01_t1.nii.gz")
    assert json.loads((tmp_path / "back.json").read_text())["test"][0]["image"] == [
        "flair/s01_flair.nii.gz",
        "t1/s01_t1.nii.gz",
    ]


def test_items_with_different_numbers_of_contrasts_are_named(two_contrasts, tmp_path):
    dl = {
        "training": [{"image": ["flair/s01_flair.nii.gz", "t1/s01_t1.nii.gz"], "subject_id": "a"}],
        "test": [
            {"image": "flair/s01_flair.nii.gz", "subject_id": "b"},
            {"image": ["flair/s01_flair.nii.gz", "t1/missing.nii.gz"], "subject_id": "c"},
            {"image": [], "subject_id": "d"},
        ],
    }
    (tmp_path / "dl.json").write_text(json.dumps(dl))
    with pytest.raises(DatalistError) as info:
        load_datalist(tmp_path / "dl.json")
    assert info.value.path == str(tmp_path / "dl.json")
    joined = "\n".join(info.value.problems)
    assert "test[0] (b): 1 image(s) (contrasts), but training[0] (a) has 2" in joined
    assert "test[1] (c): image[1] file not found: " + str(tmp_path / "t1" / "missing.nii.gz") in joined
    assert "test[2] (d): 'image' must be a file path or a list of file paths" in joined


def test_config_contrasts_set_the_channels_and_are_checked(tmp_path):
    assert preprocessed_channels(None) == 1
    assert preprocessed_channels({"contrasts": ["flair", "t1"]}) == 2
    assert validate_preprocessing_config({"contrasts": ["flair", "flair"]})[0].startswith(
        "preprocessing.contrasts: expected null"
    )
    assert validate_preprocessing_config({"contrasts": "flair"})
    assert load_config(CONFIG)["in_channels"] == 2
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, ["in_channels=1"])
    assert info.value.problems == [
        "in_channels: 1, but the preprocessing gives 2-channel images (preprocessing.contrasts ['flair', 't1']: "
        "one channel per contrast); set in_channels: 2"
    ]
    items = {"test": [{"image": "a.nii.gz", "subject_id": "a"}, {"image": ["b.nii", "c.nii"]}]}
    with pytest.raises(DatalistError) as info:
        check_contrast_counts(items, 2, "dl.json")
    assert str(info.value).startswith("dl.json: 2 problem(s)")
    assert info.value.problems[1] == "test[0] (a): 1 image file(s)"
    with pytest.raises(DatalistError, match=r"expects 2 image files"):
        VolumeDataset(items["test"], preprocessing_config={"contrasts": ["flair", "t1"]}, cache="none")


def test_train_and_score_refuse_a_datalist_with_other_contrasts(demo_cohort, tmp_path, capsys):
    code = main(
        ["train", "--config", str(CONFIG), "--datalist", str(demo_cohort), "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert str(demo_cohort) in err and "the config expects 2 image files (preprocessing.contrasts)" in err
    assert "training[0] (demo-train-000): 1 image file(s)" in err


def test_python_api_takes_a_list_of_paths_as_one_subjects_contrasts(two_contrasts):
    from mri_anomaly.data.datalist import items_from_images

    pair = [two_contrasts["flair"], str(two_contrasts["t1"])]
    items = items_from_images([pair, pair], "test", "images")
    assert [it["image"] for it in items] == [[str(two_contrasts["flair"]), str(two_contrasts["t1"])]] * 2
    with pytest.raises(TypeError, match=r"images\[0\]: expected a NIfTI path, a list of paths"):
        items_from_images([[1, 2]], "test", "images")


# ------------------------------------------------------------------------------------------ loading
def test_contrasts_are_resampled_onto_the_first_grid_and_stacked(two_contrasts):
    x = LoadVolume()([str(two_contrasts["flair"]), str(two_contrasts["t1"])])
    assert tuple(x.shape) == (2, 20, 24, 16)
    np.testing.assert_allclose(np.asarray(x.affine), FIRST_AFFINE)
    assert x.meta["filename_or_obj"] == str(two_contrasts["flair"])
    assert x.meta["original_channel_dim"] == 0
    np.testing.assert_allclose(x[0].numpy(), _brain((20, 24, 16)), rtol=1e-6)
    # the T1 is a linear function of world coordinates: resampled onto the FLAIR grid it is that function there
    expected = _linear((20, 24, 16), FIRST_AFFINE)
    inside = (slice(1, -1), slice(1, -1), slice(1, -1))  # the T1's field of view covers these voxels
    np.testing.assert_allclose(x[1].numpy()[inside], expected[inside], rtol=1e-4)


def test_a_bad_contrast_file_is_named(two_contrasts, tmp_path):
    bad = tmp_path / "t1" / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputFileError) as info:
        LoadVolume()([str(two_contrasts["flair"]), str(bad)])
    assert info.value.path == str(bad)
    far = SECOND_AFFINE.copy()
    far[:3, 3] += 500.0  # nowhere near the first contrast
    elsewhere = _nifti(tmp_path / "far.nii.gz", _brain((10, 10, 10)), far)
    with pytest.raises(InputFileError, match="does not overlap the first contrast"):
        LoadVolume()([str(two_contrasts["flair"]), str(elsewhere)])


def test_intensity_scaling_is_per_channel():
    rng = np.random.default_rng(0)
    a = torch.as_tensor(rng.uniform(0.0, 10.0, (1, 8, 8, 8)), dtype=torch.float32)
    b = 100.0 * a.flip(1) + 5000.0  # another contrast, 100x brighter
    scaler = ScaleIntensityInMask(lower=0.0, upper=100.0, inside_mask=False, clip=True)
    out = scaler(torch.cat([a, b]))
    for c, single in enumerate((a, b)):  # each channel exactly as that contrast alone
        torch.testing.assert_close(out[c : c + 1], scaler(single))
        assert float(out[c].min()) == pytest.approx(0.0, abs=1e-6)
        assert float(out[c].max()) == pytest.approx(1.0, abs=1e-6)
    # over the stacked tensor the first contrast would have collapsed to ~0
    assert float(((a - a.min()) / (b.max() - a.min())).max()) < 0.01
    mask = torch.zeros(1, 8, 8, 8)
    mask[:, 2:6, 2:6, 2:6] = 1
    masked = ScaleIntensityInMask(lower=0.0, upper=100.0)(torch.cat([a, b]), mask)
    for c, single in enumerate((a, b)):
        inside = single[mask > 0]
        lo, hi = float(inside.min()), float(inside.max())
        expected = ((single - lo) / (hi - lo)).clamp(0, 1) * mask
        torch.testing.assert_close(masked[c : c + 1], expected, atol=1e-6, rtol=1e-5)
    # one mask per channel (each contrast's own estimated brain, EstimateForegroundd): each channel in its own
    own = torch.cat([mask, 1.0 - mask])
    masked = ScaleIntensityInMask(lower=0.0, upper=100.0)(torch.cat([a, b]), own)
    for c, single in enumerate((a, b)):
        inside = single[own[c : c + 1] > 0]
        lo, hi = float(inside.min()), float(inside.max())
        expected = ((single - lo) / (hi - lo)).clamp(0, 1) * own[c : c + 1]
        torch.testing.assert_close(masked[c : c + 1], expected, atol=1e-6, rtol=1e-5)


def test_a_map_comes_back_in_the_first_contrast_input_space(two_contrasts, tmp_path):
    config = {"spacing": [4.0, 4.0, 4.0], "spatial_size": [16, 16, 16], "contrasts": ["flair", "t1"]}
    transform = preprocessing(config)
    item = {
        "image": [str(two_contrasts["flair"]), str(two_contrasts["t1"])],
        "mask": str(two_contrasts["mask"]),
    }
    data = transform(item)
    assert tuple(data["image"].shape) == (2, 16, 16, 16) and tuple(data["mask"].shape) == (1, 16, 16, 16)
    for c in range(2):  # each contrast scaled on its own: its brain's median at 0.5, clipped to [0, 1]
        channel = data["image"][c]
        assert float(channel[channel > 0].median()) == pytest.approx(0.5, abs=0.05)
        assert float(channel.max()) <= 1.0 and float(channel.min()) == 0.0
    path = save_map_in_input_space(data["mask"].as_tensor(), data, tmp_path / "map.nii.gz", transform)
    saved, first = nib.load(path), nib.load(two_contrasts["flair"])
    assert saved.shape == first.shape == (20, 24, 16)
    np.testing.assert_allclose(saved.affine, first.affine)
    # the lesion box comes back where it was in the first contrast (bilinear round trip through 4 mm)
    back = np.asarray(saved.dataobj) > 0.5
    truth = np.asarray(nib.load(two_contrasts["mask"]).dataobj) > 0.5
    assert (back & truth).sum() / (back | truth).sum() > 0.5


# ------------------------------------------------------------------------------------------ demo cohort
def test_default_demo_cohort_is_unchanged(demo_cohort, tmp_path):
    """The single-contrast cohort's files and voxels are those it had before multi-contrast input existed (now with
    ``smooth_anatomy=True, skull_strip_fraction=0.05``), the textured cohort's of b75b566 (``skull_strip_fraction=
    0.05``), and the default cohort's are pinned too."""
    data = load_datalist(demo_cohort)
    assert all(isinstance(it["image"], str) for items in data.values() for it in items)
    small = {
        "seed": 0,
        "healthy": 4,
        "anomalous": 0,
        "general": 3,
        "spacing": 8.0,
        "skull_strip_fraction": 0.05,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smooth = make_demo_cohort(tmp_path / "smooth", smooth_anatomy=True, **small)
        faded = make_demo_cohort(tmp_path / "faded", **small)
    # float64 sums and maxima of the voxels (seed 0, 8 mm): the smooth cohort as it was before multi-contrast input
    # and before the texture existed; the textured cohort as of b75b566; the default cohort (cut at half brain)
    golden = {
        smooth: {
            "demo-train-000": (3788228.064537883, 1543.36572265625),
            "demo-val-000": (2183028.810813725, 1247.1019287109375),
            "demo-gen-001": (3298154.8903042153, 2968.196044921875),
        },
        faded: {
            "demo-train-000": (3702915.890621066, 1533.460693359375),
            "demo-val-000": (1605255.1335158646, 897.5346069335938),
            "demo-gen-001": (3377195.371781409, 2809.838134765625),
        },
        demo_cohort: {
            "demo-train-000": (3641238.4206237793, 1533.460693359375),
            "demo-val-000": (1576004.7316360474, 897.5346069335938),
            "demo-gen-001": (3321783.4046783447, 2809.838134765625),
        },
    }
    for datalist, values in golden.items():
        for sid, (total, peak) in values.items():
            path = datalist.parent / "images" / f"{sid}.nii.gz"
            a = np.asarray(nib.load(path).dataobj, dtype=np.float64)
            assert a.shape == (22, 26, 23)
            assert a.sum() == pytest.approx(total, rel=1e-9) and a.max() == pytest.approx(peak, rel=1e-9)
    assert json.loads(demo_cohort.read_text())["modality"] == {"0": "FLAIR"}


def test_two_contrast_demo_cohort(demo_cohort, demo_cohort_two_contrasts, tmp_path):
    one, two = load_datalist(demo_cohort), load_datalist(demo_cohort_two_contrasts)
    assert {k: len(v) for k, v in one.items()} == {k: len(v) for k, v in two.items()}
    images = demo_cohort_two_contrasts.parent / "images"
    for a, b in zip(one["training"] + one["test"], two["training"] + two["test"]):
        sid = a["subject_id"]
        assert b["subject_id"] == sid and b.get("label") == a.get("label")
        assert b["image"] == [str(images / f"{sid}_flair.nii.gz"), str(images / f"{sid}_t1.nii.gz")]
        flair, t1 = (nib.load(p) for p in b["image"])
        # the FLAIR is the single-contrast cohort's image; the T1 has the same grid
        np.testing.assert_array_equal(np.asarray(flair.dataobj), np.asarray(nib.load(a["image"]).dataobj))
        np.testing.assert_array_equal(flair.affine, t1.affine)
        assert flair.shape == t1.shape
        if "mask" not in b:
            continue
        mask = np.asarray(nib.load(b["mask"]).dataobj) > 0
        np.testing.assert_array_equal(mask, np.asarray(nib.load(a["mask"]).dataobj) > 0)  # the same lesion
    # hyperintense in FLAIR, hypointense in T1 (against the brain's median), read on the same anomalous subjects with
    # full-contrast lesions: with partial volume an 8 mm mask voxel mixes lesion and tissue and may sit at the median
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = load_datalist(
            make_demo_cohort(
                tmp_path,
                seed=0,
                healthy=1,
                anomalous=3,
                general=0,
                spacing=8.0,
                contrast=("flair", "t1"),
                partial_volume_lesions=False,
            )  # fmt: skip
        )
    checked = 0
    for b in full["test"]:
        if "mask" not in b:
            continue
        mask = np.asarray(nib.load(b["mask"]).dataobj) > 0
        f, t = (np.asarray(nib.load(p).dataobj) for p in b["image"])
        ring = (f > 0) & ~mask
        if mask.sum() >= 3:
            assert np.median(f[mask]) > np.median(f[ring]) and np.median(t[mask]) < np.median(t[ring])
            checked += 1
    assert checked >= 1
    general = two["general"]
    assert [len(it["image"]) for it in general] == [2, 2, 2]
    rows = {
        r["subject_id"]: r for r in csv.DictReader(open(demo_cohort_two_contrasts.parent / "subjects.csv"))
    }
    assert rows["demo-train-000"]["contrast"] == "flair+t1"
    assert [rows[f"demo-gen-{i:03d}"]["contrast"] for i in range(3)] == ["t1+t2", "t2+flair", "flair+t1"]
    meta = json.loads(demo_cohort_two_contrasts.read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1"}


def test_demo_contrast_option(tmp_path):
    assert _contrast_list("flair") == "flair" and _contrast_list("FLAIR, t1") == ("flair", "t1")
    with pytest.raises(Exception, match="several distinct"):
        _contrast_list("flair,flair")
    with warnings.catch_warnings(), pytest.raises(Exception, match="unknown or repeated"):
        warnings.simplefilter("ignore")
        make_demo_cohort(tmp_path, healthy=1, anomalous=0, general=0, spacing=8.0, contrast=("flair", "pd"))


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_two_channel_config_trains_and_scores_maps_in_the_flair_space(
    demo_cohort_two_contrasts, demo_cohort, tmp_path, capsys
):
    tiny = [
        "preprocessing.spacing=[8, 8, 8]",
        "preprocessing.spatial_size=[24, 24, 24]",
        "model.channels=[4, 8]",
        "model.pooled_size=2",
        "model.latent_dim=8",
        "train.batch_size=2",
        "train.init_batches=1",
        "train.phases.train.steps=2",
        "score.allow_few_calibration_scans=true",
    ]
    sets = [a for o in tiny for a in ("--set", o)]
    run, out = tmp_path / "run", tmp_path / "scores"
    dl = str(demo_cohort_two_contrasts)
    train = ["train", "--config", str(CONFIG), "--datalist", dl, "--out", str(run), "--no-progress", *sets]
    assert main(train) == 0
    assert main(["score", "--run", str(run), "--datalist", dl, "--out", str(out), "--no-progress"]) == 0
    test_items = load_datalist(demo_cohort_two_contrasts)["test"]
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [it["image"][0] for it in test_items]  # the first contrast
    for r in rows:
        assert np.isfinite(float(r["latent_norm_mean"]))
        saved, flair = nib.load(out / r["map:residual"]), nib.load(r["image"])
        assert saved.shape == flair.shape
        np.testing.assert_allclose(saved.affine, flair.affine)
    # evaluation finds the items (and their masks) by the first contrast, as for single-contrast scores
    ev = tmp_path / "eval"
    assert (
        main(["evaluate", "--scores", str(out), "--datalist", dl, "--out", str(ev), "--bootstrap", "5"]) == 0
    )
    metrics = json.loads((ev / "metrics.json").read_text())
    assert "latent_norm_mean" in json.dumps(metrics)
    # a single-contrast datalist is refused before any scan is scored, naming the datalist
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["score", "--run", str(run), "--datalist", str(demo_cohort), "--out", str(other)]) != 0
    err = capsys.readouterr().err
    assert str(demo_cohort) in err and "test[0] (demo-test-000): 1 image file(s)" in err
    assert not (other / "scores.csv").exists()
