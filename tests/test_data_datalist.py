"""Datalists: validation names every problem at once; JSON/CSV round trips; building from globs/folders; CLI."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
from mri_anomaly.data import (
    DatalistError,
    build_datalist,
    load_datalist,
    validate_datalist,
    write_datalist,
)
from mri_anomaly.data.commands import register_commands


def _img(path, shape=(8, 8, 8), affine=None, value=None):
    rng = np.random.default_rng(0)
    arr = rng.random(shape).astype(np.float32) if value is None else np.full(shape, value, np.uint8)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    for s in ("s01", "s02", "s03", "s04", "s05"):
        _img(tmp_path / "imgs" / f"{s}_T1w.nii.gz")
    _img(tmp_path / "masks" / "s04_mask.nii.gz", value=1)
    _img(tmp_path / "masks" / "s05_mask.nii.gz", value=0)
    return tmp_path


def test_validation_lists_every_problem_at_once(folder):
    aff = np.eye(4)
    aff[0, 3] = 5.0
    _img(folder / "masks" / "badshape_mask.nii.gz", shape=(8, 8, 9), value=1)
    _img(folder / "masks" / "badaff_mask.nii.gz", affine=aff, value=1)
    _img(folder / "imgs" / "four_d.nii.gz", shape=(8, 8, 8, 2))
    dl = {
        "training": [
            {"image": "imgs/s01_T1w.nii.gz", "label": 0},
            {"image": "imgs/nope.nii.gz", "colour": "red"},
        ],
        "test": [
            {"image": "imgs/s02_T1w.nii.gz", "label": 2, "semi_target": 5},
            {"image": "imgs/s03_T1w.nii.gz", "mask": "masks/badshape_mask.nii.gz"},
            {"image": "imgs/s04_T1w.nii.gz", "mask": "masks/badaff_mask.nii.gz", "subject_id": "x"},
            {"image": "imgs/s05_T1w.nii.gz", "subject_id": "x"},
            {"image": "imgs/four_d.nii.gz"},
            {"label": 1},
        ],
        "tset": [],
    }
    p = folder / "dl.json"
    p.write_text(json.dumps(dl))
    with pytest.raises(DatalistError) as ei:
        load_datalist(p)
    probs = ei.value.problems
    joined = "\n".join(probs)
    expected = [
        "training[1] (nope): unknown key(s) 'colour'",
        "training[1] (nope): image file not found",
        "test[0] (s02_T1w): label 2 is not 0 (healthy) or 1 (anomalous)",
        "test[0] (s02_T1w): semi_target 5 is not -1, 0 or 1",
        "test[1] (s03_T1w): mask shape (8, 8, 9) differs from image shape (8, 8, 8)",
        "test[2] (x): mask affine differs from the image's (max difference 5)",
        "test[3] (x): duplicate subject_id 'x' (also test[2])",
        "test[4] (four_d): image is not 3D (shape (8, 8, 8, 2))",
        "test[5]: missing 'image'",
        "unknown section 'tset'",
    ]
    for e in expected:
        assert e in joined, f"{e!r} not in\n{joined}"
    assert len(probs) == len(expected), joined
    assert str(p) in str(ei.value)


def test_load_resolves_paths_and_fills_subject_ids(folder):
    dl = {
        "training": [{"image": "imgs/s01_T1w.nii.gz", "label": 0.0}],
        "test": [
            "imgs/s02_T1w.nii.gz",
            {
                "image": "imgs/s04_T1w.nii.gz",
                "mask": "masks/s04_mask.nii.gz",
                "label": 1,
                "semi_target": -1,
                "site": "A",
            },
        ],
        "name": "example",
        "numTraining": 1,
    }
    p = folder / "dl.json"
    p.write_text(json.dumps(dl))
    out = load_datalist(p)
    assert set(out) == {"training", "test"}
    assert out["training"][0] == {
        "image": str(folder / "imgs" / "s01_T1w.nii.gz"),
        "label": 0,
        "subject_id": "s01_T1w",
    }
    assert isinstance(out["training"][0]["label"], int)
    assert out["test"][0] == {"image": str(folder / "imgs" / "s02_T1w.nii.gz"), "subject_id": "s02_T1w"}
    assert out["test"][1]["mask"] == str(folder / "masks" / "s04_mask.nii.gz")
    assert out["test"][1]["semi_target"] == -1


def test_write_json_relative_and_csv_round_trip(folder):
    dl = build_datalist(
        sorted(str(p) for p in (folder / "imgs").glob("*.nii.gz")),
        masks=[str(folder / "masks" / "s04_mask.nii.gz")],
        val_fraction=0.25,
        seed=1,
    )
    pj = write_datalist(dl, folder / "out.json", metadata={"name": "t"})
    raw = json.loads(pj.read_text())
    assert raw["name"] == "t"
    assert all(not it["image"].startswith("/") for sec in ("training", "test") for it in raw[sec])
    pc = write_datalist(dl, folder / "out.csv")
    assert load_datalist(pj) == load_datalist(pc) == {k: v for k, v in dl.items()}


def test_build_datalist_matches_masks_by_subject_and_splits(folder):
    images = sorted(str(p) for p in (folder / "imgs").glob("*.nii.gz"))
    masks = sorted(str(p) for p in (folder / "masks").glob("*.nii.gz"))
    dl = build_datalist(
        images, masks, labels={"s05": {"label": 0, "site": "B"}}, val_fraction=0.34, test_fraction=0, seed=0
    )
    assert [it["subject_id"] for it in dl["test"]] == ["s04"]
    assert dl["test"][0]["mask"].endswith("s04_mask.nii.gz") and dl["test"][0]["label"] == 1
    healthy = dl["training"] + dl["validation"]
    assert sorted(it["subject_id"] for it in healthy) == ["s01", "s02", "s03", "s05"]
    assert len(dl["validation"]) == 1 and all(it["label"] == 0 for it in healthy)
    s05 = next(it for it in healthy if it["subject_id"] == "s05")
    assert s05["site"] == "B" and s05["mask"].endswith("s05_mask.nii.gz")  # labelled healthy with empty mask
    again = build_datalist(images, masks, seed=0, val_fraction=0.34, test_fraction=0)
    assert again == build_datalist(images, masks, seed=0, val_fraction=0.34, test_fraction=0)
    with pytest.raises(ValueError, match="match no image"):
        build_datalist(images[:2], masks)
    assert set(build_datalist(images, section="test")) == {"test"}


def test_datalist_cli_from_globs_folder_and_check(folder, capsys):
    parser = argparse.ArgumentParser()
    register_commands(parser.add_subparsers())
    out = folder / "cli.json"
    args = parser.parse_args(
        [
            "datalist",
            "--images",
            str(folder / "imgs" / "*.nii.gz"),
            "--masks",
            str(folder / "masks" / "*.nii.gz"),
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    dl = load_datalist(out)
    assert sum(len(v) for v in dl.values()) == 5
    # s04, s05 carry masks -> label 1; one of the 3 healthy scans joins them (--test-fraction 0.2, at least one)
    assert (
        sorted(it["label"] for it in dl["test"]) == [0, 1, 1]
        and len(dl["training"]) == len(dl["validation"]) == 1
    )
    labels = folder / "labels.csv"
    labels.write_text("subject_id,label\ns05,0\n")
    args = parser.parse_args(
        ["datalist", "--folder", str(folder), "--labels", str(labels), "--out", str(out)]
    )
    assert args.func(args) == 0
    assert [it["label"] for it in load_datalist(out)["test"] if it["subject_id"] == "s04"] == [1]
    assert sorted(it["label"] for it in load_datalist(out)["test"]) == [0, 1]
    args = parser.parse_args(
        [
            "datalist",
            "--folder",
            str(folder),
            "--labels",
            str(labels),
            "--test-fraction",
            "0",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    assert [it["subject_id"] for it in load_datalist(out)["test"]] == ["s04"]
    args = parser.parse_args(["datalist", "--check", str(out)])
    assert args.func(args) == 0
    bad = folder / "bad.json"
    bad.write_text(json.dumps({"test": [{"image": "nope.nii.gz", "label": 3}]}))
    args = parser.parse_args(["datalist", "--check", str(bad)])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "image file not found" in err and "label 3" in err
    args = parser.parse_args(["datalist", "--images", str(folder / "none*.nii.gz"), "--out", str(out)])
    assert args.func(args) == 2


def test_validate_datalist_without_files():
    assert validate_datalist({"training": [{"image": "a.nii.gz"}]}, check_files=False) == []
    assert "no items" in validate_datalist({"training": []}, check_files=False)[0]
    assert "expected a JSON object" in validate_datalist([1, 2])[0]


def test_auto_split_puts_a_healthy_share_in_test_so_evaluate_has_both_classes(tmp_path):
    images = [str(tmp_path / f"s{i:02d}.nii.gz") for i in range(10)]
    dl = build_datalist(images, labels={"s09": {"label": 1}}, seed=0)  # defaults: 20 % validation, 20 % test
    assert [len(dl[s]) for s in ("training", "validation", "test")] == [5, 2, 3]
    assert sorted(it["label"] for it in dl["test"]) == [0, 0, 1]
    assert all(it["label"] == 0 for s in ("training", "validation") for it in dl[s])
    # three healthy scans: one each; two: training and validation, none left for test
    assert [len(v) for v in build_datalist(images[:3]).values()] == [1, 1, 1]
    assert set(build_datalist(images[:2])) == {"training", "validation"}
    assert list(build_datalist(images[:1])) == ["training"]
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction < 1"):
        build_datalist(images, val_fraction=0.5, test_fraction=0.5)
