"""Statistics of voxel maps over the brain only.

After preprocessing, background voxels are exactly 0 and brain voxels > 0 (skull-stripped input, or the
brain mask applied by the intensity scaling; the same rule as :func:`mri_anomaly.data.slice_brain_fractions`).
A score that averages a map over the whole box also measures how much of the box is brain (a big axial
slice has more voxels with a non-trivial density than a cap of the head); averaging over brain voxels only
removes that confound. Where a sample or slice has no brain voxel the statistic falls back to all voxels
(such slices do not count towards volume scores anyway).
"""

from __future__ import annotations

import re

import torch

__all__ = [
    "brain_mask",
    "brain_mean",
    "brain_quantile",
    "brain_top_mean",
    "slice_brain_statistic",
    "top_statistic_voxels",
]


def brain_mask(image: torch.Tensor) -> torch.Tensor:
    """(N, 1, *spatial) bool: voxels > 0 in any channel of ``image`` (N, C, *spatial)."""
    return (torch.as_tensor(image) > 0).any(dim=1, keepdim=True)


def _masks_or_all(mask: torch.Tensor, n: int) -> torch.Tensor:
    """(n, V) bool: each row's mask, or all True for a row without any voxel in its mask."""
    m = mask.reshape(n, -1)
    empty = ~m.any(dim=1, keepdim=True)
    return m | empty


def brain_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``values`` (N, C, *spatial) over the voxels of ``mask`` (N, 1, *spatial), all
    channels pooled; samples with an empty mask use all voxels. Returns (N,) in ``values``' dtype."""
    n, c = values.shape[:2]
    m = _masks_or_all(mask, n).to(values.dtype)  # (N, V)
    v = values.reshape(n, c, -1)
    return (v * m[:, None]).sum(dim=(1, 2)) / (m.sum(dim=1) * c)


def brain_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample ``q``-quantile (linear interpolation) of the channel-mean of ``values`` (N, C, *spatial)
    over the voxels of ``mask`` (N, 1, *spatial); samples with an empty mask use all voxels. Returns (N,)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    n = values.shape[0]
    m = _masks_or_all(mask, n)
    v = values.mean(dim=1).reshape(n, -1)
    return torch.stack([torch.quantile(v[i][m[i]].double(), q).to(values.dtype) for i in range(n)])


def brain_top_mean(values: torch.Tensor, mask: torch.Tensor, n_top: int) -> torch.Tensor:
    """Per-sample mean of the ``n_top`` highest values of the channel-mean of ``values`` (N, C, *spatial) over the
    voxels of ``mask`` (N, 1, *spatial) (all of them where there are fewer); samples with an empty mask use all
    voxels. Returns (N,)."""
    if n_top < 1:
        raise ValueError(f"n_top must be >= 1, got {n_top}")
    n = values.shape[0]
    m = _masks_or_all(mask, n)
    v = values.mean(dim=1).reshape(n, -1)
    out = []
    for i in range(n):
        inside = v[i][m[i]].double()
        out.append(torch.topk(inside, min(n_top, inside.numel())).values.mean().to(values.dtype))
    return torch.stack(out)


def top_statistic_voxels(statistic: str, voxel_mm3: float) -> int:
    """How many voxels of ``voxel_mm3`` the statistic ``"top<V>mm3"`` averages: round(V / voxel_mm3), at least 1.

    Raises:
        ValueError: ``statistic`` is not of that form.
    """
    match = re.fullmatch(r"top(\d+(?:\.\d+)?)mm3", statistic)
    if match is None:
        raise ValueError(f"not a top-volume statistic: {statistic!r} (use e.g. 'top200mm3')")
    return max(1, int(round(float(match.group(1)) / float(voxel_mm3))))


def slice_brain_statistic(
    volume_map: torch.Tensor,
    image: torch.Tensor,
    statistic: str = "mean",
    region: torch.Tensor | None = None,
    voxel_mm3: float = 1.0,
) -> torch.Tensor:
    """One value per axial slice of a voxel map over that slice's brain voxels (or its ``region`` voxels).

    Args:
        volume_map: (C, H, W, D) map on the model grid.
        image: (C', H, W, D) the preprocessed image (brain = voxels > 0 in any channel).
        statistic: ``"mean"``, ``"q<percent>"`` (e.g. ``"q99"``: the 99th percentile) or ``"top<V>mm3"`` (the mean
            of the slice's highest V mm³: :func:`top_statistic_voxels` voxels).
        region: optional (1, H, W, D) bool, e.g. the eroded brain the map scores use
            (:func:`mri_anomaly.scoring.maps.map_region`): a slice with region voxels uses them, a slice without
            (a cap of the head, all rim) its brain voxels.
        voxel_mm3: the volume of one voxel in mm³ (for ``"top<V>mm3"``).

    Returns:
        (D,) float64; a slice without brain voxels uses all its voxels.
    """
    m = torch.as_tensor(volume_map).detach().double().cpu()
    x = torch.as_tensor(image).detach().cpu()
    per_slice = m.permute(3, 0, 1, 2)  # (D, C, H, W)
    mask = brain_mask(x.permute(3, 0, 1, 2))  # (D, 1, H, W)
    if region is not None:
        inner = torch.as_tensor(region).detach().cpu().bool().permute(3, 0, 1, 2)  # (D, 1, H, W)
        has_inner = inner.flatten(1).any(dim=1)[:, None, None, None]
        mask = torch.where(has_inner, inner, mask)
    if statistic == "mean":
        return brain_mean(per_slice, mask)
    if statistic.startswith("q"):
        return brain_quantile(per_slice, mask, float(statistic[1:]) / 100.0)
    if statistic.startswith("top"):
        return brain_top_mean(per_slice, mask, top_statistic_voxels(statistic, voxel_mm3))
    raise ValueError(
        f"unknown slice statistic {statistic!r} (use 'mean', 'q<percent>', e.g. 'q99', or 'top<V>mm3', e.g. 'top200mm3')"
    )
