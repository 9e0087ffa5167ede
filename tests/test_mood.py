"""``mri-anomaly score --format mood``: the MOOD-challenge layout (per-input .txt score, same-shape map)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from mri_anomaly.cli import main
from mri_anomaly.data import load_datalist, write_datalist
from mri_anomaly.scoring.mood import from_unit, to_unit

TINY = [
    "preprocessing.spacing=[8, 8, 8]",
    "preprocessing.spatial_size=[24, 24, 24]",
    "train.batch_size=4",
    "train.init_batches=1",
    "score.top_k=3",
    "score.allow_few_calibration_scans=true",  # the tiny cohort has one validation scan
]
MODELS = {
    "glow2d-slices": [
        "model.levels=2",
        "model.steps=1",
        "model.hidden_channels=8",
        "train.phases.train.steps=2",
    ],
    "deep-svdd-2d": [
        "method=deep-sad",  # the image-level method on slices: no voxel maps, so MOOD paints the slice scores
        "model.channels=[4, 8]",
        "model.pooled_size=2",
        "model.rep_dim=8",
        "train.phases.pretrain.steps=2",
        "train.phases.train.steps=2",
    ],
    "deep-sad-3d": [
        "model.channels=[4, 8]",
        "model.pooled_size=2",
        "model.rep_dim=8",
        "train.batch_size=2",
        "train.phases.pretrain.steps=2",
        "train.phases.train.steps=2",
    ],
}


def _set(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def screening_datalist(demo_cohort, tmp_path_factory) -> Path:
    """The demo cohort's test section, plus a real scan on another grid and affine when ../shared/data is present."""
    data = load_datalist(demo_cohort)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "isles22-sample"
    real = sorted(shared.glob("*/*_flair.nii.gz"))
    data["test"] = data["test"] + [{"image": str(p)} for p in real[:1]]
    return write_datalist(data, tmp_path_factory.mktemp("mood-data") / "datalist.json", relative=False)


@pytest.fixture(scope="module", params=sorted(MODELS))
def mood_scored(request, demo_cohort, screening_datalist, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"mood-{name}")
    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--datalist",
                str(demo_cohort),
                "--out",
                str(root / "run"),
                "--no-progress",
                *_set(TINY + MODELS[name]),
            ]
        )
        == 0
    )
    raw, unit = root / "raw", root / "unit"
    for out, values in ((raw, "raw"), (unit, "unit")):
        assert (
            main(
                [
                    "score",
                    "--run",
                    str(root / "run"),
                    "--datalist",
                    str(screening_datalist),
                    "--out",
                    str(out),
                    "--format",
                    "mood",
                    "--mood-values",
                    values,
                    "--no-progress",
                ]
            )
            == 0
        )
    return name, root, raw, unit


def test_mood_layout_matches_scores_and_inputs(mood_scored):
    name, _, raw, unit = mood_scored
    table = pd.read_csv(raw / "scores.csv")
    primary = json.loads((raw / "score_meta.json").read_text())["score_columns"][0]
    assert len(table) >= 2
    threshold = json.loads((unit / "score_meta.json").read_text())["thresholds"][primary]
    for _, row in table.iterrows():
        case = Path(row["image"]).name
        # sample level: <input name>.txt, one number; raw = scores.csv, unit = the documented monotone map of it
        assert float((raw / "mood" / "sample" / f"{case}.txt").read_text()) == row[primary]
        u = float((unit / "mood" / "sample" / f"{case}.txt").read_text())
        assert 0 < u < 1 and from_unit(u, threshold) == pytest.approx(row[primary], rel=1e-9, abs=1e-9)
        assert (u > 0.5) == bool(row[f"flag:{primary}"])
        # pixel level: <input name>, the input's exact shape and affine
        source = nib.load(row["image"])
        for out in (raw, unit):
            pixel = nib.load(out / "mood" / "pixel" / case)
            assert pixel.shape == source.shape
            np.testing.assert_array_equal(pixel.affine, source.affine)
            assert np.isfinite(pixel.get_fdata()).all()
        raw_map = nib.load(raw / "mood" / "pixel" / case).get_fdata()
        unit_map = nib.load(unit / "mood" / "pixel" / case).get_fdata()
        assert unit_map.min() > 0 and unit_map.max() < 1
        np.testing.assert_allclose(unit_map, to_unit(raw_map), atol=1e-6)
        if name == "glow2d-slices":  # the method's first voxel map, as score wrote it
            np.testing.assert_allclose(raw_map, nib.load(raw / row["map:nll"]).get_fdata(), rtol=1e-6)
        elif name == "deep-sad-3d":  # no voxel maps, one score per volume: that score everywhere
            np.testing.assert_allclose(raw_map, np.float32(row[primary]), rtol=1e-6)
        else:  # no voxel maps: slice scores (as in slice_scores.csv) painted on their slices; 0 outside the model
            # grid's crop, blended at its edge by the resampling back to the input grid
            slices = pd.read_csv(raw / "slice_scores.csv")
            own = slices[slices["subject_id"] == row["subject_id"]]["deep_sad_dist"]
            assert raw_map.min() >= min(0.0, own.min()) - 1e-5 and raw_map.max() <= own.max() + 1e-5
            assert (
                raw_map.max() >= own.min() and np.unique(np.round(raw_map[raw_map >= own.min()], 6)).size > 1
            )
    unit_scores = [
        float((unit / "mood" / "sample" / f"{Path(p).name}.txt").read_text()) for p in table["image"]
    ]
    assert (
        np.argsort(unit_scores, kind="stable").tolist()
        == np.argsort(table[primary].to_numpy(), kind="stable").tolist()
    )


def test_mood_needs_maps(mood_scored, screening_datalist, tmp_path, capsys):
    _, root, _, _ = mood_scored
    assert (
        main(
            [
                "score",
                "--run",
                str(root / "run"),
                "--datalist",
                str(screening_datalist),
                "--out",
                str(tmp_path),
                "--format",
                "mood",
                "--no-maps",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "drop --no-maps" in capsys.readouterr().err
