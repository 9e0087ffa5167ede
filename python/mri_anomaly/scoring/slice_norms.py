"""Slice scores standardised per slice position against healthy scans (a normative calibration of the score).

A raw slice score mixes what the method sees with where the slice lies: caps of the head and the big
central slices differ in size, content and in how well any model fits them, so raw slice scores track the
slice's brain fraction. Every volume is preprocessed onto the same fixed grid, so axial slice ``k`` is the
same position in every scan. At one position, slices still differ in how much brain they hold (head size,
shape, position), and a score can track that too (a voxel-wise normative map, for one, lights up where a
bigger brain extends past the healthy median). So the norm of a slice score is conditional on its position
*and* its brain fraction ``f``, like a normative model with a covariate. The norms are fitted on the
healthy ``validation`` scans at the end of training and stored in ``RUN/thresholds.json`` (key
``slice_norms``); every slice score column ``s`` is then reported as::

    z_k = (s_k - center_k - slope_k * (f_k - fmedian_k)) / scale_k,   scale_k = max(1.4826 * MAD_k, floor)

``fmedian_k`` is the median brain fraction of the healthy validation scans' slice ``k`` and ``center_k`` the
median score there (plus the median residual once the slope is taken out). ``slope_k = beta * sd_k / fsd_k``:
``sd_k`` and ``fsd_k`` are the robust SDs (1.4826 MAD) of the score and of the brain fraction at position ``k``,
and ``beta`` (one per column) is the least-squares coefficient of the centred score in ``sd_k`` units (clipped at
±5) on the centred brain fraction in ``fsd_k`` units, over the counted validation slices, so that positions whose
scores vary a lot do not dominate. ``MAD_k`` is that of the residual at position ``k``, and
``floor = floor_fraction * median_k(1.4826 * MAD_k)`` keeps near-constant positions (empty slices outside the
head) from dividing by ~0. 2D volume scores (mean, max, top-k mean) aggregate the standardised slice scores. Runs
without stored norms report raw slice scores; norms fitted without brain fractions standardise by position alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mri_anomaly.errors import UserInputError
from mri_anomaly.scoring.maps import MAP_SLICE_PROFILE, is_map_slice_column

__all__ = ["MAD_TO_SD", "check_map_profile", "fit_slice_norms", "standardise_slice_scores"]

MAD_TO_SD = 1.4826
RULE = (
    "robust z per axial slice position, conditional on the slice's brain fraction: "
    "(s - median_k - slope (f - fmedian_k)) / max(1.4826 MAD_k, floor) over healthy validation scans"
)


def _as_row(v: Any) -> np.ndarray:
    """A per-slice profile as a float64 (D,) array of its own (a copy: a stored profile may be read-only, and torch
    warns when it wraps one; a tensor goes through ``.numpy()``: NumPy 2 deprecates the ``__array__`` MONAI's
    MetaTensor inherits, which takes no ``copy``)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    return np.array(v, dtype=np.float64).reshape(-1)


def _floored(scale: np.ndarray, floor_fraction: float) -> np.ndarray:
    """``scale`` with a floor of ``floor_fraction`` x its median over the positions where it is > 0."""
    positive = scale[scale > 0]
    floor = floor_fraction * float(np.median(positive)) if positive.size else 1.0
    return np.maximum(scale, max(floor, 1e-12))


def fit_slice_norms(
    slice_scores: Sequence[Mapping[str, Sequence[float] | np.ndarray | torch.Tensor]],
    brain_fractions: Sequence[Sequence[float] | np.ndarray | torch.Tensor] | None = None,
    floor_fraction: float = 0.1,
    counted: Sequence[Sequence[bool] | np.ndarray | torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Per-position robust centre and scale (and a brain-fraction slope) of every slice score column.

    Args:
        slice_scores: one ``{column: (D,) slice scores}`` per healthy volume (same D for all).
        brain_fractions: one (D,) brain fraction per volume; None: standardise by position alone.
        floor_fraction: the scale floor as a fraction of the median scale over positions.
        counted: one (D,) bool per volume, the slices that fit the slope (the scorer's counted slices); None:
            every slice with brain.

    Returns:
        ``{"rule", "n_volumes", "depth", "floor_fraction", "brain_fraction_center": [D] | None,
        "columns": {column: {"center": [D], "scale": [D], "slope": [D]}}}``.

    Raises:
        ValueError: no volumes, columns that differ between volumes, or depths that differ.
    """
    if not slice_scores:
        raise ValueError("no healthy volumes to fit slice norms on")

    def table_of(rows: list[np.ndarray], what: str) -> np.ndarray:
        if len({r.size for r in rows}) != 1:
            raise ValueError(
                f"slice norms need one fixed grid: {what} have {sorted({r.size for r in rows})} slices"
            )
        return np.stack(rows)

    fraction = None
    if brain_fractions is not None:
        if len(brain_fractions) != len(slice_scores):
            raise ValueError(
                f"{len(brain_fractions)} brain-fraction profiles for {len(slice_scores)} volumes"
            )
        fraction = table_of([_as_row(f) for f in brain_fractions], "brain fractions")
    fits_slope = None
    if fraction is not None:
        fits_slope = fraction > 0
        if counted is not None:
            fits_slope &= table_of([_as_row(c) for c in counted], "counted masks").astype(bool)
    out: dict[str, Any] = {
        "rule": RULE,
        "map_profile": MAP_SLICE_PROFILE,
        "n_volumes": len(slice_scores),
        "depth": 0,
        "floor_fraction": float(floor_fraction),
        "brain_fraction_center": None,
        "columns": {},
    }
    f_dev = None
    if fraction is not None:
        f_center = np.median(fraction, axis=0)
        f_dev = fraction - f_center
        out["brain_fraction_center"] = f_center.tolist()
    for column in slice_scores[0]:
        rows = []
        for volume in slice_scores:
            if column not in volume:
                raise ValueError(
                    f"slice score column {column!r} is missing from a volume (columns: {sorted(volume)})"
                )
            rows.append(_as_row(volume[column]))
        table = table_of(rows, "volumes")  # (n, D)
        if fraction is not None and fraction.shape != table.shape:
            raise ValueError(f"brain fractions {fraction.shape} do not match the slice scores {table.shape}")
        center = np.median(table, axis=0)
        dev = table - center
        slope = np.zeros(table.shape[1])
        if f_dev is not None:
            # one correlation-like coefficient for all positions, in robust-SD units at each position, so that
            # positions whose scores vary a lot do not dominate; per position it is a slope in score units
            score_sd = _floored(MAD_TO_SD * np.median(np.abs(dev), axis=0), floor_fraction)
            fraction_sd = MAD_TO_SD * np.median(np.abs(f_dev), axis=0)
            used = fits_slope & (fraction_sd > 1e-6)
            z = np.clip(dev / score_sd, -5.0, 5.0)
            g = np.divide(f_dev, fraction_sd, out=np.zeros_like(f_dev), where=fraction_sd > 1e-6)
            denominator = float(np.sum(g[used] ** 2))
            if denominator > 0:
                beta = float(np.sum(z[used] * g[used]) / denominator)
                slope = np.divide(
                    beta * score_sd, fraction_sd, out=np.zeros_like(score_sd), where=fraction_sd > 1e-6
                )
            dev = dev - slope * f_dev
        residual_center = np.median(dev, axis=0)
        center = center + residual_center
        scale = _floored(MAD_TO_SD * np.median(np.abs(dev - residual_center), axis=0), floor_fraction)
        out["columns"][column] = {"center": center.tolist(), "scale": scale.tolist(), "slope": slope.tolist()}
        out["depth"] = int(table.shape[1])
    return out


def check_map_profile(norms: Mapping[str, Any] | None, where: str, columns: Sequence[str] = ()) -> None:
    """Refuse slice norms whose map slice profiles were made another way, or that have none for the map profiles
    among ``columns`` (the run's slice columns): norms fitted by an older version, which would leave those
    columns raw or standardise them wrongly.

    Raises:
        UserInputError: naming ``where`` (the run or program) and how to refit them.
    """
    if not norms:
        return
    fitted = norms.get("columns") or {}
    stale = (
        [c for c in fitted if is_map_slice_column(c)] if norms.get("map_profile") != MAP_SLICE_PROFILE else []
    )
    # a profile with no norms: fitted on another statistic (the package's was q99 before top200mm3), or never
    stale += [c for c in columns if is_map_slice_column(c) and c not in fitted]
    if stale:
        raise UserInputError(
            f"{where}: its slice norms predate the maps' slice profiles as they are made now ({MAP_SLICE_PROFILE}, "
            f"named <map>_slice_<statistic>): {', '.join(stale)}; recalibrate the run: `mri-anomaly train --config "
            "RUN/config.yaml --datalist DATALIST --out RUN --resume` scores a finished run's validation scans again"
        )


def standardise_slice_scores(
    slice_scores: Mapping[str, torch.Tensor],
    norms: Mapping[str, Any] | None,
    brain_fraction: torch.Tensor | np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """``{column: (D,)}`` robust z-scores at each position (columns without norms are returned unchanged).

    Args:
        slice_scores: ``{column: (D,)}`` raw slice scores of one volume.
        norms: from :func:`fit_slice_norms` (None: unchanged).
        brain_fraction: (D,) the volume's brain fraction per slice; needed when the norms have slopes.

    Raises:
        ValueError: a column's depth differs from the norms' (the run's grid), or a brain fraction is needed
            and missing.
    """
    if not norms:
        return dict(slice_scores)
    fitted = norms.get("columns") or {}
    f_center = norms.get("brain_fraction_center")
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
        slope = torch.as_tensor(fitted[name].get("slope", 0.0), dtype=torch.float64)
        if f_center is not None and bool((slope != 0).any()):
            if brain_fraction is None:
                raise ValueError(
                    "these slice norms depend on the brain fraction: pass each slice's brain fraction"
                )
            f = torch.from_numpy(_as_row(brain_fraction))
            center = center + slope * (f - torch.as_tensor(f_center, dtype=torch.float64))
        out[name] = (v - center) / scale
    return out
