"""Voxel maps as volume scores: restricted to the brain minus a rim, then a high quantile.

Every map a method returns (a residual, a likelihood map, the image itself for the ``intensity`` baseline)
gets the same post-processing, so methods and baselines are compared on equal terms:

* **Region.** The brain (voxels > 0 of the preprocessed image, :func:`~mri_anomaly.scoring.brain.brain_mask`)
  eroded by ``score.map_erosion_mm`` (a box of ``round(mm / spacing)`` voxels per axis on the model grid). At
  the brain's edge the intensity jumps from tissue to 0: reconstructions blur it and likelihood models find it
  improbable, so raw maps light up a rim around every brain, healthy or not (on the demo the latent-norm AE's
  residual had voxel AP 0.008 with the rim, and 2D Glow's ``nll`` 0.019). Restricting maps to the eroded brain
  is the standard post-processing of unsupervised brain-MRI anomaly maps (Baur et al., MedIA 2021). The cost:
  anomalies inside the rim (juxtacortical lesions) are not seen. Where erosion leaves nothing, the brain is used.
* **Maps.** Outside the region a map takes its minimum over the region (it ranks as least anomalous there);
  these are the maps written to disk. Slice profiles of 3D runs (``<map>_slice_<statistic>``) are computed from
  the unrestricted maps over each slice's brain, as before.
* **Score.** ``<map>_q999``: the 99.9th percentile of the map over the region, one volume score per map (the
  statistic of the ``intensity`` baseline: a small lesion is a few hundred voxels of a brain of tens of
  thousands, so means and lower quantiles dilute it). Non-finite map values count as the most anomalous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from mri_anomaly.scoring.brain import brain_mask
from mri_anomaly.scoring.nonfinite import nonfinite_to_most_anomalous

__all__ = [
    "MAP_QUANTILE",
    "MAP_SLICE_PROFILE",
    "erosion_voxels",
    "is_map_slice_column",
    "map_region",
    "map_score_columns",
    "map_volume_scores",
    "restrict_map",
]

MAP_QUANTILE = ("q999", 0.999)


MAP_SLICE_PROFILE = "statistic of the map over the slice's part of the brain minus score.map_erosion_mm"
"""How a map's slice profile ``<map>_slice_<statistic>`` is made; stored with the slice norms fitted on it
(:func:`mri_anomaly.scoring.slice_norms.fit_slice_norms`), so norms fitted on another profile are refused."""


def is_map_slice_column(column: str) -> bool:
    """Whether a slice score column is a map's slice profile (``<map>_slice_mean`` / ``<map>_slice_q<p>``)."""
    return re.search(r"_slice_(mean|q\d+)$", column) is not None


def map_score_columns(map_names: Sequence[str]) -> list[str]:
    """The volume score columns made from maps: ``<map>_q999`` per map."""
    return [f"{name}_{MAP_QUANTILE[0]}" for name in map_names]


def erosion_voxels(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``score.map_erosion_mm`` as voxels per axis of the model grid (``preprocessing.spacing``; 1 mm when the
    config keeps the input spacing)."""
    from mri_anomaly.data.preprocessing import resolve_preprocessing_config

    mm = float((config.get("score") or {}).get("map_erosion_mm", 0.0) or 0.0)
    spacing = resolve_preprocessing_config(config.get("preprocessing")).get("spacing") or (1.0, 1.0, 1.0)
    if isinstance(spacing, (int, float)):
        spacing = (float(spacing),) * 3
    return tuple(int(round(mm / float(s))) for s in spacing)  # type: ignore[return-value]


def map_region(image: torch.Tensor, erosion: Sequence[int]) -> torch.Tensor:
    """(1, H, W, D) bool: the brain of ``image`` (C, H, W, D) eroded by ``erosion`` voxels per axis (a box);
    the brain itself when the erosion removes every voxel."""
    brain = brain_mask(image[None])[0]  # (1, H, W, D)
    if not any(erosion) or not bool(brain.any()):
        return brain
    kernel = tuple(2 * int(e) + 1 for e in erosion)
    outside = (~brain).float()[None]  # (1, 1, H, W, D)
    # a voxel survives when no non-brain voxel is within the box around it (zero padding: beyond the grid is
    # treated as brain, the preprocessing's crop margin keeps the brain off the border)
    near_outside = F.max_pool3d(outside, kernel, stride=1, padding=tuple(e for e in erosion))[0]
    region = brain & (near_outside < 0.5)
    return region if bool(region.any()) else brain


def restrict_map(volume_map: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``volume_map`` (1, H, W, D) with every voxel outside ``region`` set to the map's minimum inside it."""
    inside = nonfinite_to_most_anomalous(volume_map[region].double().reshape(-1))
    if inside.numel() == 0:
        return volume_map
    return torch.where(region, volume_map, volume_map.new_tensor(float(inside.min())))


def map_volume_scores(maps: Mapping[str, torch.Tensor], region: torch.Tensor) -> dict[str, float]:
    """``{<map>_q999: float}``: the quantile of each map (1, H, W, D) over ``region`` (1, H, W, D)."""
    suffix, q = MAP_QUANTILE
    out = {}
    for name, volume_map in maps.items():
        values = nonfinite_to_most_anomalous(volume_map[region].double().reshape(-1))
        out[f"{name}_{suffix}"] = float(torch.quantile(values, q)) if values.numel() else float("nan")
    return out
