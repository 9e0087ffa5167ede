"""``benchmarks/grid_spacing.py``: the grid overrides, the runs it trains (the demo's configs on another grid, every
mm setting kept), the cohort it compares (the demo's subjects and lesions on another grid), and its document from a
hand-made result (no training)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def grid(load_benchmark):
    return load_benchmark("grid_spacing")


def test_grid_overrides_keep_the_demos_field_of_view(grid):
    demo = (4.0, (40, 48, 40), 8)  # the shipped configs' grid
    assert grid.grid_overrides(2.0, *demo) == (
        "preprocessing.spacing=[2.0,2.0,2.0]",
        "preprocessing.spatial_size=[80,96,80]",
    )
    assert grid.grid_overrides(4.0, *demo)[1] == "preprocessing.spatial_size=[40,48,40]"
    with pytest.raises(ValueError, match="divisible by 8"):  # 20 x 24 x 20 voxels
        grid.grid_overrides(8.0, *demo)
    with pytest.raises(ValueError, match="whole number"):  # 160 / 3 voxels
        grid.grid_overrides(3.0, *demo)


def test_grid_runs_are_the_demo_configs_on_the_finer_grid_with_every_mm_setting_kept(grid):
    from mri_anomaly.pipeline import DEMO_RUNS, configs_dir
    from mri_anomaly.training.config import load_config

    runs = grid.grid_runs(2.0)
    assert [r.name for r in runs] == ["latent-norm-ae-2d", "intensity", "normative"]
    by_name = {r.name: r for r in DEMO_RUNS}
    for run in runs:
        assert run.config == by_name[run.name].config
        shipped = load_config(configs_dir() / run.config, list(by_name[run.name].overrides))
        fine = load_config(configs_dir() / run.config, list(run.overrides))
        assert fine["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]
        assert fine["preprocessing"]["spatial_size"] == [80, 96, 80]
        for key in ("spacing", "spatial_size"):
            fine["preprocessing"][key] = shipped["preprocessing"][key]
        assert fine == shipped  # residual tolerance, rim, 200 mm^3, steps: all as shipped
    assert (
        load_config(configs_dir() / runs[0].config, list(runs[0].overrides))["model"]["residual_tolerance_mm"]
        == 8.0
    )


def test_same_voxels_profile_averages_the_voxels_of_the_4_mm_profile(grid):
    # the package's top200mm3 is 3 voxels of 64 mm^3; 3 voxels of 8 mm^3 are 24 mm^3
    assert grid.same_voxels_profile(2.0) == "top24mm3"
    assert grid.same_voxels_profile(1.0) == "top3mm3"


def test_run_folders_name_every_missing_run(grid, tmp_path):
    def trained(folder: Path, run: str) -> None:
        (folder / "runs" / run).mkdir(parents=True)
        (folder / "runs" / run / "checkpoint.pt").write_bytes(b"")

    for run in ("latent-norm-ae-2d", "intensity"):
        trained(tmp_path, run)
    trained(tmp_path / "seeds" / "2", "latent-norm-ae-2d")
    with pytest.raises(SystemExit, match=r"no run of latent-norm-ae-2d \(seed 1\), normative \(seed 0\)$"):
        grid.run_folders(tmp_path, [0, 1, 2])
    trained(tmp_path, "normative")
    folders = grid.run_folders(tmp_path, [0, 2])
    assert folders == {
        "latent-norm-ae-2d": {"0": tmp_path, "2": tmp_path / "seeds" / "2"},
        "intensity": {"0": tmp_path},
        "normative": {"0": tmp_path},
    }


def test_the_cohort_on_another_grid_has_the_same_subjects_and_lesions(tmp_path):
    """The document compares the demo's subjects on two grids: the same ids, sections, labels and lesion kinds (the
    lesions themselves are drawn on each grid: an MS pattern is the one whose volume there fits the stratum)."""
    from mri_anomaly.data import make_demo_cohort

    tables = {}
    for spacing in (8.0, 4.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_demo_cohort(
                tmp_path / f"{spacing:g}", seed=0, healthy=3, anomalous=3, general=1, spacing=spacing
            )
        tables[spacing] = pd.read_csv(tmp_path / f"{spacing:g}" / "subjects.csv")
    keys = [c for c in ("subject_id", "section", "label", "lesion_kind") if c in tables[8.0]]
    assert {"subject_id", "label"} <= set(keys)
    pd.testing.assert_frame_equal(tables[8.0][keys], tables[4.0][keys])


def test_cohort_lesions_count_each_variant_and_the_ms_patterns_kept(grid, tmp_path):
    def cohort(name: str, variants: list, volumes: list, sources: list) -> Path:
        (tmp_path / name / "data").mkdir(parents=True)
        kinds = [None if v is None else ("focal" if v == "focal_opposite" else v) for v in variants]
        pd.DataFrame({"subject_id": ["h", "a", "b", "c"], "lesion_kind": kinds, "lesion_variant": variants,
                      "lesion_volume_cm3": volumes, "ms_source": sources}).to_csv(tmp_path / name / "data" / "subjects.csv")  # fmt: skip
        return tmp_path / name

    coarse = cohort(
        "4", [None, "ms", "ms", "focal_opposite"], [None, 1.0, 3.0, 2.0], [None, "p1", "p2", None]
    )
    fine = cohort("2", [None, "ms", "ms", "focal"], [None, 0.5, 2.0, 1.0], [None, "p1", "p3", None])
    rows = {r["variant"]: r for r in grid.cohort_lesions(coarse, fine)}
    assert rows["ms"] == {"variant": "ms", "n": [2, 2], "median_cm3": [2.0, 1.25], "same_pattern": 1}
    assert rows["focal_opposite"]["n"] == [1, 0] and rows["focal"]["n"] == [0, 1]
    other = cohort("x", [None, "ms", "tumour", "focal"], [None, 1, 1, 1], [None, "p1", None, None])
    with pytest.raises(SystemExit, match="not the same subjects"):
        grid.cohort_lesions(coarse, other)


def test_stage_seconds_read_the_demo_state(grid, tmp_path):
    import json

    state = {
        "data": {"done": True, "seconds": 29.3},
        "train:latent-norm-ae-2d": {"done": True, "seconds": 113.0},
    }
    (tmp_path / "demo_state.json").write_text(json.dumps(state))
    assert grid.stage_seconds(tmp_path) == {"cohort": 29.3, "autoencoder training": 113.0}


def test_make_grid_demo_refuses_a_cohort_of_another_grid(grid, tmp_path):
    import json

    (tmp_path / "demo_state.json").write_text(json.dumps({"data": {"done": True, "spacing_mm": 4.0}}))
    with pytest.raises(SystemExit, match="at 4.0 mm, not 2.0 mm"):
        grid.make_grid_demo(tmp_path, 2.0, [0])


def test_document_has_each_grid_run_and_case(grid):
    def run(auroc: float, with_pairs: bool = False) -> dict:
        v = {
            "residual_top200mm3": {"auroc": auroc, "ci": [auroc - 0.05, auroc + 0.05]},
            "residual_q999": {"auroc": auroc - 0.01, "ci": [0, 1]},
            "intensity_top200mm3": {"auroc": auroc, "ci": [0, 1]},
            "intensity_q999": {"auroc": auroc - 0.02, "ci": [0, 1]},
            "abs_z_q999": {"auroc": auroc, "ci": [0, 1]},
            "abs_z_top200mm3": {"auroc": auroc - 0.03, "ci": [0, 1]},
            "voxel_ap": 0.5,
            "kinds": {"ms": 0.8, "tumour": 0.9, "focal": 0.95, "focal_opposite": 0.55},
            "volume_classes": {
                "all": auroc,
                "rim only": 0.6,
                "within healthy range": 0.7,
                "beyond healthy range": 0.9,
            },
            "slice_classes": {"all": 0.8, "within healthy range": 0.65, "beyond healthy range": 0.95},
            "real": {"ms-patient07": {"slice": 0.6, "voxel_ap": 0.02}},
        }
        if with_pairs:
            v["vs_intensity"] = {"difference": 0.01, "ci": [-0.02, 0.04]}
            v["vs_normative"] = {"difference": 0.1, "ci": [0.05, 0.15]}
        return v

    classes = {"n": 10, "share_rim only": 0.1, "share_within healthy range": 0.3, "share_beyond healthy range": 0.6,
               "median_lesion_voxels": 5.0, "ceiling_scored_part": 0.95, "ceiling_beyond_range": 0.8}  # fmt: skip
    real = [{"subject_id": "ms-patient07", "lesion_slices": 14, "share_within healthy range": 0.57,
             "ceiling_beyond_range": 0.536}]  # fmt: skip

    def one_grid(spacing: float, ae: list[float]) -> dict:
        return {
            "demo": f"demo-{spacing:g}", "spacing_mm": spacing, "spatial_size": [40, 48, 40],
            "scan_classes": classes, "slice_classes": classes, "real_ceilings": real,
            "seconds": {"cohort": 30.0 * 8 / spacing, "autoencoder training": 100.0 * 8 / spacing},
            "runs": {"latent-norm-ae-2d": {str(i): run(a, True) for i, a in enumerate(ae)},
                     "intensity": {"0": run(0.85)}, "normative": {"0": run(0.74)}},
        }  # fmt: skip

    result = {
        "meta": {"command": "python benchmarks/grid_spacing.py", "machine": "m", "load": "l", "date": "d", "seconds": 1.0},
        "seeds": ["0", "1"], "grids": [one_grid(4.0, [0.86, 0.84]), one_grid(2.0, [0.90, 0.92])], "reading": "R",
        "cohort": [{"variant": "ms", "n": [48, 48], "median_cm3": [2.62, 1.64], "same_pattern": 12},
                   {"variant": "focal_opposite", "n": [18, 15], "median_cm3": [3.0, 3.4]}],
    }  # fmt: skip
    text = grid.to_markdown(result)
    assert text.startswith(
        "# The demo on a finer grid: the autoencoder and both baselines at 4 mm and at 2 mm"
    )
    assert "| 2 mm | latent-norm-ae-2d | `residual_top200mm3` | 0.910 (0.900, 0.920) | 0.900 (0.890, 0.910) (`residual_q999`) |" in text  # fmt: skip
    assert (
        "| 4 mm | normative | `abs_z_q999` | 0.740 | 0.710 (`abs_z_top200mm3`) | 0.600 | 0.700 | 0.900 | 0.800 | 0.900 "
        "| 0.950 | 0.550 | 0.800 | 0.650 | 0.950 | 0.500 |" in text
    )
    assert "| `ms` | 48 / 48 | 2.62 / 1.64 | 12 |" in text
    assert "| dark focal | 18 / 15 | 3.00 / 3.40 | – |" in text
    assert "| grid | cohort | autoencoder training |" in text and "| 2 mm | 120 | 400 |" in text
    assert "| 4 mm | +0.010 [-0.020, +0.040]; +0.010 [-0.020, +0.040] | +0.100 [+0.050, +0.150]; +0.100 [+0.050, +0.150] |" in text  # fmt: skip
    assert "| 2 mm | scans | 10 | 10 % | 30 % | 60 % | 5 | 0.950 | 0.800 |" in text
    assert "| 4 mm | lesion slices: within range, ceiling beyond only | 14: 57 %, 0.536 |" in text
    assert "| 2 mm | intensity | 0.600 / 0.020 |" in text
    assert text.rstrip().endswith("R")
    assert "rescored with `top24mm3`" not in text  # no rescored profile in this result

    result["fine_profile"] = {
        "statistic": "top24mm3",
        "runs": {
            "intensity": {
                "all": 0.85,
                "rim only": 0.5,
                "within healthy range": 0.55,
                "beyond healthy range": 0.97,
            }
        },
        "real": {"intensity": {"ms-patient07": 0.56}},
    }
    text = grid.to_markdown(result)
    assert "rescored with `top24mm3`" in text
    assert "| 2 mm | intensity | `intensity_slice_top24mm3` | 0.850 | 0.500 | 0.550 | 0.970 | 0.560 |" in text
    assert "| slices: beyond healthy range | ms-patient07 |" in text
