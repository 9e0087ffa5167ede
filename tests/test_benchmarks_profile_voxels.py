"""``benchmarks/profile_voxels.py``: the voxels counted are those the slice profile averages, and the counts and
AUROCs of its rows on hand-made slices (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def pv(load_benchmark):
    return load_benchmark("profile_voxels")


def test_the_top_voxels_are_those_the_profile_averages(pv):
    from mri_anomaly.scoring.brain import slice_brain_statistic, top_statistic_voxels

    gen = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 10, 12, 6)
    image[:, 1:9, 1:11, :] = torch.rand(1, 8, 10, 6, generator=gen) + 0.1
    image[:, :, :, 5] = 0.0  # a slice without brain
    region = torch.zeros(1, 10, 12, 6, dtype=torch.bool)
    region[:, 3:7, 3:9, :4] = True  # slice 4: brain but no region voxel, read in its brain
    volume_map = torch.rand(1, 10, 12, 6, generator=gen, dtype=torch.float64)
    read = pv.read_voxels(image, region)
    assert read[..., 4].sum() == 80 and read[..., 0].sum() == 24 and not read[..., 5].any()
    n = top_statistic_voxels("top200mm3", 64.0)
    profile = slice_brain_statistic(volume_map, image, "top200mm3", region=region, voxel_mm3=64.0)
    for k, top in enumerate(pv.top_voxel_indices(volume_map[0].numpy(), read, n)[:5]):
        assert top.size == 3
        assert float(volume_map[0, ..., k].numpy().ravel()[top].mean()) == pytest.approx(float(profile[k]))


def test_slice_top_voxels_counts_lesion_voxels_among_the_highest(pv):
    volume_map = np.zeros((4, 4, 3))
    read = np.ones((4, 4, 3), bool)
    lesion = np.zeros((4, 4, 3), bool)
    volume_map[1, 1, 0], lesion[1, 1, 0] = 5.0, True  # slice 0: the lesion is the highest voxel
    volume_map[2, 2, 1], lesion[0, 0, 1] = 5.0, True  # slice 1: a brighter healthy voxel, the lesion lower
    lesion[3, 3, 2], read[3, 3, 2] = True, False  # slice 2: the lesion outside the voxels read
    hits = pv.slice_top_voxels(volume_map, read, lesion, 1)
    assert [h["top_on_lesion"] for h in hits] == [1, 0, 0]
    assert [h["lesion_read"] for h in hits] == [1, 1, 0]
    assert [h["n_read"] for h in hits] == [16, 16, 15]
    labels = np.array([1.0, 1.0, 0.0])
    row = pv.summarise(hits, labels, np.array([True, True, True]), np.array([0.9, 0.1, 0.5]))
    assert row["lesion_slices"] == 2 and row["seen"] == 2 and row["lesion_free_slices"] == 1
    assert row["slices_with_top_on_lesion"] == 1 and (row["top_on_lesion"], row["top_total"]) == (1, 2)
    assert row["auroc_profile"] == pytest.approx(0.5)  # 0.9 above 0.5, 0.1 below
    assert row["auroc_size"] == pytest.approx(1.0)  # 16 voxels read in the lesion slices, 15 in the other
    # a scan without lesion-free counted slices has no AUROC
    row = pv.summarise(hits, labels, np.array([True, True, False]), np.array([0.9, 0.1, 0.5]))
    assert row["auroc_profile"] is None and row["auroc_size"] is None


def test_demo_parser_reads_seeds_and_the_real_folder(pv, tmp_path):
    """The shared parser of the demo benchmarks: the demo's own runs (seed 0) first, each seed once, and the real
    cases' folder under the script's own option name."""
    from _common import demo_benchmark_parser, demo_seeds

    args = demo_benchmark_parser(pv.__doc__, seeds=True, real_flag="--data").parse_args(
        ["--demo", str(tmp_path), "--seeds", "2", "0", "1", "--data", str(tmp_path / "real")]
    )
    assert demo_seeds(args) == [0, 2, 1] and args.data == tmp_path / "real"
    args = demo_benchmark_parser(pv.__doc__, seeds=True).parse_args(["--demo", str(tmp_path)])
    assert demo_seeds(args) == [0] and not hasattr(args, "data")
