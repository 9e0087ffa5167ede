"""VolumeDataset / SliceDataset: item convention, collation, caching modes, seeded augmentation,
the minimum-brain-content slice rule and slice labels."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, MetaTensor, list_data_collate
from mri_anomaly.data import (
    TINY_PREPROCESSING,
    PreprocessedCache,
    RandLesiond,
    SliceDataset,
    VolumeDataset,
    load_datalist,
    slice_brain_fractions,
    slice_stack,
    slice_stacks,
)
from mri_anomaly.data.loading import LoadVolume


@pytest.fixture(scope="module")
def items(demo_cohort):
    dl = load_datalist(demo_cohort)
    return dl["test"] + dl["general"][:1]  # healthy + anomalous (with masks) + an unlabelled one


def test_volume_items_follow_the_convention_and_collate(items):
    ds = VolumeDataset(items, preprocessing_config=TINY_PREPROCESSING)
    assert ds.cache == "memory" and len(ds) == len(items)
    by_id = {ds[i]["subject_id"]: ds[i] for i in range(len(ds))}
    healthy, anomalous, unknown = by_id["demo-test-000"], by_id["demo-anom-001"], by_id["demo-gen-000"]
    for d in by_id.values():
        assert isinstance(d["image"], MetaTensor) and tuple(d["image"].shape) == (1, 24, 24, 24)
        assert d["image"].dtype == torch.float32 and 0 <= d["image"].min() and d["image"].max() <= 1
        assert d["mask"].shape == d["image"].shape
        assert d["image_path"].endswith(d["subject_id"] + ".nii.gz")
    assert (healthy["label"], healthy["has_mask"], healthy["semi_target"]) == (0, 0, 0)
    assert healthy["mask"].sum() == 0
    assert (anomalous["label"], anomalous["has_mask"]) == (1, 1) and anomalous["mask"].sum() > 0
    assert (unknown["label"], unknown["has_mask"]) == (-1, 0)
    batch = list_data_collate([healthy, anomalous, unknown])
    assert tuple(batch["image"].shape) == (3, 1, 24, 24, 24)
    assert batch["label"].tolist() == [0, 1, -1] and batch["subject_id"][1] == "demo-anom-001"


def test_disk_cache_gives_the_same_items(items, tmp_path):
    mem = VolumeDataset(items[:2], preprocessing_config=TINY_PREPROCESSING, cache="memory")
    disk = VolumeDataset(items[:2], preprocessing_config=TINY_PREPROCESSING, cache="disk", cache_dir=tmp_path)
    auto = VolumeDataset(
        items[:2],
        preprocessing_config=TINY_PREPROCESSING,
        cache="auto",
        cache_dir=tmp_path,
        memory_limit_bytes=1000,
    )
    assert auto.cache == "disk"
    for i in range(2):
        assert torch.equal(mem[i]["image"], disk[i]["image"]) and torch.equal(
            mem[i]["image"], auto[i]["image"]
        )
    assert any(disk.cache_dir.iterdir())


def test_a_shared_cache_gives_the_same_items_as_copies_and_keys_only_plain_items(items):
    alone = VolumeDataset(items, preprocessing_config=TINY_PREPROCESSING, cache="none")
    cache = PreprocessedCache()
    uncached = VolumeDataset(items, preprocessing_config=TINY_PREPROCESSING, cache="none", shared_cache=cache)
    first = [uncached[i] for i in range(len(items))]
    assert len(cache.items) == len(items) and len(cache.transforms) == 1
    first[0]["image"] += 1.0  # a returned item is a copy: changing it changes nothing cached
    cached = VolumeDataset(items, preprocessing_config=TINY_PREPROCESSING, cache="memory", shared_cache=cache)
    assert (
        cached.transform is uncached.transform
    )  # one chain per config (MONAI's inverse checks it by identity)
    for i in range(len(items)):
        for key in ("image", "mask"):
            assert torch.equal(cached[i][key], alone[i][key]) and torch.equal(uncached[i][key], alone[i][key])
        assert cached[i]["image"].meta["filename_or_obj"] == alone[i]["image"].meta["filename_or_obj"]
    # an image given as an array has no key: never served from (or put into) the cache
    arrays = [{"image": LoadVolume()(items[i]["image"]), "label": 0} for i in range(2)]
    in_memory = VolumeDataset(
        arrays, preprocessing_config=TINY_PREPROCESSING, cache="none", shared_cache=cache
    )
    assert not torch.equal(in_memory[0]["image"], in_memory[1]["image"])
    assert len(cache.items) == len(items)


def test_seeded_augmentation_is_reproducible_and_worker_safe(items):
    def make(seed):
        return VolumeDataset(
            items[:1],
            preprocessing_config=TINY_PREPROCESSING,
            seed=seed,
            augment=[RandLesiond("image", kinds=("focal", "tumour"), semi_target_value=-1)],
        )

    a, b, c = make(0), make(0), make(1)
    da, db, dc = a[0], b[0], c[0]
    assert da["label"] == 1 and da["semi_target"] == -1 and da["mask"].sum() > 0
    assert torch.equal(da["image"], db["image"]) and torch.equal(da["mask"], db["mask"])
    assert not torch.equal(da["mask"], dc["mask"])
    assert (
        not torch.equal(a[0]["mask"], da["mask"]) or a[0]["lesion_kind"] != da["lesion_kind"]
    )  # new draw per access

    # with two workers, MONAI's DataLoader seeds each worker: the same torch seed gives the same batches
    def run():
        torch.manual_seed(123)
        loader = DataLoader(make(0), batch_size=1, num_workers=2, shuffle=False)
        return [bt["mask"].sum().item() for _ in range(2) for bt in loader]

    assert run() == run()


def test_slice_dataset_brain_rule_and_slice_labels(items):
    vols = VolumeDataset(items, preprocessing_config=TINY_PREPROCESSING)
    slices = SliceDataset(vols, min_brain_fraction=0.2)
    for v in range(len(vols)):
        frac = slice_brain_fractions(vols[v]["image"])
        assert slices.volume_slices(v) == [k for k in range(24) if frac[k] >= 0.2]
    assert 0 < len(slices) < 24 * len(vols)
    n_pos = 0
    for i in range(len(slices)):
        s = slices[i]
        vol = vols[slices.index[i][0]]
        assert tuple(s["image"].shape) == (1, 24, 24) and not isinstance(s["image"], MetaTensor)
        assert torch.equal(s["image"], vol["image"].as_tensor()[..., s["slice_index"]])
        if vol["has_mask"]:
            assert s["slice_label"] == int(vol["mask"][..., s["slice_index"]].sum() > 0)
            n_pos += s["slice_label"]
        else:
            assert s["slice_label"] == (0 if vol["label"] == 0 else -1)
    assert n_pos > 0
    assert len(SliceDataset(vols, min_brain_fraction=0.0)) == 24 * len(vols)
    batch = next(iter(DataLoader(slices, batch_size=8)))
    assert tuple(batch["image"].shape) == (8, 1, 24, 24) and batch["slice_index"].shape == (8,)
    with pytest.raises(ValueError):
        SliceDataset(vols, min_brain_fraction=1.5)


def test_slice_dataset_lists_unreadable_volumes(items, tmp_path):
    bad = {"image": str(tmp_path / "missing.nii.gz"), "subject_id": "gone"}
    vols = VolumeDataset([items[0], bad], preprocessing_config=TINY_PREPROCESSING, on_error="return")
    slices = SliceDataset(vols, min_brain_fraction=0.2)
    assert [e["subject_id"] for e in slices.errors] == ["gone"] and "file not found" in slices.errors[0][
        "error"
    ]
    assert {v for v, _ in slices.index} == {0}


def test_slice_stacks_hold_each_slice_with_its_neighbours_and_zeros_beyond_the_volume():
    image = (
        torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) + 1
    )  # (C=2, H, W, D=5), no zeros
    stacks = slice_stacks(image, 2)
    assert tuple(stacks.shape) == (5, 2 * 5, 3, 4)
    for k in range(5):
        for position, j in enumerate(range(k - 2, k + 3)):
            part = stacks[k, 2 * position : 2 * position + 2]
            expected = image[..., j] if 0 <= j < 5 else torch.zeros(2, 3, 4)
            assert torch.equal(part, expected), (k, j)
        assert torch.equal(slice_stack(image, k, 2), stacks[k])
        assert torch.equal(stacks[k, 4:6], image[..., k])  # the centre: channels [r*C, (r+1)*C)
    assert torch.equal(slice_stacks(image, 0), image.permute(3, 0, 1, 2))
    with pytest.raises(ValueError, match="context"):
        slice_stacks(image, -1)
    with pytest.raises(IndexError, match="outside"):
        slice_stack(image, 5, 1)


def test_slice_dataset_with_context_stacks_neighbours_and_keeps_the_centre_mask(items):
    vols = VolumeDataset(items, preprocessing_config=TINY_PREPROCESSING)
    plain = SliceDataset(vols, min_brain_fraction=0.2)
    stacked = SliceDataset(vols, min_brain_fraction=0.2, context=1)
    assert stacked.index == plain.index  # the centre slice's brain decides, as without context
    for i in range(len(stacked)):
        s, p = stacked[i], plain[i]
        v, k = stacked.index[i]
        volume = vols[v]["image"].as_tensor()
        assert tuple(s["image"].shape) == (3, 24, 24)
        assert torch.equal(s["image"][1:2], p["image"])
        for channel, j in ((0, k - 1), (2, k + 1)):
            expected = volume[..., j] if 0 <= j < 24 else torch.zeros(1, 24, 24)
            assert torch.equal(s["image"][channel : channel + 1], expected)
        assert torch.equal(s["mask"], p["mask"]) and s["slice_label"] == p["slice_label"]
    with pytest.raises(ValueError, match="context"):
        SliceDataset(vols, context=-1)
