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
    one row per volume: ``subject_id, image, section, label`` (empty where unknown), the score columns,
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
    slice scores; 3D: ``<map>_slice_mean``, the mean of each voxel map over the slice.
``maps/<section>/<subject_id>_<map>.nii.gz``
    float32 voxel maps on the input file's grid with its affine (2D models: slice maps stacked along the
    axial axis on the model grid, then taken back to the input space).
``errors.csv``
    ``subject_id, image, section, error`` of the volumes that could not be scored.
``score_meta.json``
    the method, the run, the score/slice/map columns, the aggregation rule, thresholds and versions.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mri_anomaly.data.datasets import unwrap_input_error
from mri_anomaly.data.preprocessing import CROP_FRACTION_KEY
from mri_anomaly.errors import MissingInputError, UserInputError
from mri_anomaly.scoring.aggregate import aggregate_slice_scores, aggregated_names, slice_has_label
from mri_anomaly.scoring.brain import slice_brain_statistic
from mri_anomaly.scoring.nonfinite import nonfinite_to_most_anomalous
from mri_anomaly.scoring.slice_norms import RULE as SLICE_NORMS_RULE
from mri_anomaly.scoring.slice_norms import standardise_slice_scores

__all__ = [
    "SCORES_FILE",
    "SLICE_SCORES_FILE",
    "ERRORS_FILE",
    "META_FILE",
    "ScoreSummary",
    "VolumeScores",
    "load_run",
    "score_volume",
    "finish_volume_scores",
    "slice_score_columns_of",
    "score_items_in_memory",
    "score_datalist",
    "run_fingerprint",
]

SCORES_FILE = "scores.csv"
SLICE_SCORES_FILE = "slice_scores.csv"
ERRORS_FILE = "errors.csv"
META_FILE = "score_meta.json"
SHARDS_DIR = "shards"
ERROR_COLUMNS = ("subject_id", "image", "section", "error")


# ------------------------------------------------------------------------------------------ one volume
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
class _MethodOutput:
    """What the model says about one volume, before slice standardisation and aggregation."""

    volume_scores: dict[str, float]  # 3D methods; empty for 2D (aggregated from slices)
    slice_scores: dict[str, torch.Tensor]  # {column: (D,)} raw
    maps: dict[str, torch.Tensor]
    fraction: torch.Tensor  # (D,) brain fraction
    counted: torch.Tensor  # (D,) bool
    labels: torch.Tensor | None  # (D,) slice has lesion voxels


def _as_plain(t: Any) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def slice_score_columns_of(method_cls, config: Mapping[str, Any]) -> list[str]:
    """Columns of ``slice_scores.csv``: 2D — the method's slice scores; 3D — ``<map>_slice_<statistic>``,
    the statistic (mean, or a high quantile for the baselines) of each voxel map over the slice's brain voxels."""
    if config["spatial_dims"] == 2:
        return list(method_cls.score_names)
    return [f"{m}_slice_{method_cls.slice_statistic}" for m in method_cls.map_names]


@torch.no_grad()
def _method_output(method, config: Mapping[str, Any], item: Mapping[str, Any], device: torch.device,
                   want_maps: bool) -> _MethodOutput:
    image = _as_plain(item["image"]).float()
    depth = image.shape[-1]
    from mri_anomaly.data import slice_brain_fractions

    fraction = slice_brain_fractions(image)
    min_fraction = float((config.get("slices") or {}).get("min_brain_fraction", 0.0))
    counted = fraction >= min_fraction
    has_mask = item.get("mask") is not None and bool(item.get("has_mask", 1))
    labels = slice_has_label(_as_plain(item["mask"])) if has_mask else None
    extra = {k: int(item[k]) for k in ("label", "semi_target") if isinstance(item.get(k), (int, float))}
    slice_columns: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    volume_scores: dict[str, float] = {}
    if config["spatial_dims"] == 2:
        slices = image.permute(3, 0, 1, 2).contiguous()  # (D, C, H, W)
        chunk = int(config["score"]["batch_size"])
        parts_scores: dict[str, list[torch.Tensor]] = {}
        parts_maps: dict[str, list[torch.Tensor]] = {}
        for start in range(0, depth, chunk):
            x = slices[start : start + chunk].to(device)
            out = method.score({"image": x, **{k: torch.as_tensor([v] * x.shape[0]) for k, v in extra.items()}})
            for name, s in out.scores.items():
                parts_scores.setdefault(name, []).append(s.detach().double().cpu().reshape(-1))
            if want_maps:
                for name, m in out.maps.items():
                    parts_maps.setdefault(name, []).append(m.detach().float().cpu())
        slice_columns = {name: nonfinite_to_most_anomalous(torch.cat(v)) for name, v in parts_scores.items()}
        for name, v in parts_maps.items():
            stacked = torch.cat(v)  # (D, 1, H, W) -> (1, H, W, D)
            maps[name] = stacked.permute(1, 2, 3, 0).contiguous()
    else:
        x = image[None].to(device)
        out = method.score({"image": x, **{k: torch.as_tensor([v]) for k, v in extra.items()}})
        volume_scores = {
            name: float(nonfinite_to_most_anomalous(s.detach().double().cpu().reshape(-1))[0]) for name, s in out.scores.items()
        }
        statistic = type(method).slice_statistic
        for name, m in out.maps.items():
            volume_map = m.detach().float().cpu()[0]  # (1, H, W, D)
            profile = slice_brain_statistic(nonfinite_to_most_anomalous(volume_map), image, statistic)
            slice_columns[f"{name}_slice_{statistic}"] = profile
            if want_maps:
                maps[name] = volume_map
    return _MethodOutput(volume_scores, slice_columns, maps, fraction, counted, labels)


def finish_volume_scores(output: _MethodOutput, config: Mapping[str, Any], slice_norms: Mapping[str, Any] | None) -> VolumeScores:
    """Standardise the slice scores per position (when the run has norms), aggregate 2D slice scores to volume
    scores, and lay out the slice rows."""
    slice_columns = standardise_slice_scores(output.slice_scores, slice_norms, output.fraction)
    if config["spatial_dims"] == 2:
        scores = aggregate_slice_scores(slice_columns, output.counted, int(config["score"]["top_k"]))
    else:
        scores = dict(output.volume_scores)
    rows = []
    for k in range(output.fraction.numel()):
        row: dict[str, Any] = {"slice": k, "brain_fraction": round(float(output.fraction[k]), 6),
                               "counted": int(output.counted[k])}
        row["slice_label"] = int(output.labels[k]) if output.labels is not None else ""
        for name, v in slice_columns.items():
            row[name] = float(nonfinite_to_most_anomalous(v[k : k + 1])[0])
        rows.append(row)
    return VolumeScores(scores=scores, slices=rows, maps=output.maps, raw_slice_scores=output.slice_scores)


@torch.no_grad()
def score_volume(method, config: Mapping[str, Any], item: Mapping[str, Any], device: torch.device | str = "cpu",
                 want_maps: bool = True, slice_norms: Mapping[str, Any] | None = None) -> VolumeScores:
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
    return finish_volume_scores(_method_output(method, config, item, torch.device(device), want_maps), config, slice_norms)


# ------------------------------------------------------------------------------------------ run loading
def load_run(run_dir: str | os.PathLike, device: torch.device | str = "cpu"):
    """The trained method (eval mode, on ``device``), its config and checkpoint from a run directory.

    Returns:
        ``(method, config, checkpoint)``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``checkpoint.pt``.
    """
    from mri_anomaly.training.checkpoint import load_checkpoint
    from mri_anomaly.training.config import config_from_yaml
    from mri_anomaly.training.trainer import CHECKPOINT_NAME, build_method

    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise MissingInputError(f"{run_dir}: no {CHECKPOINT_NAME} (train a model there first with `mri-anomaly train`)")
    checkpoint = load_checkpoint(path, map_location="cpu")
    config = config_from_yaml(checkpoint["config"])
    progress = checkpoint.get("progress") or {}
    from mri_anomaly.training.methods import get_method_class

    phases = get_method_class(config["method"]).phases
    if progress.get("begun_phase_index", len(phases) - 1) < len(phases) - 1:
        raise UserInputError(
            f"{path}: training stopped before its last phase ({phases[-1]!r}) began, so the model cannot score yet; "
            f"continue it with `mri-anomaly train ... --out {run_dir} --resume`"
        )
    method = build_method(config)
    method.load_state_dict(checkpoint["state_dict"])
    method.to(device).eval()
    return method, config, checkpoint


def run_slice_norms(run_dir: Path, checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's per-position slice norms: ``RUN/thresholds.json``'s ``slice_norms``, else the checkpoint's."""
    from mri_anomaly.evaluation.thresholds import load_thresholds

    stored = load_thresholds(run_dir)
    if stored is not None and stored.get("slice_norms"):
        return dict(stored["slice_norms"])
    return (checkpoint.get("threshold_info") or {}).get("slice_norms") or None


def _run_thresholds(run_dir: Path, checkpoint: Mapping[str, Any]) -> dict[str, float]:
    """``RUN/thresholds.json`` when present (it may have been recalibrated), else the checkpoint's."""
    from mri_anomaly.evaluation.thresholds import load_thresholds

    stored = load_thresholds(run_dir)
    if stored is not None:
        return dict(stored["thresholds"])
    return {k: float(v) for k, v in (checkpoint.get("thresholds") or {}).items()}


# ------------------------------------------------------------------------------------------ items
class _PreprocessedItems(torch.utils.data.Dataset):
    """``(index, preprocessed item or None, error message or None)`` per datalist item.

    Uncached :class:`mri_anomaly.data.VolumeDataset` items (the training preprocessing, item convention
    of the data module); a bad input file (an :class:`~mri_anomaly.data.InputFileError`, possibly wrapped by
    MONAI) becomes an error message naming it. Any other exception is raised: it is a bug, not a bad scan.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> None:
        from mri_anomaly.data import VolumeDataset

        self.items = [dict(it) for it in items]
        self.volumes = VolumeDataset(self.items, preprocessing_config=config.get("preprocessing") or {}, cache="none",
                                     on_error="return")
        self.transform = self.volumes.transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            data = self.volumes[i]
        except Exception as err:  # a bad input file is recorded, not fatal; anything else is a bug and raised
            if unwrap_input_error(err) is None:
                raise
            return i, None, _error_text(err, item)
        if "error" in data:
            return i, None, str(data["error"])
        return i, data, None


def _error_text(err: BaseException, item: Mapping[str, Any]) -> str:
    """One line naming the file and the problem (the data module's ``InputFileError`` when there is one)."""
    from mri_anomaly.data import unwrap_input_error

    input_error = unwrap_input_error(err)
    if input_error is not None:
        return str(input_error).splitlines()[0]
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{item.get('image')}: {type(err).__name__}: {text}"


def _identity(x: Any) -> Any:
    return x


def _iterate_preprocessed(dataset: _PreprocessedItems, num_workers: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                         collate_fn=_identity)
    yield from loader


def score_items_in_memory(method, config: Mapping[str, Any], items: Sequence[Mapping[str, Any]],
                          device: torch.device | str = "cpu", progress: bool = False
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What the method says about this rank's shard of ``items`` (used for calibration at the end of training):
    raw slice scores and 3D volume scores, before slice standardisation (:func:`finish_volume_scores`).

    Returns:
        ``(rows, errors)``: ``[{"index", "subject_id", "output": _MethodOutput}]`` and
        ``[{"index", "subject_id", "image", "error"}]`` of the items that could not be read.
    """
    from mri_anomaly.training import distributed

    r, w = distributed.rank(), distributed.world_size()
    shard = [(i, it) for i, it in enumerate(items) if i % w == r]
    out, errors = [], []
    iterator = _iterate_preprocessed(_PreprocessedItems([it for _, it in shard], config), 0)
    if progress and distributed.is_main_process():
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(shard), desc="score validation", unit="vol", dynamic_ncols=True)
    for j, data, error in iterator:
        index, item = shard[j]
        if error is not None:
            print(f"warning: validation scan skipped: {error}")
            errors.append({"index": index, "subject_id": item.get("subject_id"), "image": str(item.get("image", "")),
                           "error": error})
            continue
        output = _method_output(method, config, data, torch.device(device), want_maps=False)
        out.append({"index": index, "subject_id": item.get("subject_id"), "output": output})
    return out, errors


# ------------------------------------------------------------------------------------------ tables
def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and complete rows of a CSV (a half-written last line from a crash is dropped)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return [], []
        except csv.Error:
            return [], []
        rows = []
        try:
            for values in reader:
                if len(values) == len(header):
                    rows.append(dict(zip(header, values)))
        except csv.Error:
            pass
    return header, rows


def _write_rows_atomic(path: Path, header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _AppendTable:
    """A CSV appended one row (or one volume's rows) at a time, flushed and fsynced after each write."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        self.header = list(header)
        existing, rows = _read_rows(path)
        if existing and existing != self.header:
            # same rows, new header (for example a resumed run that adds a column): rewrite atomically
            _write_rows_atomic(path, self.header, rows)
        elif not existing:
            _write_rows_atomic(path, self.header, [])

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.header, extrasaction="ignore", restval="")
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


def _key(row: Mapping[str, Any]) -> tuple[str, str]:
    return str(row.get("section", "")), str(row.get("image", ""))


@dataclass
class ScoreSummary:
    """What :func:`score_datalist` returns."""

    out_dir: Path
    scored: int
    skipped_existing: int
    errors: int
    score_columns: list[str]
    seconds: float


def _atomic_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "volume"


def score_datalist(
    run_dir: str | os.PathLike,
    datalist: str | os.PathLike | Mapping[str, list[dict[str, Any]]],
    out_dir: str | os.PathLike,
    sections: Sequence[str] = ("test",),
    device: str | torch.device = "cpu",
    save_maps: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> ScoreSummary:
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

    Returns:
        a :class:`ScoreSummary` (counts over all ranks).

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        ValueError: a requested section is not in the datalist.
    """
    from mri_anomaly.training import distributed

    start = time.time()
    run_dir = Path(run_dir)
    out = Path(out_dir)
    device = torch.device(device)
    method, config, checkpoint = load_run(run_dir, device)
    if isinstance(datalist, Mapping):
        data = {k: list(v) for k, v in datalist.items()}
    else:
        from mri_anomaly.data.datalist import load_datalist

        data = load_datalist(datalist, check_files=False, check_headers=False)
    missing = [s for s in sections if s not in data]
    if missing:
        raise UserInputError(f"section(s) {', '.join(missing)} not in the datalist (it has: {', '.join(sorted(data))})")
    if save_maps is None:
        save_maps = bool(config["score"]["save_maps"])
    thresholds = _run_thresholds(run_dir, checkpoint)
    slice_norms = run_slice_norms(run_dir, checkpoint)
    rank, world = distributed.rank(), distributed.world_size()
    main = distributed.is_main_process()

    # Every column is known before the first volume: the method declares its score and map names.
    cls = type(method)
    top_k = int(config["score"]["top_k"])
    if config["spatial_dims"] == 2:
        score_columns = [c for s in cls.score_names for c in aggregated_names(s, top_k)]
    else:
        score_columns = list(cls.score_names)
    slice_score_columns = slice_score_columns_of(cls, config)
    map_names = list(cls.map_names) if save_maps else []
    flag_columns = [f"flag:{c}" for c in score_columns if c in thresholds]
    has_label = any("label" in it for s in sections for it in data[s])
    score_header = ["subject_id", "image", "section", "label", *score_columns, *flag_columns,
                    *[f"map:{m}" for m in map_names], CROP_FRACTION_KEY]
    if not has_label:
        score_header.remove("label")
    slice_header = ["subject_id", "section", "slice", "brain_fraction", "counted", "slice_label", *slice_score_columns]

    # What is already done: rows of earlier runs (merged tables and any leftover shards).
    _check_same_model(out, checkpoint, run_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    shard_dirs = sorted((out / SHARDS_DIR).glob("rank*")) if (out / SHARDS_DIR).is_dir() else []
    done: set[tuple[str, str]] = set()
    for folder in [out, *shard_dirs]:
        done |= {_key(r) for r in _read_rows(folder / SCORES_FILE)[1]}
    todo_all = [(s, i, it) for s in sections for i, it in enumerate(data[s]) if (s, str(it.get("image", ""))) not in done]
    skipped_existing = sum(len(data[s]) for s in sections) - len(todo_all)
    mine = [t for j, t in enumerate(todo_all) if j % world == rank]

    # This process's tables: the merged ones in a single process, its own shard under torchrun.
    target = out if world == 1 else out / SHARDS_DIR / f"rank{rank}"
    target.mkdir(parents=True, exist_ok=True)
    if world == 1:
        _merge_tables(out, shard_dirs, sections, data, score_header, slice_header, retry={(s, str(it.get("image", ""))) for s, _, it in todo_all})
    distributed.barrier()
    if world > 1 and main:
        # errors of items about to be retried are dropped from the merged table before anyone appends
        header, rows = _read_rows(out / ERRORS_FILE)
        retry = {(s, str(it.get("image", ""))) for s, _, it in todo_all}
        if header:
            _write_rows_atomic(out / ERRORS_FILE, ERROR_COLUMNS, [r for r in rows if _key(r) not in retry])
    distributed.barrier()
    scores_table = _AppendTable(target / SCORES_FILE, score_header)
    slices_table = _AppendTable(target / SLICE_SCORES_FILE, slice_header)
    errors_table = _AppendTable(target / ERRORS_FILE, ERROR_COLUMNS)
    if main:
        _atomic_json(out / META_FILE, _meta(run_dir, checkpoint, config, sections, score_columns, slice_score_columns,
                                             map_names, thresholds, top_k, slice_norms))

    dataset = _PreprocessedItems([it for _, _, it in mine], config)
    transform = dataset.transform
    iterator = _iterate_preprocessed(dataset, num_workers)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo_all), desc=f"score {','.join(sections)}", unit="vol", dynamic_ncols=True)
    scored = errors = 0
    for j, item_data, error in iterator:
        section, _, item = mine[j]
        subject = str(item.get("subject_id", Path(str(item.get("image", ""))).name))
        base = {"subject_id": subject, "image": item.get("image", ""), "section": section}
        if error is None:
            try:
                result = score_volume(method, config, item_data, device=device, want_maps=bool(map_names),
                                      slice_norms=slice_norms)
                row = {**base, "label": item.get("label", ""), **{c: _fmt(result.scores.get(c)) for c in score_columns},
                       CROP_FRACTION_KEY: _fmt(float(item_data.get(CROP_FRACTION_KEY, 0.0)))}
                for c in score_columns:
                    if c in thresholds:
                        row[f"flag:{c}"] = int(result.scores[c] > thresholds[c])
                for name in map_names:
                    if name in result.maps:
                        rel = Path("maps") / section / f"{_safe_name(subject)}_{name}.nii.gz"
                        _save_map(result.maps[name], item_data, out / rel, transform)
                        row[f"map:{name}"] = str(rel)
                slices_table.write(
                    [{"subject_id": subject, "section": section, **{k: _fmt(v) for k, v in r.items()}} for r in result.slices]
                )
                scores_table.write([row])  # last: a volume counts as done only once everything else is on disk
                scored += 1
            except Exception as err:  # a bad input file is recorded and the run goes on; a bug is raised
                if unwrap_input_error(err) is None:
                    raise
                error = _error_text(err, item)
        if error is not None:
            errors_table.write([{**base, "error": error}])
            errors += 1
            message = f"error: {error} (recorded in {out / ERRORS_FILE}; continuing)"
            if bar is not None:
                bar.write(message)
            else:
                print(message)
        if bar is not None:
            bar.update(world if world > 1 else 1)
    if bar is not None:
        bar.close()

    counts = distributed.all_gather_objects((scored, errors))
    distributed.barrier()
    if main:
        shard_dirs = sorted((out / SHARDS_DIR).glob("rank*")) if (out / SHARDS_DIR).is_dir() else []
        _merge_tables(out, shard_dirs, sections, data, score_header, slice_header, retry=set())
        present = list(dict.fromkeys(r.get("section", "") for r in _read_rows(out / SCORES_FILE)[1]))
        all_sections = list(dict.fromkeys([*present, *sections]))  # earlier calls' sections too
        _atomic_json(out / META_FILE, _meta(run_dir, checkpoint, config, all_sections, score_columns,
                                             slice_score_columns, map_names, thresholds, top_k, slice_norms))
    distributed.barrier()
    total_scored = sum(c[0] for c in counts)
    total_errors = sum(c[1] for c in counts)
    if main:
        print(f"scored {total_scored} volume(s), {skipped_existing} already done, {total_errors} error(s) -> {out}")
    return ScoreSummary(out, total_scored, skipped_existing, total_errors, score_columns, time.time() - start)


def _save_map(volume_map: torch.Tensor, item: Mapping[str, Any], path: Path, transform) -> None:
    from mri_anomaly.data import save_map_in_input_space

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_map_in_input_space(nonfinite_to_most_anomalous(volume_map.float()), item, tmp, transform)
    os.replace(tmp, path)


def _merge_tables(out: Path, shard_dirs: Sequence[Path], sections: Sequence[str], data: Mapping[str, list],
                  score_header: Sequence[str], slice_header: Sequence[str], retry: set[tuple[str, str]]) -> None:
    """Merge shard tables into ``out``'s, in datalist order (sections as in the datalist, then items);
    drop half-finished volumes; remove the shards.

    Slice rows without a matching ``scores.csv`` row (a volume interrupted mid-way) are dropped, as are
    error rows of volumes that were scored since or are about to be retried.
    """
    order: dict[tuple[str, str], tuple[int, int]] = {}
    for si, s in enumerate(list(data) + [k for k in sections if k not in data]):  # datalist section order
        for i, it in enumerate(data.get(s, [])):
            order.setdefault((s, str(it.get("image", ""))), (si, i))
    far = (10**9, 10**9)

    def gather(name: str) -> tuple[list[str], list[dict[str, str]]]:
        header, rows = _read_rows(out / name)
        for d in shard_dirs:
            h, r = _read_rows(d / name)
            header = header or h
            rows += r
        return header, rows

    _, score_rows = gather(SCORES_FILE)
    unique: dict[tuple[str, str], dict[str, str]] = {}
    for r in score_rows:
        unique.setdefault(_key(r), r)
    finished = set(unique)
    score_rows = sorted(unique.values(), key=lambda r: order.get(_key(r), far))
    _, slice_rows = gather(SLICE_SCORES_FILE)
    subject_key = {(r.get("section", ""), r.get("subject_id", "")): _key(r) for r in unique.values()}
    kept_slices: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in slice_rows:
        k = subject_key.get((r.get("section", ""), r.get("subject_id", "")))
        if k is not None:
            kept_slices.setdefault(k, [])
            kept_slices[k].append(r)
    ordered_slices = []
    for k in sorted(kept_slices, key=lambda k: order.get(k, far)):
        by_slice = {int(r.get("slice") or 0): r for r in kept_slices[k]}  # a retried volume's rows: the last set wins
        ordered_slices += [by_slice[i] for i in sorted(by_slice)]
    _, error_rows = gather(ERRORS_FILE)
    error_rows = [r for r in error_rows if _key(r) not in finished and _key(r) not in retry]
    error_rows = sorted({_key(r): r for r in error_rows}.values(), key=lambda r: order.get(_key(r), far))

    _write_rows_atomic(out / SCORES_FILE, score_header, score_rows)
    _write_rows_atomic(out / SLICE_SCORES_FILE, slice_header, ordered_slices)
    _write_rows_atomic(out / ERRORS_FILE, ERROR_COLUMNS, error_rows)
    for d in shard_dirs:
        shutil.rmtree(d, ignore_errors=True)
    shards = out / SHARDS_DIR
    if shards.is_dir() and not any(shards.iterdir()):
        shards.rmdir()


def run_fingerprint(checkpoint: Mapping[str, Any]) -> str:
    """Identifies the model that scored: its config and how far it was trained (a resumed run scores anew)."""
    import hashlib

    progress = checkpoint.get("progress") or {}
    text = f"{checkpoint.get('config', '')}|{progress.get('global_step')}|{progress.get('completed')}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


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


def _meta(run_dir: Path, checkpoint: Mapping[str, Any], config: Mapping[str, Any], sections: Sequence[str],
          score_columns: Sequence[str], slice_columns: Sequence[str], map_names: Sequence[str],
          thresholds: Mapping[str, float], top_k: int, slice_norms: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from mri_anomaly.training.checkpoint import versions

    if config["spatial_dims"] == 2:
        rule = (f"2D: slice scores (standardised per slice position when the run has slice norms) aggregated over "
                f"slices with brain fraction >= {config['slices']['min_brain_fraction']} (all slices when none "
                f"qualifies): mean, max, top-{top_k} mean")
    else:
        rule = ("3D: one score per volume from the method; slice profile = a statistic of each voxel map over the "
                "axial slice's brain voxels, standardised per slice position when the run has slice norms")
    return {
        "method": config["method"],
        "spatial_dims": config["spatial_dims"],
        "run": str(run_dir.resolve()),
        "run_fingerprint": run_fingerprint(checkpoint),
        "sections": list(sections),
        "score_columns": list(score_columns),
        "slice_score_columns": list(slice_columns),
        "map_names": list(map_names),
        "aggregation": rule,
        "slice_standardisation": SLICE_NORMS_RULE if slice_norms else None,
        "higher_is_more_anomalous": True,
        "thresholds": dict(thresholds),
        "threshold_info": dict(checkpoint.get("threshold_info") or {}),
        "flag_rule": "flag:<column> = 1 when the score is > the threshold",
        "training_completed": bool((checkpoint.get("progress") or {}).get("completed", False)),
        "versions": versions(),
    }
