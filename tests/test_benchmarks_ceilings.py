"""``benchmarks/ceilings.py``: the lesion-slice and scan classes, the ceilings and the per-class AUROCs on hand-made
arrays and tables (no scoring)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch


@pytest.fixture(scope="module")
def sc(load_benchmark):
    return load_benchmark("ceilings")


def test_lesion_slice_classes_by_hand(sc):
    image = np.full((4, 4, 4), 0.5)
    image[1, 1, :] = [0.2, 0.9, 0.6, 0.4]  # healthy voxels of the scored part span 0.2 .. 0.9
    lesion = np.zeros((4, 4, 4), bool)
    part = np.zeros((4, 4, 4), bool)
    part[1:3, 1:3, :] = True
    lesion[0, 0, 0] = True  # slice 0: outside the scored part only
    lesion[2, 2, 1], image[2, 2, 1] = True, 0.7  # slice 1: inside the healthy range
    lesion[2, 2, 2], image[2, 2, 2] = True, 0.95  # slice 2: brighter than every healthy voxel
    lesion[2, 1, 3], image[2, 1, 3] = True, 0.1  # slice 3: darker than every healthy voxel
    lesion[0, 0, 3], image[0, 0, 3] = True, 5.0  # ... and one outside the part: not read
    rows = sc.lesion_slice_classes(image, lesion, part)
    assert [r["slice"] for r in rows] == [0, 1, 2, 3]
    assert [r["class"] for r in rows] == [sc.CLASSES[0], sc.CLASSES[1], sc.CLASSES[2], sc.CLASSES[2]]
    assert [(r["lesion_voxels"], r["in_part"], r["beyond"]) for r in rows] == [
        (1, 0, 0),
        (1, 1, 0),
        (1, 1, 1),
        (2, 1, 1),
    ]
    # the healthy range from another reference: with a healthy 5.0 in it, slice 2's 0.95 lies inside the range
    reference = part.copy()
    reference[3, 3, 0], image[3, 3, 0] = True, 5.0
    rows = sc.lesion_slice_classes(image, lesion, part, reference)
    assert [r["class"] for r in rows] == [sc.CLASSES[0], sc.CLASSES[1], sc.CLASSES[1], sc.CLASSES[2]]


def test_scored_part_falls_back_to_the_brain(sc):
    image = torch.zeros(1, 9, 9, 3)
    image[0, 1:8, 1:8, 0] = 1.0  # slice 0: a 7 x 7 brain, a 2-voxel box erosion keeps its 3 x 3 centre
    image[0, 3:6, 3:6, 1] = 1.0  # slice 1: a 3 x 3 patch, eroded away entirely in its slice
    part = sc.scored_part(image, (2, 2, 0))
    assert part[..., 0].sum() == 9 and part[3:6, 3:6, 0].all()
    assert part[..., 1].sum() == 9 and part[3:6, 3:6, 1].all()  # the slice's brain
    assert not part[..., 2].any()


def test_ceiling_and_class_table(sc):
    # 0.9 = 0.5 * 1 + 0.1 * 0.5 + 0.4 * x  ->  x = 0.875
    assert sc.needed_within(0.9, 0.1, 0.4) == pytest.approx(0.875)
    assert sc.ceiling(10, 10) == 1.0 and sc.ceiling(0, 10) == 0.5 and sc.ceiling(3, 4) == pytest.approx(0.875)
    classes = pd.DataFrame(
        {
            "group": ["ms", "ms", "ms", "tumour"],
            "size_stratum": ["small", "small", "small", "large"],
            "lesion_voxels": [1, 2, 3, 40],
            "class": [sc.CLASSES[0], sc.CLASSES[1], sc.CLASSES[2], sc.CLASSES[2]],
        }
    )
    table = {(r["group"], r["size_stratum"]): r for r in sc.class_table(classes)}
    ms = table[("ms", "small")]
    assert ms["n"] == 3 and ms["median_lesion_voxels"] == 2
    assert ms["ceiling_scored_part"] == pytest.approx((2 + 0.5) / 3)
    assert ms["ceiling_beyond_range"] == pytest.approx((1 + 1.0) / 3)
    assert table[("all", "all")]["n"] == 4 and ("ms", "large") not in table


def test_class_aurocs_by_hand(sc):
    slices = pd.DataFrame(
        {
            "subject_id": ["a", "a", "b", "b", "h", "h"],
            "slice": [0, 1, 0, 1, 0, 1],
            "slice_label": [1, 0, 1, 1, 0, 0],
            "s": [0.9, 0.1, 0.05, 0.6, 0.2, 0.3],
        }
    )
    classes = pd.DataFrame(
        {
            "subject_id": ["a", "b", "b"],
            "slice": [0, 0, 1],
            "class": [sc.CLASSES[2], sc.CLASSES[0], sc.CLASSES[2]],
        }
    )
    out = sc.class_aurocs(slices, classes, ["s"])["s"]
    assert out[sc.CLASSES[2]] == 1.0  # 0.9 and 0.6 above the negatives 0.1, 0.2, 0.3
    assert out[sc.CLASSES[0]] == 0.0  # 0.05 below every negative
    assert out["all"] == pytest.approx(6 / 9) and sc.CLASSES[1] not in out
    with pytest.raises(ValueError, match="no lesion here"):
        sc.class_aurocs(slices, classes.iloc[:2], ["s"])


def test_lesion_scan_class_by_hand(sc):
    image = np.array([0.2, 0.9, 0.5, 0.7, 0.95, 3.0])
    region = np.array([True, True, True, True, True, False])
    lesion = np.array([False, False, False, True, False, True])
    # the lesion's 0.7 lies inside the healthy 0.2 .. 0.95; its 3.0 lies outside the region
    assert sc.lesion_scan_class(image, lesion, region) == {
        "lesion_voxels": 2,
        "in_part": 1,
        "beyond": 0,
        "class": sc.CLASSES[1],
    }
    image[3] = 0.1  # darker than every healthy voxel
    assert sc.lesion_scan_class(image, lesion, region)["class"] == sc.CLASSES[2]
    assert sc.lesion_scan_class(image, lesion & ~region, region)["class"] == sc.CLASSES[0]


def test_volume_class_aurocs_by_hand(sc):
    volume = pd.DataFrame(
        {"subject_id": list("abcde"), "label": [1, 1, 1, 0, 0], "v": [0.9, 0.1, 0.6, 0.5, 0.2]}
    )
    scans = pd.DataFrame({"subject_id": list("abc"), "class": [sc.CLASSES[2], sc.CLASSES[1], sc.CLASSES[2]]})
    out = sc.volume_class_aurocs(volume, scans, "v")
    assert out[sc.CLASSES[2]] == 1.0 and out[sc.CLASSES[1]] == 0.0
    assert out["all"] == pytest.approx(4 / 6) and sc.CLASSES[0] not in out
    # with groups: the within-range scans per kind
    scans["group"] = ["focal", "ms", "focal_opposite"]
    out = sc.volume_class_aurocs(volume.assign(group="stale"), scans, "v")
    assert out[f"{sc.CLASSES[1]}:ms"] == 0.0 and f"{sc.CLASSES[1]}:focal_opposite" not in out
