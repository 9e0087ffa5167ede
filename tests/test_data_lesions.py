"""RandLesion / RandLesiond: the mask and the intensity change agree, healthy voxels stay untouched,
intensity sign follows the contrast, determinism under set_random_state, 2D slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from mri_anomaly.data import RandLesion, RandLesiond
from mri_anomaly.data.phantom import phantom_arrays


@pytest.fixture(scope="module")
def volume() -> MetaTensor:
    img, _, brain = phantom_arrays(shape=(40, 48, 40), spacing=(4.0, 4.0, 4.0), lesion_center_mm=None)
    x = torch.from_numpy(0.7 * img / img.max())[None]  # brain below 0.7, as after percentile scaling
    x[0, 0, 0, 0] = 1.0  # the range the output is clipped to: [0, 1]
    return MetaTensor(x, affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0], dtype=torch.float64)))


def _ms_like(shape) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    m[26:30, 20:24, 18:21] = 1.0  # away from the phantom's central ventricle
    m[24:26, 26:30, 22:24] = 1.0
    return m


@pytest.mark.parametrize("kind", ["focal", "tumour", "ms"])
@pytest.mark.parametrize("contrast", ["flair", "t1"])
def test_mask_and_change_agree_and_healthy_part_untouched(volume, kind, contrast):
    lesion = RandLesion(
        kinds=(kind,), contrast=contrast, mass_effect=(0.0, 0.0), ms_masks=[_ms_like(volume.shape[1:])]
    )
    lesion.set_random_state(3)
    out, mask = lesion(volume)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, volume.affine)
    assert out.shape == volume.shape and mask.shape == volume.shape
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    inside, outside = mask > 0.5, mask < 0.5
    diff = (out - volume).as_tensor()
    assert torch.equal(out[outside], volume[outside])  # healthy part bit-identical
    brain_median = volume[volume > 0.05].median().item()
    assert diff[inside].abs().mean().item() > 0.15 * brain_median
    if kind == "ms":
        assert torch.equal(inside[0], torch.from_numpy(_ms_like(volume.shape[1:]) > 0.5) & (volume[0] > 0.05))
    if kind in ("ms",) or (kind == "focal" and contrast == "flair"):
        # MS lesions: hyperintense in FLAIR, hypointense in T1 (focal: the usual sign unless drawn opposite)
        sign = 1 if contrast == "flair" else -1
        assert sign * diff[inside].mean().item() > 0
    assert lesion.last_kind == kind


@pytest.mark.parametrize(
    "opposite_sign_prob, variant, sign", [(0.0, "focal", 1), (1.0, "focal_opposite", -1)]
)
def test_focal_variant_records_the_drawn_sign(volume, opposite_sign_prob, variant, sign):
    lesion = RandLesion(kinds=("focal",), contrast="flair", opposite_sign_prob=opposite_sign_prob)
    lesion.set_random_state(1)
    out, mask = lesion(volume)
    diff = (out - volume).as_tensor()[mask > 0.5]
    assert lesion.last_kind == "focal" and lesion.last_variant == variant
    assert sign * diff.mean().item() > 0  # FLAIR: hyperintense, or hypointense when drawn opposite


def test_tumour_mass_effect_is_confined_to_its_support(volume):
    lesion = RandLesion(kinds=("tumour",), mass_effect=(0.5, 0.5), tumour_radius_mm=(16.0, 16.0))
    lesion.set_random_state(0)
    out, mask = lesion(volume)
    changed = (out != volume)[0]
    assert (changed & (mask[0] < 0.5)).any()  # tissue displaced beyond the mask
    # nothing changes farther than 2.5 R from the lesion
    idx = np.argwhere(mask[0].numpy() > 0.5)
    centre = idx.mean(0)
    far = np.argwhere(changed.numpy())
    dist_mm = np.sqrt((((far - centre) * 4.0) ** 2).sum(1))
    assert dist_mm.max() <= 2.5 * 16.0 + 1.3 * 16.0 * 0.5 + 8.0


def test_determinism_and_randomness(volume):
    a = RandLesion(kinds=("focal", "tumour"))
    a.set_random_state(7)
    b = RandLesion(kinds=("focal", "tumour"))
    b.set_random_state(7)
    xa, ma = a(volume)
    xb, mb = b(volume)
    assert torch.equal(xa, xb) and torch.equal(ma, mb)
    masks = {tuple(np.argwhere(a(volume)[1][0].numpy() > 0)[0]) for _ in range(4)}
    assert len(masks) > 1  # different draws place lesions differently


def test_prob_zero_returns_input_and_empty_mask(volume):
    out, mask = RandLesion(prob=0.0)(volume)
    assert torch.equal(out, volume) and mask.sum() == 0


def test_2d_slice_and_plain_tensor():
    img, _, _ = phantom_arrays(shape=(40, 48, 40), spacing=(4.0, 4.0, 4.0), lesion_center_mm=None)
    sl = torch.from_numpy(img[..., 20] / img.max())[None]
    lesion = RandLesion(kinds=("focal",), focal_radius_mm=(2.0, 4.0))  # plain tensor: 1 mm voxels assumed
    lesion.set_random_state(1)
    out, mask = lesion(sl)
    assert out.shape == (1, 40, 48) and mask.sum() >= 1
    assert torch.equal(out[mask < 0.5], sl[mask < 0.5])


def test_errors():
    with pytest.raises(ValueError, match="unknown lesion kind"):
        RandLesion(kinds=("cyst",))
    with pytest.raises(ValueError, match="needs ms_masks"):
        RandLesion(kinds=("ms",))
    with pytest.warns(UserWarning, match="no ms_masks"):
        lesion = RandLesion(kinds=("ms", "focal"))
    assert lesion.kinds == ("focal",)
    with pytest.raises(ValueError, match="expects"):
        RandLesion()(torch.zeros(2, 8, 8, 8))


def test_dict_twin_sets_label_semi_target_and_unites_masks(volume):
    old = torch.zeros_like(volume)
    old[0, 0, 0, 0] = 1.0
    t = RandLesiond("image", kinds=("tumour",), semi_target_value=-1)
    t.set_random_state(5)
    d = t({"image": volume, "mask": old, "label": 0, "semi_target": 0, "has_mask": 0})
    assert d["label"] == 1 and d["semi_target"] == -1 and d["has_mask"] == 1 and d["lesion_kind"] == "tumour"
    assert d["mask"][0, 0, 0, 0] == 1.0 and d["mask"].sum() > 1
    t2 = RandLesiond("image", kinds=("tumour",), semi_target_value=-1)
    t2.set_random_state(5)
    d2 = t2({"image": volume, "mask": old, "label": 0, "semi_target": 0})
    assert torch.equal(d["image"], d2["image"])
    d3 = RandLesiond("image", prob=0.0)({"image": volume, "label": 0})
    assert d3["label"] == 0 and d3["lesion_kind"] == "" and d3["mask"].sum() == 0


def _pair(volume, kind, ms_masks=None, **kwargs):
    """The same lesion drawn with and without partial volume: (image, mask, next draw) of each."""
    out = []
    for pv in (False, True):
        lesion = RandLesion(kinds=(kind,), mass_effect=(0.0, 0.0), clip=None, partial_volume=pv,
                            ms_masks=ms_masks, **kwargs)  # fmt: skip
        lesion.set_random_state(5)
        x, m = lesion(volume)
        out.append(((x - volume).as_tensor()[0].numpy(), m[0].numpy() > 0.5, lesion.R.uniform()))
    return out


@pytest.mark.parametrize("kind", ["focal", "tumour"])
def test_partial_volume_keeps_mask_and_draws_and_scales_the_change_at_the_edge(volume, kind):
    (d0, m0, r0), (d1, m1, r1) = _pair(
        volume, kind, focal_radius_mm=(6.0, 6.0), tumour_radius_mm=(14.0, 14.0)
    )
    assert np.array_equal(m0, m1) and r0 == r1  # the same lesion: mask and every random draw
    assert (d1[m0] != 0).all() and (d1 != 0).sum() > m0.sum()  # voxels the lesion partly fills change too
    if kind == "focal":  # one part: a voxel changes by the fraction of it the lesion fills
        ratio = d1[m0] / d0[m0]
        assert ratio.min() > 0 and ratio.max() == pytest.approx(1.0, abs=1e-5)  # whole voxels: as before
        assert (ratio < 0.99).any()  # edge voxels: less
        assert np.abs(d1).sum() < 1.5 * np.abs(d0).sum()
    # nothing changes far from the lesion: only voxels it partly fills, next to the mask or next to a voxel the
    # mask leaves out (outside the brain)
    from scipy import ndimage

    near = ndimage.binary_dilation(m0, structure=np.ones((3, 3, 3)), iterations=2)
    assert not ((d1 != 0) & ~near).any()


def test_partial_volume_ms_changes_each_voxel_by_its_fraction(volume):
    fraction = _ms_like(volume.shape[1:]) * 0.8
    fringe = [((20, 20, 20), 0.1), ((22, 30, 20), 0.2), ((12, 24, 20), 0.15)]  # outside the mask (< 0.25)
    for p, f in fringe:
        fraction[p] = f
    (_, m0, r0), (d1, m1, r1) = _pair(volume, "ms", ms_masks=[fraction], ms_mask_threshold=0.25)
    assert np.array_equal(m0, m1) and r0 == r1
    x = volume[0].numpy()
    assert np.array_equal(m1, (fraction >= 0.25) & (x > 0.05))
    assert (d1[fraction == 0] == 0).all()
    # a voxel outside the mask moves by w * fraction * (lesion level - x), with one w and level for the lesion:
    # change / fraction is a line in x of slope -w, w in [0.75, 1]
    xs = np.array([x[p] for p, _ in fringe], np.float64)
    ys = np.array([d1[p] / f for p, f in fringe], np.float64)
    slope, intercept = np.polyfit(xs, ys, 1)
    assert np.allclose(slope * xs + intercept, ys, atol=1e-5)
    assert -1.0 <= slope <= -0.75
    level = intercept / -slope  # FLAIR MS: 1.45-1.8 times the brain's median
    assert 1.4 < level / np.median(x[x > 0.05]) < 1.85
