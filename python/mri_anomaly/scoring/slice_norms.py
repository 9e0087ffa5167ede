"""Slice scores standardised per slice position against healthy scans (a normative calibration of the score).

A raw slice score mixes what the method sees with where the slice lies: caps of the head and the big
central slices differ in size, content and in how well any model fits them, so raw slice scores track the
slice's brain fraction. Every volume is preprocessed onto the same fixed grid, so axial slice ``k`` is the
same position in every scan. The norms are fitted on the healthy ``validation`` scans at the end of
training and stored in ``RUN/thresholds.json`` (key ``slice_norms``); every slice score column ``s`` is
then reported as the robust z-score at its position::

    z_k = (s_k - median_k) / scale_k,   scale_k = max(1.4826 * MAD_k, floor)

where ``median_k`` and ``MAD_k`` are taken over the healthy validation scans' slice ``k`` (all of them,
counted or not) and ``floor = floor_fraction * median_k(1.4826 * MAD_k)`` keeps near-constant positions
(empty slices outside the head) from dividing by ~0. 2D volume scores (mean, max, top-k mean) aggregate
the standardised slice scores. Runs without stored norms report raw slice scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["MAD_TO_SD", "fit_slice_norms", "standardise_slice_scores"]

MAD_TO_SD = 1.4826
RULE = "robust z per axial slice position: (s - median) / max(1.4826 MAD, floor) over healthy validation scans"


def fit_slice_norms(
    slice_scores: Sequence[Mapping[str, Sequence[float] | np.ndarray | torch.Tensor]], floor_fraction: float = 0.1
) -> dict[str, Any]:
    """Per-position robust centre and scale of every slice score column.

    Args:
        slice_scores: one ``{column: (D,) slice scores}`` per healthy volume (same D for all).
        floor_fraction: the scale floor as a fraction of the median scale over positions.

    Returns:
        ``{"rule", "n_volumes", "depth", "floor_fraction", "columns": {column: {"center": [D], "scale": [D]}}}``.

    Raises:
        ValueError: no volumes, columns that differ between volumes, or depths that differ.
    """
    if not slice_scores:
        raise ValueError("no healthy volumes to fit slice norms on")
    columns = list(slice_scores[0])
    depth = None
    out: dict[str, Any] = {"rule": RULE, "n_volumes": len(slice_scores), "depth": 0,
                           "floor_fraction": float(floor_fraction), "columns": {}}
    for column in columns:
        rows = []
        for volume in slice_scores:
            if column not in volume:
                raise ValueError(f"slice score column {column!r} is missing from a volume (columns: {sorted(volume)})")
            rows.append(np.asarray(torch.as_tensor(volume[column]).double().cpu().numpy(), dtype=np.float64).reshape(-1))
        if depth is None:
            depth = rows[0].size
        if any(r.size != depth for r in rows):
            raise ValueError(f"slice norms need one fixed grid: volumes have {sorted({r.size for r in rows})} slices")
        table = np.stack(rows)  # (n, D)
        center = np.median(table, axis=0)
        scale = MAD_TO_SD * np.median(np.abs(table - center), axis=0)
        positive = scale[scale > 0]
        floor = floor_fraction * float(np.median(positive)) if positive.size else 1.0
        scale = np.maximum(scale, max(floor, 1e-12))
        out["columns"][column] = {"center": center.tolist(), "scale": scale.tolist()}
    out["depth"] = int(depth or 0)
    return out


def standardise_slice_scores(
    slice_scores: Mapping[str, torch.Tensor], norms: Mapping[str, Any] | None
) -> dict[str, torch.Tensor]:
    """``{column: (D,)}`` robust z-scores at each position (columns without norms are returned unchanged).

    Raises:
        ValueError: a column's depth differs from the norms' (the run's grid).
    """
    if not norms:
        return dict(slice_scores)
    fitted = norms.get("columns") or {}
    out: dict[str, torch.Tensor] = {}
    for name, values in slice_scores.items():
        v = torch.as_tensor(values).double().reshape(-1)
        if name not in fitted:
            out[name] = v
            continue
        center = torch.as_tensor(fitted[name]["center"], dtype=torch.float64)
        scale = torch.as_tensor(fitted[name]["scale"], dtype=torch.float64)
        if center.numel() != v.numel():
            raise ValueError(
                f"slice scores {name!r} have {v.numel()} slices but the run's slice norms {center.numel()}: "
                "the volume is not on the run's grid"
            )
        out[name] = (v - center) / scale
    return out
