"""``benchmarks/voxel_norms.py``: per-voxel healthy norms of saved maps, by hand and end to end on a small demo
folder written here (no training)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import yaml


@pytest.fixture(scope="module")
def vn(load_benchmark):
    return load_benchmark("voxel_norms")


def test_norms_median_mad_floor_and_pooled_fallback(vn):
    n = 12
    maps = np.zeros((n, 1, 1, 3), dtype=np.float32)
    regions = np.zeros((n, 1, 1, 3), dtype=bool)
    maps[:, 0, 0, 0] = np.arange(n)  # median 5.5, |v - 5.5| = 0.5 .. 5.5 twice: MAD 3
    regions[:, 0, 0, 0] = True
    maps[:, 0, 0, 1] = 2.0  # constant: MAD 0, takes the floor
    regions[:, 0, 0, 1] = True
    maps[:3, 0, 0, 2] = 100.0  # held by 3 scans only: the pooled norm
    regions[:3, 0, 0, 2] = True
    maps[3:, 0, 0, 2] = -7.0  # outside the regions: never read
    center, (scale, wide) = vn.voxel_norms(maps, regions, min_scans=10, floor_fractions=(0.1, 2.0))
    sd = 1.4826 * 3.0
    assert center[0, 0, 0] == pytest.approx(5.5) and scale[0, 0, 0] == pytest.approx(sd)
    assert center[0, 0, 1] == pytest.approx(2.0)
    # the floor is 0.1 x the median of the positive scales (only voxel 0's here)
    assert scale[0, 0, 1] == pytest.approx(0.1 * sd)
    # pooled: the median of every held value (12 ramp values, 12 twos, 3 hundreds) and the median scale
    held = np.concatenate([np.arange(n), np.full(n, 2.0), np.full(3, 100.0)])
    assert center[0, 0, 2] == pytest.approx(np.median(held))
    assert scale[0, 0, 2] == pytest.approx(np.median([sd, 0.1 * sd]))
    # a floor above the median MAD lifts every held voxel to it; the pooled scale follows
    assert wide[0, 0, :] == pytest.approx([2 * sd, 2 * sd, 2 * sd])


def test_top_mean_and_columns(vn):
    region = np.array([True, True, True, False, True])
    volume_map = np.array([1.0, 5.0, 3.0, 99.0, 4.0])
    assert vn.top_mean(volume_map, region, 2) == pytest.approx(4.5)  # 5 and 4; the 99 is outside
    assert vn.top_mean(volume_map, region, 10) == pytest.approx(13.0 / 4)  # all four region voxels
    assert np.isnan(vn.top_mean(volume_map, np.zeros(5, dtype=bool), 2))

    center = np.array([0.0, 4.0, 1.0, 0.0, 0.0])
    scale = np.array([1.0, 2.0, 0.5, 1.0, 4.0])
    scores = vn.calibrated_scores(volume_map[None], region[None], center, {"z@x": scale, "z@y": 2 * scale}, 1)
    assert scores["raw"][0] == pytest.approx(5.0)
    # map - center: 1, 1, 2, -, 4 -> top 4 (voxel 4); z: 1, 0.5, 4, -, 1 -> top 4 (voxel 2)
    assert scores["minus_median"][0] == pytest.approx(4.0)
    assert scores["z@x"][0] == pytest.approx(4.0)
    assert scores["z@y"][0] == pytest.approx(2.0)


def test_kind_aurocs_by_hand(vn):
    labels = np.array([0, 0, 1, 1, 1])
    kinds = ["", "", "ms", "ms", "tumour"]
    scores = np.array([0.1, 0.5, 0.4, 0.9, 0.2])
    out = vn.kind_aurocs(labels, kinds, scores)
    assert out["ms"] == pytest.approx(0.75)  # 0.4 beats 0.1 only, 0.9 beats both: 3 of 4 pairs
    assert out["tumour"] == pytest.approx(0.5)  # 0.2 beats 0.1, loses to 0.5
    assert "focal" not in out


def _write(path, array):
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(path))


def test_end_to_end_on_a_written_demo(vn, tmp_path, monkeypatch):
    """A demo folder with one map run: its healthy maps are high at one voxel, its lesions sit there too. The
    raw score cannot tell them apart, the per-voxel norm can, and ``raw`` equals the logged column."""
    rng = np.random.default_rng(0)
    demo = tmp_path / "demo"
    (demo / "data" / "images").mkdir(parents=True)
    run_dir, score_dir = demo / "runs" / "intensity", demo / "scores" / "intensity"
    run_dir.mkdir(parents=True)
    config = {"preprocessing": {"spacing": [4.0, 4.0, 4.0]}, "score": {"map_erosion_mm": 0.0}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "checkpoint.pt").write_bytes(
        b""
    )  # a trained run, as _common.seed_runs finds them (never loaded)
    image = np.zeros((6, 6, 6), dtype=np.float32)
    image[1:5, 1:5, 1:5] = 1.0  # 64 brain voxels
    hot, lesion = (slice(1, 4), 2, 2), (4, 4, 4)
    subjects, test, table = [], [], []
    for section, n in (("validation", 12), ("test", 8)):
        (score_dir / "maps" / section).mkdir(parents=True)
        for i in range(n):
            sid = f"{section}-{i}"
            label = int(section == "test" and i >= 4)
            m = rng.uniform(0.0, 0.2, size=image.shape) * image
            m[hot] = rng.uniform(4.0, 6.0, size=3)  # high in every map: typical there, and varied
            if label:
                m[lesion] = (
                    1.0  # far above its place's healthy values, below the hot voxels: no raw top-3 sees it
                )
            _write(demo / "data" / "images" / f"{sid}.nii.gz", image)
            _write(score_dir / "maps" / section / f"{sid}_intensity.nii.gz", m)
            top = float(np.sort(m[image > 0])[-3:].mean())
            table.append(
                {
                    "subject_id": sid,
                    "image": str(demo / "data" / "images" / f"{sid}.nii.gz"),
                    "section": section,
                    "label": label,
                    "intensity_top200mm3": top,
                }
            )
            subjects.append({"subject_id": sid, "lesion_kind": "ms" if label else ""})
            if section == "test":
                test.append({"subject_id": sid, "image": f"images/{sid}.nii.gz", "label": label})
    with open(score_dir / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    with open(demo / "data" / "subjects.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject_id", "lesion_kind"])
        writer.writeheader()
        writer.writerows(subjects)
    (demo / "data" / "datalist.json").write_text(json.dumps({"test": test}))
    monkeypatch.setattr(vn, "MAP_RUNS", {"intensity": ("intensity",)})

    (result,) = vn.measure(demo, min_scans=10, n_resamples=50, floors=(0.1, 1.0))
    assert result["seed"] == "0" and result["n_validation"] == 12
    assert result["raw_vs_logged_max_abs"] < 1e-5
    assert sorted(result) == sorted(
        ["run", "seed", "map", "n_validation", "raw_vs_logged_max_abs", "raw", "minus_median", "z@0.1", "z@1"]
        + ["minus_median_vs_raw", "z@0.1_vs_raw", "z@1_vs_raw"]
    )
    assert result["z@0.1"]["auroc"] == pytest.approx(1.0)
    assert result["z@0.1"]["kinds"] == {"ms": pytest.approx(1.0)}
    assert result["raw"]["auroc"] < 0.9  # the hot voxels make every raw score
    assert result["z@0.1_vs_raw"]["auroc_difference"] == pytest.approx(1.0 - result["raw"]["auroc"])
    assert "z@1" in vn.to_markdown([result]) and "ms: raw →" in vn.kinds_markdown([result])
