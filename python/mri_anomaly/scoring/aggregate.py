"""From slice scores to a volume score, and from voxel maps to a slice profile.

**The rule (2D models).** A 2D model scores every axial slice of a volume. Only slices with enough brain
count towards the volume score: the slice's brain fraction (share of its voxels inside the brain, > 0
after preprocessing; :func:`mri_anomaly.data.slice_brain_fractions`) must be at least ``min_brain_fraction`` — the same rule that picks the training
slices, so the model is never judged on slices it never saw (near-empty caps of the head). When no slice
qualifies, all slices count. Non-finite slice scores become the most anomalous value first
(:func:`~mri_anomaly.scoring.nonfinite_to_most_anomalous`). For every slice score ``s`` three volume
scores are reported::

    s_mean        mean over the counted slices            (diffuse change)
    s_max         maximum over the counted slices          (one bad slice is enough)
    s_top{k}_mean mean of the k highest counted slices     (between the two; k = min(top_k, #counted))

Slice scores are standardised per slice position first when the run has slice norms
(:mod:`mri_anomaly.scoring.slice_norms`). **3D models** give one score per volume themselves; their per-slice
profile is a statistic of each voxel map over each axial slice's brain voxels
(:func:`mri_anomaly.scoring.brain.slice_brain_statistic`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mri_anomaly.scoring.nonfinite import nonfinite_to_most_anomalous

__all__ = ["AGGREGATIONS", "aggregate_slice_scores", "aggregated_names", "slice_has_label"]

AGGREGATIONS = ("mean", "max", "top_k_mean")


def aggregated_names(score_name: str, top_k: int) -> list[str]:
    """Column names of the volume scores derived from slice score ``score_name``."""
    return [f"{score_name}_mean", f"{score_name}_max", f"{score_name}_top{top_k}_mean"]


def slice_has_label(mask: torch.Tensor) -> torch.Tensor:
    """(D,) int: 1 where the voxel mask (C, H, W, D) has any positive voxel in the slice, else 0."""
    return (torch.as_tensor(mask) > 0).any(dim=0).flatten(0, 1).any(dim=0).long()


def aggregate_slice_scores(
    slice_scores: Mapping[str, torch.Tensor], counted: torch.Tensor, top_k: int = 5
) -> dict[str, float]:
    """Volume scores from slice scores (see the module docstring for the rule).

    Args:
        slice_scores: ``{name: (D,)}`` scores of the D axial slices, higher = more anomalous.
        counted: (D,) bool, the slices that count (brain fraction >= the threshold).
        top_k: k of the top-k mean (>= 1).

    Returns:
        ``{f"{name}_mean", f"{name}_max", f"{name}_top{top_k}_mean": float}`` for every name.

    Raises:
        ValueError: ``top_k`` < 1 or shapes that disagree.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    counted = torch.as_tensor(counted, dtype=torch.bool).reshape(-1)
    if not bool(counted.any()):
        counted = torch.ones_like(counted)
    out: dict[str, float] = {}
    for name, values in slice_scores.items():
        v = nonfinite_to_most_anomalous(torch.as_tensor(values).detach().double().reshape(-1).cpu())
        if v.shape != counted.shape:
            raise ValueError(f"slice scores {name!r} have {v.numel()} values for {counted.numel()} slices")
        kept = v[counted]
        k = min(top_k, kept.numel())
        mean_name, max_name, top_name = aggregated_names(name, top_k)
        out[mean_name] = float(kept.mean())
        out[max_name] = float(kept.max())
        out[top_name] = float(kept.topk(k).values.mean())
    return out
