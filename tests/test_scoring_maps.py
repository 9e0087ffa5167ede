"""Map post-processing (mri_anomaly.scoring.maps): the eroded brain, restricted maps and their volume scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mri_anomaly.scoring.maps import (
    dilate_box,
    erosion_voxels,
    map_region,
    map_volume_scores,
    restrict_map,
    top_voxels,
)
from mri_anomaly.scoring.volume import score_volume, volume_score_columns_of
from mri_anomaly.training import validate_config
from mri_anomaly.training.methods import get_method_class
from torch.nn import functional as F


def _box_brain() -> torch.Tensor:
    image = torch.zeros(1, 9, 9, 7)
    image[:, 1:8, 1:8, 1:6] = 0.5  # a 7 x 7 x 5 brain
    return image


def test_region_is_the_brain_eroded_by_a_box():
    image = _box_brain()
    assert torch.equal(map_region(image, (0, 0, 0)), image > 0)
    region = map_region(image, (1, 1, 1))
    expected = torch.zeros(1, 9, 9, 7, dtype=torch.bool)
    expected[:, 2:7, 2:7, 2:5] = True
    assert torch.equal(region, expected)
    assert int(map_region(image, (2, 2, 1)).sum()) == 3 * 3 * 3
    # an erosion that removes everything falls back to the brain
    assert torch.equal(map_region(image, (4, 4, 4)), image > 0)


@pytest.mark.parametrize("radius", [(0, 0, 0), (1, 1, 1), (2, 2, 2), (1, 2, 3), (0, 3, 1), (6, 1, 9)])
@pytest.mark.parametrize("density", [0.002, 0.05, 0.5])
def test_dilate_box_is_the_binary_max_pool(radius, density):
    # the reference: max_pool3d of the 2r + 1 box, padded with -inf (beyond the grid adds nothing)
    generator = torch.Generator().manual_seed(len(radius) * 7 + int(density * 1000))
    mask = torch.rand(2, 9, 11, 7, generator=generator) < density
    kernel = tuple(2 * r + 1 for r in radius)
    expected = F.max_pool3d(mask.float()[None], kernel, stride=1, padding=radius)[0] > 0.5
    assert torch.equal(dilate_box(mask, radius), expected)


def test_restricted_map_and_its_quantile_by_hand():
    image = _box_brain()
    region = map_region(image, (1, 1, 1))
    volume_map = torch.arange(float(9 * 9 * 7)).reshape(1, 9, 9, 7)
    volume_map[0, 1, 1, 1] = float("inf")  # on the rim: does not count
    restricted = restrict_map(volume_map, region)
    inside = volume_map[region]
    assert torch.equal(restricted[region], inside)
    assert bool((restricted[~region] == inside.min()).all())
    scores = map_volume_scores({"m": volume_map}, region, n_top=3)
    assert scores["m_q999"] == pytest.approx(np.quantile(inside.numpy(), 0.999))
    # the rim's inf does not count
    assert scores["m_top200mm3"] == pytest.approx(np.sort(inside.numpy())[-3:].mean())
    assert map_volume_scores({"m": volume_map}, region, n_top=1)["m_top200mm3"] == float(inside.max())
    # more voxels than the region has: the region's mean
    whole = map_volume_scores({"m": volume_map}, region, n_top=10_000)["m_top200mm3"]
    assert whole == pytest.approx(float(inside.double().mean()))
    with pytest.raises(ValueError, match="n_top must be >= 1"):
        map_volume_scores({"m": volume_map}, region, n_top=0)


def test_top_volume_of_a_small_lesion_is_its_own_value_where_the_quantile_is_not():
    """A lesion of 3 voxels in a region of 5000: q999 (the 5th highest voxel) stays healthy, the top 200 mm³ of a
    4 mm grid (3 voxels) is the lesion."""
    region = torch.ones(1, 10, 20, 25, dtype=torch.bool)
    volume_map = torch.linspace(0.0, 1.0, 5000).reshape(1, 10, 20, 25)
    volume_map[0, 5, 5, 5:8] = 3.0
    scores = map_volume_scores({"m": volume_map}, region, n_top=3)
    assert scores["m_top200mm3"] == pytest.approx(3.0)
    assert scores["m_q999"] < 1.0


def test_erosion_in_mm_follows_the_model_spacing():
    config = {"preprocessing": {"spacing": [4.0, 4.0, 2.0]}, "score": {"map_erosion_mm": 8.0}}
    assert erosion_voxels(config) == (2, 2, 4)
    assert erosion_voxels({"preprocessing": {"spacing": [4.0, 4.0, 4.0]}, "score": {}}) == (0, 0, 0)


def test_top_volume_voxels_follow_the_model_spacing():
    assert top_voxels({"preprocessing": {"spacing": [4.0, 4.0, 4.0]}}) == 3  # 200 / 64 = 3.1
    assert top_voxels({"preprocessing": {"spacing": [1.0, 1.0, 1.0]}}) == 200
    assert top_voxels({"preprocessing": {"spacing": [2.0, 2.0, 2.0]}}) == 25
    assert top_voxels({"preprocessing": {"spacing": [8.0, 8.0, 8.0]}}) == 1  # at least one voxel


def _ae_config(erosion_mm: float) -> dict:
    return validate_config(
        {
            "method": "latent-norm-ae",
            "spatial_dims": 2,
            "preprocessing": {"spacing": [8.0, 8.0, 8.0], "spatial_size": [24, 24, 24]},
            "model": {"latent_dim": 4, "channels": [4, 8], "pooled_size": 2},
            "train": {"phases": {"train": {"steps": 1}}},
            "score": {"map_erosion_mm": erosion_mm, "top_k": 3},
        }
    )


def test_every_map_gives_a_volume_column_and_written_maps_are_restricted():
    config = _ae_config(8.0)
    cls = get_method_class("latent-norm-ae")
    assert volume_score_columns_of(cls, config) == [
        "latent_norm_mean",
        "latent_norm_max",
        "latent_norm_top3_mean",
        "residual_q999",
        "residual_top200mm3",
    ]
    assert volume_score_columns_of(get_method_class("intensity"), {**config, "spatial_dims": 3}) == [
        "intensity_q999",
        "intensity_top200mm3",
    ]
    torch.manual_seed(0)
    method = cls(2, 1, latent_dim=4, channels=[4, 8], pooled_size=2).eval()
    image = torch.zeros(1, 24, 24, 24)
    image[:, 4:20, 4:20, 4:20] = torch.rand(1, 16, 16, 16) * 0.5 + 0.25
    result = score_volume(method, config, {"image": image, "label": 0})
    residual = result.maps["residual"]
    region = map_region(image, (1, 1, 1))
    assert bool((residual[~region] == residual[region].min()).all())
    assert result.scores["residual_q999"] == pytest.approx(
        float(torch.quantile(residual[region].double(), 0.999)), rel=1e-6
    )
    # 8 mm voxels: one voxel fills 200 mm³, the region's maximum
    assert result.scores["residual_top200mm3"] == pytest.approx(float(residual[region].max()), rel=1e-6)
    # the slice profile: the mean of the map's highest 200 mm³ in each slice's part of the region (raw: no norms
    # here); at 8 mm voxels one voxel, the slice's maximum there
    profile = result.raw_slice_scores["residual_slice_top200mm3"]
    for k in range(4 + 1, 20 - 1):  # slices with region voxels
        assert float(profile[k]) == pytest.approx(float(residual[..., k][region[..., k]].max()), rel=1e-6)
    # a 2D run's volume columns aggregate only the method's own slice scores, not the map profiles
    assert not any(c.startswith("residual_slice") for c in result.scores)
    # calibration asks for no maps: the map score is the same
    no_maps = score_volume(method, config, {"image": image, "label": 0}, want_maps=False)
    assert no_maps.maps == {} and no_maps.scores["residual_q999"] == result.scores["residual_q999"]
    assert torch.equal(no_maps.raw_slice_scores["residual_slice_top200mm3"], profile)


@pytest.mark.parametrize("sign", ["absolute", "positive", "negative"])
def test_latent_norm_residual_sign(sign: str):
    cls = get_method_class("latent-norm-ae")
    torch.manual_seed(1)
    method = cls(2, 1, latent_dim=4, channels=[4, 8], pooled_size=2, residual=sign).eval()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        x_hat, _ = method.net(x)
        out = method.score({"image": x})
    expected = {
        "absolute": (x - x_hat).abs(),
        "positive": (x - x_hat).clamp_min(0),
        "negative": (x_hat - x).clamp_min(0),
    }
    torch.testing.assert_close(out.maps["residual"], expected[sign])
    assert bool((out.maps["residual"] >= 0).all())
    with pytest.raises(ValueError, match="residual must be one of"):
        cls(2, 1, residual="signed")
