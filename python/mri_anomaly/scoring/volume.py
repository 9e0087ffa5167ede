"""Scoring one preprocessed volume: the method's raw scores, then standardised slice scores and volume scores.

:func:`raw_volume_scores` runs the method (a 2D method slice by slice in chunks of ``score.batch_size``, a 3D
method on the whole volume) and keeps what it says before any calibration (:class:`RawVolumeScores`).
:func:`finish_volume_scores` standardises the slice scores per position with the run's slice norms
(:mod:`mri_anomaly.scoring.slice_norms`), aggregates 2D slice scores to volume scores
(:mod:`mri_anomaly.scoring.aggregate`) and lays out one row per axial slice (:class:`VolumeScores`).
:func:`score_volume` does both; ``mri-anomaly score``, the detector, the export and the bundle all call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mri_anomaly.data import plain_tensor, slice_brain_fractions, slice_stacks
from mri_anomaly.scoring.aggregate import aggregate_slice_scores, slice_has_label
from mri_anomaly.scoring.brain import slice_brain_statistic
from mri_anomaly.scoring.maps import (
    erosion_voxels,
    is_map_slice_column,
    map_region,
    map_score_columns,
    map_volume_scores,
    model_spacing,
    restrict_map,
    top_voxels,
)
from mri_anomaly.scoring.nonfinite import nonfinite_to_most_anomalous
from mri_anomaly.scoring.slice_norms import standardise_slice_scores
from mri_anomaly.training.config import slice_context

__all__ = [
    "RawVolumeScores",
    "VolumeScores",
    "finish_volume_scores",
    "map_slice_columns_of",
    "raw_volume_scores",
    "raw_volume_scores_batch",
    "raw_volume_scores_of",
    "score_volume",
    "slice_score_columns_of",
    "volume_score_columns_of",
]


@dataclass
class VolumeScores:
    """Scores of one preprocessed volume.

    Attributes:
        scores: ``{column: float}`` volume scores.
        slices: one dict per axial slice (``slice, brain_fraction, counted, slice_label?`` + slice scores,
            standardised per position when the run has slice norms).
        maps: ``{name: (1, H, W, D)}`` voxel maps on the model grid.
        raw_slice_scores: ``{column: (D,)}`` the slice scores before standardisation (what norms are fitted on).
    """

    scores: dict[str, float]
    slices: list[dict[str, Any]] = field(default_factory=list)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    raw_slice_scores: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RawVolumeScores:
    """What the model says about one volume, before slice standardisation and aggregation (what calibration
    fits slice norms and thresholds on)."""

    # 3D methods' scores, and every method's map scores (<map>_q999, <map>_top200mm3)
    volume_scores: dict[str, float]
    slice_scores: dict[str, torch.Tensor]  # {column: (D,)} raw
    maps: dict[str, torch.Tensor]
    fraction: torch.Tensor  # (D,) brain fraction
    counted: torch.Tensor  # (D,) bool
    labels: torch.Tensor | None  # (D,) slice has lesion voxels


def map_slice_columns_of(method_cls) -> list[str]:
    """``<map>_slice_<statistic>`` for each voxel map: the slice profile of the map, its statistic
    (``AnomalyMethod.slice_statistic``) over the slice's part of the region the map scores use (the brain minus
    its rim, :func:`~mri_anomaly.scoring.maps.map_region`; a slice that is all rim uses its brain)."""
    return [f"{m}_slice_{method_cls.slice_statistic}" for m in method_cls.map_names]


def slice_score_columns_of(method_cls, config: Mapping[str, Any]) -> list[str]:
    """Columns of ``slice_scores.csv``: 2D — the method's slice scores, then the maps' slice profiles; 3D — the
    maps' slice profiles (:func:`map_slice_columns_of`)."""
    if config["spatial_dims"] == 2:
        return list(method_cls.score_names) + map_slice_columns_of(method_cls)
    return map_slice_columns_of(method_cls)


def volume_score_columns_of(method_cls, config: Mapping[str, Any]) -> list[str]:
    """Columns of ``scores.csv`` (volume scores), in order: 2D — each slice score's aggregates
    (:func:`~mri_anomaly.scoring.aggregate.aggregated_names`); 3D — the method's scores; then ``<map>_q999`` and
    ``<map>_top200mm3`` for each voxel map (:mod:`mri_anomaly.scoring.maps`)."""
    from mri_anomaly.scoring.aggregate import aggregated_names

    if config["spatial_dims"] == 2:
        top_k = int(config["score"]["top_k"])
        columns = [c for s in method_cls.score_names for c in aggregated_names(s, top_k)]
    else:
        columns = list(method_cls.score_names)
    return columns + map_score_columns(method_cls.map_names)


def _from_maps(
    maps: Mapping[str, torch.Tensor], image: torch.Tensor, config: Mapping[str, Any], statistic: str
) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The map volume scores, the maps' slice profiles (``<map>_slice_<statistic>``, (D,)) and the maps restricted
    to the scored region (:mod:`mri_anomaly.scoring.maps`)."""
    if not maps:
        return {}, {}, {}
    region = map_region(image, erosion_voxels(config))
    sx, sy, sz = model_spacing(config)
    voxel_mm3 = sx * sy * sz
    profiles = {
        f"{name}_slice_{statistic}": slice_brain_statistic(
            nonfinite_to_most_anomalous(m), image, statistic, region=region, voxel_mm3=voxel_mm3
        )
        for name, m in maps.items()
    }
    return (
        map_volume_scores(maps, region, top_voxels(config)),
        profiles,
        {name: restrict_map(m, region) for name, m in maps.items()},
    )


def _volume_context(
    item: Mapping[str, Any], config: Mapping[str, Any]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The item's image (C, H, W, D) and what every method output of it carries: brain fraction, counted
    slices, slice labels and the ``label``/``semi_target`` the method may read."""
    image = plain_tensor(item["image"]).float()
    fraction = slice_brain_fractions(image)
    min_fraction = float((config.get("slices") or {}).get("min_brain_fraction", 0.0))
    has_mask = item.get("mask") is not None and bool(item.get("has_mask", 1))
    context = {
        "fraction": fraction,
        "counted": fraction >= min_fraction,
        "labels": slice_has_label(plain_tensor(item["mask"])) if has_mask else None,
        "extra": {k: int(item[k]) for k in ("label", "semi_target") if isinstance(item.get(k), (int, float))},
    }
    return image, context


def _slice_wise(
    method,
    config: Mapping[str, Any],
    image: torch.Tensor,
    context: Mapping[str, Any],
    device: torch.device,
    want_maps: bool,
) -> RawVolumeScores:
    """A 2D method on the volume's axial slices, ``score.batch_size`` slices per forward pass (each with its
    ``slices.context`` neighbours as channels, :func:`~mri_anomaly.data.slice_stacks`); the maps are assembled into
    volumes (their volume scores need them even when they are not kept)."""
    slices = slice_stacks(image, slice_context(config))  # (D, C·(2r+1), H, W)
    chunk = int(config["score"]["batch_size"])
    parts_scores: dict[str, list[torch.Tensor]] = {}
    parts_maps: dict[str, list[torch.Tensor]] = {}
    for start in range(0, slices.shape[0], chunk):
        x = slices[start : start + chunk].to(device)
        out = method.score(
            {"image": x, **{k: torch.as_tensor([v] * x.shape[0]) for k, v in context["extra"].items()}}
        )
        for name, s in out.scores.items():
            parts_scores.setdefault(name, []).append(s.detach().double().cpu().reshape(-1))
        for name, m in out.maps.items():
            parts_maps.setdefault(name, []).append(m.detach().float().cpu())
    slice_columns = {name: nonfinite_to_most_anomalous(torch.cat(v)) for name, v in parts_scores.items()}
    maps = {
        name: torch.cat(v).permute(1, 2, 3, 0).contiguous() for name, v in parts_maps.items()
    }  # (1, H, W, D)
    map_scores, profiles, maps = _from_maps(maps, image, config, type(method).slice_statistic)
    slice_columns.update(profiles)
    return RawVolumeScores(
        map_scores,
        slice_columns,
        maps if want_maps else {},
        context["fraction"],
        context["counted"],
        context["labels"],
    )


@torch.no_grad()
def raw_volume_scores_batch(
    method,
    config: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    device: torch.device,
    want_maps: bool,
) -> list[RawVolumeScores]:
    """:func:`raw_volume_scores` of several items: a 3D method scores them in one forward pass (they share the
    model grid); a 2D method scores each volume's slices in chunks of ``score.batch_size``."""
    device = torch.device(device)
    prepared = [_volume_context(item, config) for item in items]
    if config["spatial_dims"] == 2:
        return [_slice_wise(method, config, image, context, device, want_maps) for image, context in prepared]
    if not prepared:
        return []
    x = torch.stack([image for image, _ in prepared]).to(device)
    shared = set.intersection(*(set(context["extra"]) for _, context in prepared))
    extra = {k: torch.as_tensor([context["extra"][k] for _, context in prepared]) for k in sorted(shared)}
    if x.shape[0] == 1:
        # A lone volume goes through as a pair (a copy): PyTorch's CPU conv3d takes a slower path with other
        # rounding for a batch of one, so a volume's score would depend on the volumes scored with it (and
        # calibration and scoring could disagree at the threshold). From two volumes on, scores are the same
        # for any batch composition (tested), and the pair is still faster than the single volume.
        x = torch.cat([x, x])
        extra = {k: torch.cat([v, v]) for k, v in extra.items()}
    out = method.score({"image": x, **extra})
    statistic = type(method).slice_statistic
    results = []
    for n, (image, context) in enumerate(prepared):
        volume_scores = {
            name: float(nonfinite_to_most_anomalous(s.detach().double().cpu().reshape(-1)[n : n + 1])[0])
            for name, s in out.scores.items()
        }
        maps = {name: m[n].detach().float().cpu() for name, m in out.maps.items()}  # (1, H, W, D) each
        map_scores, slice_columns, maps = _from_maps(maps, image, config, statistic)
        volume_scores.update(map_scores)
        if not want_maps:
            maps = {}
        results.append(
            RawVolumeScores(
                volume_scores, slice_columns, maps, context["fraction"], context["counted"], context["labels"]
            )
        )
    return results


def raw_volume_scores_of(
    method,
    config: Mapping[str, Any],
    preprocessed: Iterable[tuple[int, Mapping[str, Any] | None, str | None]],
    device: torch.device | str,
    want_maps: bool,
) -> Iterator[tuple[int, Mapping[str, Any] | None, RawVolumeScores | None, str | None]]:
    """Score ``(index, item or None, error or None)`` triples as they come, a forward pass per
    ``score.batch_size`` volumes (3D; 2D methods batch the slices of one volume).

    Yields:
        ``(index, item, raw scores, None)`` per scored item and ``(index, None, None, error)`` per unreadable
        one; errors come at once, scored items when their batch is full (or at the end).
    """
    per_pass = int(config["score"]["batch_size"]) if config["spatial_dims"] == 3 else 1
    pending: list[tuple[int, Mapping[str, Any]]] = []
    for index, item, error in preprocessed:
        if error is not None:
            yield index, None, None, error
            continue
        pending.append((index, item))
        if len(pending) >= per_pass:
            yield from _score_pending(method, config, pending, device, want_maps)
    if pending:
        yield from _score_pending(method, config, pending, device, want_maps)


def _score_pending(method, config, pending: list, device, want_maps: bool):
    raws = raw_volume_scores_batch(method, config, [item for _, item in pending], device, want_maps)
    done = [(index, item, raw, None) for (index, item), raw in zip(pending, raws, strict=True)]
    pending.clear()
    return done


def raw_volume_scores(
    method, config: Mapping[str, Any], item: Mapping[str, Any], device: torch.device, want_maps: bool
) -> RawVolumeScores:
    """What the method says about one preprocessed item (``image`` (C, H, W, D)), before calibration."""
    return raw_volume_scores_batch(method, config, [item], device, want_maps)[0]


def finish_volume_scores(
    output: RawVolumeScores, config: Mapping[str, Any], slice_norms: Mapping[str, Any] | None
) -> VolumeScores:
    """Standardise the slice scores per position (when the run has norms), aggregate 2D slice scores to volume
    scores, and lay out the slice rows."""
    slice_columns = standardise_slice_scores(output.slice_scores, slice_norms, output.fraction)
    if config["spatial_dims"] == 2:
        # the method's own slice scores; a map's volume scores are its own statistics (<map>_q999,
        # <map>_top200mm3), not aggregates of its slice profile
        own = {k: v for k, v in slice_columns.items() if not is_map_slice_column(k)}
        scores = aggregate_slice_scores(own, output.counted, int(config["score"]["top_k"]))
        scores.update(output.volume_scores)
    else:
        scores = dict(output.volume_scores)
    rows = []
    for k in range(output.fraction.numel()):
        row: dict[str, Any] = {
            "slice": k,
            "brain_fraction": round(float(output.fraction[k]), 6),
            "counted": int(output.counted[k]),
        }
        row["slice_label"] = int(output.labels[k]) if output.labels is not None else ""
        for name, v in slice_columns.items():
            row[name] = float(nonfinite_to_most_anomalous(v[k : k + 1])[0])
        rows.append(row)
    return VolumeScores(scores=scores, slices=rows, maps=output.maps, raw_slice_scores=output.slice_scores)


@torch.no_grad()
def score_volume(
    method,
    config: Mapping[str, Any],
    item: Mapping[str, Any],
    device: torch.device | str = "cpu",
    want_maps: bool = True,
    slice_norms: Mapping[str, Any] | None = None,
) -> VolumeScores:
    """Score one preprocessed item with a 2D (slice-wise) or 3D (volume-wise) method.

    Args:
        method: an :class:`~mri_anomaly.training.methods.AnomalyMethod` in eval mode.
        config: the run's validated config (``spatial_dims``, ``slices``, ``score``).
        item: ``{"image": (C, H, W, D), "mask"?: (1, H, W, D), ...}`` from the preprocessing chain.
        device: where the method runs.
        want_maps: keep the voxel maps (otherwise only scores and slice rows).
        slice_norms: the run's per-position slice norms (:mod:`mri_anomaly.scoring.slice_norms`); None: raw
            slice scores.

    Returns:
        a :class:`VolumeScores`.
    """
    return finish_volume_scores(
        raw_volume_scores(method, config, item, torch.device(device), want_maps), config, slice_norms
    )
