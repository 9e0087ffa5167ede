"""Scoring a datalist with a trained run: ``mri-anomaly score --run RUN --datalist D --section test --out OUT``.

Every volume is preprocessed exactly as in training (the run's config), scored by the method, and written
out as soon as it is done, so an interrupted run loses nothing and a second run over the same ``OUT``
skips the volumes already in ``scores.csv``. A volume that cannot be read is recorded in ``errors.csv``
and skipped (it is retried on the next run, and its error row is replaced); only bad input files are
recorded so (:class:`~mri_anomaly.data.InputFileError`): any other exception stops the run with its traceback.
``mri-anomaly score`` exits with status 3 when any scan failed. Under ``torchrun`` every rank
scores a shard of the items (item ``i`` goes to rank ``i mod W``) into ``OUT/shards/rank<r>/``; rank 0
merges the shards into the same tables one process writes (rows in datalist order: sections in the
datalist's order, items in their order).

**Layout of OUT/**

``scores.csv``
    one row per volume: ``subject_id, image, section, label`` (empty where unknown; ``image`` is the first
    contrast of a multi-contrast item, the space of its maps), the score columns,
    ``flag:<column>`` (1 when the score is above the run's threshold for that column, 0 otherwise; only
    for columns with a threshold), ``map:<name>`` (path of the voxel map relative to OUT),
    ``cropped_foreground_fraction`` (share of the scan's foreground the fixed model grid cut off; above 1 %
    ``score`` also warns, naming the file).
    Score columns: 3D models — the method's scores (``AnomalyMethod.score_names``), one per volume.
    2D models — for every slice score ``s``: ``s_mean``, ``s_max``, ``s_top{k}_mean`` over the slices
    with brain fraction >= ``slices.min_brain_fraction`` (see :mod:`mri_anomaly.scoring.aggregate`).
``slice_scores.csv``
    long format, one row per axial slice of the model grid: ``subject_id, section, slice, brain_fraction,
    counted`` (1 if brain fraction >= ``slices.min_brain_fraction``: the slices 2D volume scores aggregate
    over, and the ones slice-level evaluation uses), ``slice_label`` (1 if the preprocessed
    mask has voxels in the slice, 0 if not, empty without a mask), then score columns — 2D: the method's
    slice scores; then, for every voxel map, ``<map>_slice_top200mm3``: the mean of its highest 200 mm³ in the slice's part of
    the brain minus the rim (``score.map_erosion_mm``) that the map's volume score uses. Standardised per
    slice position against the healthy validation scans (:mod:`mri_anomaly.scoring.slice_norms`).
``maps/<section>/<subject_id>_<map>.nii.gz``
    float32 voxel maps on the input file's grid with its affine (2D models: slice maps stacked along the
    axial axis on the model grid, then taken back to the input space).
``errors.csv``
    ``subject_id, image, section, error`` of the volumes that could not be scored.
``score_meta.json``
    the method, the run, the score/slice/map columns, the aggregation rule, thresholds and versions.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mri_anomaly.data import PreprocessedCache, load_datalist, save_map_in_input_space, unwrap_input_error
from mri_anomaly.data.datalist import check_contrast_counts, first_image, subject_id_of
from mri_anomaly.data.preprocessing import CROP_FRACTION_KEY, preprocessed_channels
from mri_anomaly.errors import UserInputError
from mri_anomaly.files import atomic_write_json, atomic_write_with
from mri_anomaly.runs import load_run, run_fingerprint, run_slice_norms, run_thresholds
from mri_anomaly.scoring.items import PreprocessedItems, error_text, iterate_preprocessed
from mri_anomaly.scoring.nonfinite import nonfinite_to_most_anomalous
from mri_anomaly.scoring.slice_norms import RULE as SLICE_NORMS_RULE
from mri_anomaly.scoring.tables import (
    ERROR_COLUMNS,
    ERRORS_FILE,
    META_FILE,
    SCORES_FILE,
    SHARDS_DIR,
    SLICE_SCORES_FILE,
    AppendTable,
    csv_value,
    merge_tables,
    read_rows,
    row_key,
    write_rows_atomic,
)
from mri_anomaly.scoring.volume import (
    RawVolumeScores,
    VolumeScores,
    finish_volume_scores,
    raw_volume_scores_of,
    slice_score_columns_of,
    volume_score_columns_of,
)
from mri_anomaly.training import distributed
from mri_anomaly.training.checkpoint import versions

__all__ = ["ScoringSummary", "score_datalist"]


@dataclass
class ScoringSummary:
    """What :func:`score_datalist` did: counts over all ranks."""

    out_dir: Path
    scored: int
    skipped_existing: int
    errors: int
    score_columns: list[str]
    seconds: float


@dataclass
class _Layout:
    """The columns of a score folder's tables, all known before the first volume (the method declares its
    score and map names)."""

    score_columns: list[str]
    slice_score_columns: list[str]
    map_names: list[str]
    thresholds: dict[str, float]
    score_header: list[str]
    slice_header: list[str]

    @classmethod
    def of(
        cls,
        method,
        config: Mapping[str, Any],
        thresholds: Mapping[str, float],
        save_maps: bool,
        has_label: bool,
    ) -> _Layout:
        kind = type(method)
        score_columns = volume_score_columns_of(kind, config)
        map_names = list(kind.map_names) if save_maps else []
        flags = [f"flag:{c}" for c in score_columns if c in thresholds]
        score_header = [
            "subject_id",
            "image",
            "section",
            *(["label"] if has_label else []),
            *score_columns,
            *flags,
            *[f"map:{m}" for m in map_names],
            CROP_FRACTION_KEY,
        ]
        slice_columns = slice_score_columns_of(kind, config)
        slice_header = [
            "subject_id",
            "section",
            "slice",
            "brain_fraction",
            "counted",
            "slice_label",
            *slice_columns,
        ]
        return cls(score_columns, slice_columns, map_names, dict(thresholds), score_header, slice_header)

    def score_row(
        self, base: Mapping[str, Any], item: Mapping[str, Any], data: Mapping[str, Any], result: VolumeScores
    ) -> dict[str, Any]:
        row = {
            **base,
            "label": item.get("label", ""),
            **{c: csv_value(result.scores.get(c)) for c in self.score_columns},
            CROP_FRACTION_KEY: csv_value(float(data.get(CROP_FRACTION_KEY, 0.0))),
        }
        for c in self.score_columns:
            if c in self.thresholds:
                row[f"flag:{c}"] = int(result.scores[c] > self.thresholds[c])
        return row


def _shard_dirs(out: Path) -> list[Path]:
    return sorted((out / SHARDS_DIR).glob("rank*")) if (out / SHARDS_DIR).is_dir() else []


def _volumes_to_score(
    out: Path, sections: Sequence[str], data: Mapping[str, list]
) -> list[tuple[str, int, dict]]:
    """``(section, index, item)`` of the volumes without a row in ``scores.csv`` (merged or in a leftover shard)."""
    done: set[tuple[str, str]] = set()
    for folder in [out, *_shard_dirs(out)]:
        done |= {row_key(r) for r in read_rows(folder / SCORES_FILE)[1]}
    return [
        (s, i, it)
        for s in sections
        for i, it in enumerate(data[s])
        if (s, str(first_image(it) or "")) not in done
    ]


def _prepare_tables(
    out: Path,
    sections: Sequence[str],
    data: Mapping[str, list],
    layout: _Layout,
    todo: Sequence[tuple[str, int, dict]],
) -> Path:
    """Merge what earlier runs left, drop the error rows of volumes about to be retried, and return the folder
    this process appends to (``out`` itself in one process, its shard under ``torchrun``)."""
    world, rank = distributed.world_size(), distributed.rank()
    retry = {(s, str(first_image(it) or "")) for s, _, it in todo}
    target = out if world == 1 else out / SHARDS_DIR / f"rank{rank}"
    target.mkdir(parents=True, exist_ok=True)
    if world == 1:
        merge_tables(
            out, _shard_dirs(out), sections, data, layout.score_header, layout.slice_header, retry=retry
        )
    distributed.barrier()
    if world > 1 and distributed.is_main_process():
        header, rows = read_rows(out / ERRORS_FILE)
        if header:
            write_rows_atomic(out / ERRORS_FILE, ERROR_COLUMNS, [r for r in rows if row_key(r) not in retry])
    distributed.barrier()
    return target


def score_datalist(
    run_dir: str | os.PathLike,
    datalist: str | os.PathLike | Mapping[str, list[dict[str, Any]]],
    out_dir: str | os.PathLike,
    sections: Sequence[str] = ("test",),
    device: str | torch.device = "cpu",
    save_maps: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    preprocessed_cache: PreprocessedCache | None = None,
) -> ScoringSummary:
    """Score the ``sections`` of a datalist with the run in ``run_dir`` into ``out_dir`` (layout: module docstring).

    Args:
        run_dir: a training run directory (``checkpoint.pt``).
        datalist: datalist path (JSON/CSV) or a loaded ``{section: [items]}``; files are checked per item
            while scoring, so a missing or corrupt file only costs its own row (in ``errors.csv``).
        out_dir: output folder (created; an existing one is resumed).
        sections: datalist sections to score, e.g. ``("validation", "test")``.
        device: ``"cpu"`` or ``"cuda"`` (this rank's device under torchrun).
        save_maps: write voxel maps (default: the config's ``score.save_maps``).
        num_workers: DataLoader workers that load and preprocess volumes ahead of the model.
        progress: a tqdm bar on rank 0.
        preprocessed_cache: kept across calls that score the same scans (the demo's runs): each scan is
            preprocessed once per preprocessing config (:class:`~mri_anomaly.data.PreprocessedCache`;
            with ``num_workers=0``, where the items are made in this process).

    Returns:
        a :class:`ScoringSummary` (counts over all ranks).

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        ValueError: a requested section is not in the datalist.
    """
    start = time.time()
    run_dir, out, device = Path(run_dir), Path(out_dir), torch.device(device)
    method, config, checkpoint = load_run(run_dir, device)
    if isinstance(datalist, Mapping):
        data = {k: list(v) for k, v in datalist.items()}
    else:
        data = load_datalist(datalist, check_files=False, check_headers=False)
    missing = [s for s in sections if s not in data]
    if missing:
        raise UserInputError(
            f"section(s) {', '.join(missing)} not in the datalist (it has: {', '.join(sorted(data))})"
        )
    check_contrast_counts(
        {s: data[s] for s in sections},
        preprocessed_channels(config.get("preprocessing")),
        None if isinstance(datalist, Mapping) else datalist,
    )
    save_maps = bool(config["score"]["save_maps"]) if save_maps is None else save_maps
    slice_norms = run_slice_norms(run_dir, checkpoint)
    has_label = any("label" in it for s in sections for it in data[s])
    layout = _Layout.of(method, config, run_thresholds(run_dir, checkpoint), save_maps, has_label)
    world, main = distributed.world_size(), distributed.is_main_process()

    _check_same_model(out, checkpoint, run_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    todo = _volumes_to_score(out, sections, data)
    skipped_existing = sum(len(data[s]) for s in sections) - len(todo)
    mine = [t for j, t in enumerate(todo) if j % world == distributed.rank()]
    target = _prepare_tables(out, sections, data, layout, todo)
    scores_table = AppendTable(target / SCORES_FILE, layout.score_header)
    slices_table = AppendTable(target / SLICE_SCORES_FILE, layout.slice_header)
    errors_table = AppendTable(target / ERRORS_FILE, ERROR_COLUMNS)
    if main:
        atomic_write_json(out / META_FILE, _meta(run_dir, checkpoint, config, sections, layout, slice_norms))

    dataset = PreprocessedItems([it for _, _, it in mine], config, cache=preprocessed_cache)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"score {','.join(sections)}", unit="vol", dynamic_ncols=True)
    counts = {"scored": 0, "errors": 0}

    def record_error(base: Mapping[str, Any], error: str) -> None:
        errors_table.write([{**base, "error": error}])
        counts["errors"] += 1
        message = f"error: {error} (recorded in {out / ERRORS_FILE}; continuing)"
        if bar is not None:
            bar.write(message)
        else:
            print(message)

    def write_volume(j: int, data: Mapping[str, Any], raw: RawVolumeScores) -> None:
        section, _, item = mine[j]
        subject = subject_id_of(item)
        base = {"subject_id": subject, "image": first_image(item) or "", "section": section}
        try:
            result = finish_volume_scores(raw, config, slice_norms)
            row = layout.score_row(base, item, data, result)
            for name in layout.map_names:
                if name in result.maps:
                    rel = Path("maps") / section / f"{_safe_name(subject)}_{name}.nii.gz"
                    _save_map(result.maps[name], data, out / rel, dataset.transform)
                    row[f"map:{name}"] = str(rel)
            slices_table.write(
                [
                    {"subject_id": subject, "section": section, **{k: csv_value(v) for k, v in r.items()}}
                    for r in result.slices
                ]
            )
            scores_table.write([row])  # last: a volume counts as done only once everything else is on disk
            counts["scored"] += 1
        except Exception as err:  # a bad input file is recorded and the run goes on; a bug is raised
            if unwrap_input_error(err) is None:
                raise
            record_error(base, error_text(err, item))

    for j, item_data, raw, error in raw_volume_scores_of(
        method, config, iterate_preprocessed(dataset, num_workers), device, bool(layout.map_names)
    ):
        if error is None:
            write_volume(j, item_data, raw)
        else:
            section, _, item = mine[j]
            record_error(
                {"subject_id": subject_id_of(item), "image": first_image(item) or "", "section": section},
                error,
            )
        if bar is not None:
            bar.update(world if world > 1 else 1)
    if bar is not None:
        bar.close()
    scored, errors = counts["scored"], counts["errors"]

    counts = distributed.all_gather_objects((scored, errors))
    distributed.barrier()
    if main:
        merge_tables(
            out, _shard_dirs(out), sections, data, layout.score_header, layout.slice_header, retry=set()
        )
        present = list(dict.fromkeys(r.get("section", "") for r in read_rows(out / SCORES_FILE)[1]))
        all_sections = list(dict.fromkeys([*present, *sections]))  # earlier calls' sections too
        atomic_write_json(
            out / META_FILE, _meta(run_dir, checkpoint, config, all_sections, layout, slice_norms)
        )
    distributed.barrier()
    total_scored = sum(c[0] for c in counts)
    total_errors = sum(c[1] for c in counts)
    if main:
        print(
            f"scored {total_scored} volume(s), {skipped_existing} already done, {total_errors} error(s) -> {out}"
        )
    return ScoringSummary(
        out, total_scored, skipped_existing, total_errors, layout.score_columns, time.time() - start
    )


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "volume"


def _save_map(volume_map: torch.Tensor, item: Mapping[str, Any], path: Path, transform) -> None:
    atomic_write_with(
        path,
        lambda tmp: save_map_in_input_space(
            nonfinite_to_most_anomalous(volume_map.float()), item, tmp, transform
        ),
    )


def _check_same_model(out: Path, checkpoint: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse to add rows to an OUT scored by another model (its finished rows would be silently mixed in)."""
    path = out / META_FILE
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return
    previous = meta.get("run_fingerprint")
    if previous is not None and previous != run_fingerprint(checkpoint):
        raise UserInputError(
            f"{out} holds scores of another model ({meta.get('run')}, fingerprint {previous}); this run "
            f"({run_dir}) would mix with them: score into a new --out, or delete {out}"
        )


def _meta(
    run_dir: Path,
    checkpoint: Mapping[str, Any],
    config: Mapping[str, Any],
    sections: Sequence[str],
    layout: _Layout,
    slice_norms: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``score_meta.json``: the method, the run, the columns, the rules and the versions."""
    top_k = int(config["score"]["top_k"])
    if config["spatial_dims"] == 2:
        rule = (
            f"2D: slice scores (standardised per slice position when the run has slice norms) aggregated over "
            f"slices with brain fraction >= {config['slices']['min_brain_fraction']} (all slices when none "
            f"qualifies): mean, max, top-{top_k} mean"
        )
    else:
        rule = (
            "3D: one score per volume from the method; slice profile = a statistic of each voxel map over the "
            "axial slice's brain voxels, standardised per slice position when the run has slice norms"
        )
    return {
        "method": config["method"],
        "spatial_dims": config["spatial_dims"],
        "run": str(run_dir.resolve()),
        "run_fingerprint": run_fingerprint(checkpoint),
        "sections": list(sections),
        "score_columns": list(layout.score_columns),
        "slice_score_columns": list(layout.slice_score_columns),
        "map_names": list(layout.map_names),
        "aggregation": rule,
        "slice_standardisation": SLICE_NORMS_RULE if slice_norms else None,
        "higher_is_more_anomalous": True,
        "thresholds": dict(layout.thresholds),
        "threshold_info": dict(checkpoint.get("threshold_info") or {}),
        "flag_rule": "flag:<column> = 1 when the score is > the threshold",
        "training_completed": bool((checkpoint.get("progress") or {}).get("completed", False)),
        "versions": versions(),
    }
