"""``evaluate``: metrics with confidence intervals, thresholds, figures and the report of score directories.

Input: one or several score directories written by ``mri-anomaly score`` (layout in
``docs/design/interfaces.md``: ``scores.csv``, ``slice_scores.csv``, ``maps/``, ``score_meta.json``) and the
datalist they were scored from (for labels, voxel masks, brain masks and sites when the tables lack them).
Output directory: ``metrics.json``, ``report.html`` and ``figures/*.png``.

Levels (each per score column, and per run when several are compared):

* **volume**: one score per scan; AUROC, AP, FPR at 95 % TPR, sensitivity at 90/95/99 % specificity, each
  with a stratified bootstrap 95 % CI; per-site tables where the data name sites.
* **slice**: one score per axial slice, a slice is anomalous when the (preprocessed) mask has voxels in it;
  the same metrics with a bootstrap that resamples whole scans.
* **voxel**: pooled voxels of the maps inside the brain; AUROC, AP, best Dice and its threshold
  (:mod:`mri_anomaly.evaluation.voxel`).

Thresholds are calibrated on the healthy ``validation`` section of the same score table (no anomalies
needed), stored in the run (``RUN/thresholds.json``) when ``runs`` are given, and their sensitivity and
specificity on the evaluated section are reported.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mri_anomaly.errors import MissingInputError, UserInputError
from mri_anomaly.evaluation.bootstrap import metrics_with_ci
from mri_anomaly.evaluation.controls import baseline_comparison, brain_fraction_rho
from mri_anomaly.evaluation.metrics import binary_metrics
from mri_anomaly.evaluation.thresholds import apply_threshold, calibrate_thresholds, save_thresholds
from mri_anomaly.evaluation.strata import default_subject_table, load_subject_table, stratified_volume_metrics
from mri_anomaly.evaluation.voxel import VoxelCase, voxel_metrics

__all__ = ["CONTROL_RUN", "ScoreSet", "evaluate", "load_score_set"]

CONTROL_RUN = "control"
"""Run name of the control rows (the brain fraction as a slice score) when several runs are compared."""

RESERVED_COLUMNS = {
    "subject_id", "image", "section", "label", "site", "slice", "slice_label", "semi_target", "mask",
    "brain_mask", "error", "index", "n_voxels", "brain_fraction", "counted", "cropped_foreground_fraction",
}  # fmt: skip


@dataclass
class ScoreSet:
    """The tables of one score directory.

    Attributes:
        name: label used in the report and as the key prefix when several runs are compared.
        directory: the score directory. volumes: ``scores.csv``. slices: ``slice_scores.csv`` or None.
        score_columns: the score columns (higher = more anomalous). map_columns: ``{map name: column}``.
        meta: ``score_meta.json`` (empty when absent). slice_columns: score columns of ``slice_scores.csv``
            (``score_meta.json``'s ``slice_score_columns``, else the volume columns present there).
    """

    name: str
    directory: Path
    volumes: pd.DataFrame
    slices: pd.DataFrame | None
    score_columns: list[str]
    map_columns: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    slice_columns: list[str] = field(default_factory=list)


def _score_columns(df: pd.DataFrame, meta: Mapping[str, Any]) -> list[str]:
    for key in ("score_columns", "scores", "score_names"):
        names = meta.get(key)
        if isinstance(names, (list, tuple)) and names:
            return [c for c in names if c in df.columns]
    return [
        c
        for c in df.columns
        if c not in RESERVED_COLUMNS
        and not str(c).startswith(("map:", "flag:", "threshold:"))
        and pd.api.types.is_numeric_dtype(df[c])
    ]


def load_score_set(directory: str | os.PathLike, name: str | None = None) -> ScoreSet:
    """Read a score directory.

    Raises:
        FileNotFoundError: no ``scores.csv`` in ``directory``.
        ValueError: naming the file, when a table lacks ``subject_id`` or has no score column.
    """
    d = Path(directory)
    path = d / "scores.csv"
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; --scores must be a directory written by `mri-anomaly score`")
    volumes = pd.read_csv(path, dtype={"subject_id": str})
    if "subject_id" not in volumes.columns:
        raise UserInputError(f"{path}: no subject_id column (columns: {list(volumes.columns)})")
    meta: dict[str, Any] = {}
    if (d / "score_meta.json").is_file():
        try:
            meta = json.loads((d / "score_meta.json").read_text())
        except json.JSONDecodeError as err:
            raise UserInputError(f"{d / 'score_meta.json'}: not valid JSON ({err})") from err
    columns = _score_columns(volumes, meta)
    if not columns:
        raise UserInputError(f"{path}: no score columns found (columns: {list(volumes.columns)})")
    slices = None
    if (d / "slice_scores.csv").is_file():
        slices = pd.read_csv(d / "slice_scores.csv", dtype={"subject_id": str})
        if "subject_id" not in slices.columns or "slice" not in slices.columns:
            raise UserInputError(f"{d / 'slice_scores.csv'}: needs subject_id and slice columns")
    maps = {str(c)[4:]: c for c in volumes.columns if str(c).startswith("map:")}
    slice_columns: list[str] = []
    if slices is not None:
        named = [c for c in meta.get("slice_score_columns") or [] if c in slices.columns]
        slice_columns = named or [c for c in columns if c in slices.columns] or _score_columns(slices, {})
    return ScoreSet(name or d.name, d, volumes, slices, columns, maps, meta, slice_columns)


def _datalist_lookup(datalist: str | os.PathLike | Mapping | None) -> dict[str, dict[str, Any]]:
    """``{subject_id or image path: item}`` over every section of the datalist (``section`` added)."""
    if datalist is None:
        return {}
    if isinstance(datalist, Mapping):
        sections = datalist
    else:
        from mri_anomaly.data import load_datalist

        sections = load_datalist(datalist)
    lookup: dict[str, dict[str, Any]] = {}
    for section, items in sections.items():
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, Mapping):
                continue
            entry = {**item, "section": item.get("section", section)}
            if item.get("subject_id") is not None:
                lookup.setdefault(f"id:{item['subject_id']}", entry)
            if item.get("image"):
                lookup.setdefault(f"img:{os.path.abspath(str(item['image']))}", entry)
    return lookup


def _item_for(row: Mapping[str, Any], lookup: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    img = row.get("image")
    if isinstance(img, str) and f"img:{os.path.abspath(img)}" in lookup:
        return lookup[f"img:{os.path.abspath(img)}"]
    return lookup.get(f"id:{row.get('subject_id')}")


def _attach_datalist(ss: ScoreSet, lookup: Mapping[str, dict[str, Any]]) -> None:
    """Fill ``label``, ``site``, ``mask``, ``brain_mask``, ``image`` from the datalist where the table lacks them."""
    df = ss.volumes
    items = [_item_for(r, lookup) for r in df.to_dict("records")]
    for key in ("label", "site", "mask", "brain_mask", "image", "section"):
        from_list = [None if it is None else it.get(key) for it in items]
        if key in df.columns:
            df[key] = [v if (v is not None and not (isinstance(v, float) and math.isnan(v))) else f
                       for v, f in zip(df[key].tolist(), from_list)]  # fmt: skip
        elif any(v is not None for v in from_list):
            df[key] = from_list
    if "label" in df.columns:
        df["label"] = pd.to_numeric(df["label"], errors="coerce")


def _key(ss: ScoreSet, column: str, several: bool) -> str:
    return f"{ss.name}/{column}" if several else column


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    if "label" not in df.columns:
        return df.iloc[0:0]
    return df[df["label"].isin([0, 1])]


def _one_class_problem(ss: ScoreSet, section: str, scans: pd.DataFrame, labelled: pd.DataFrame) -> str | None:
    """Why the section cannot give detection metrics (no labels, or one class only), or None when it can."""
    n_anomalous = int((labelled["label"] == 1).sum()) if len(labelled) else 0
    n_healthy = len(labelled) - n_anomalous
    if n_healthy and n_anomalous:
        return None
    where = f"{ss.name}: section {section!r} ({len(scans)} scans in {ss.directory / 'scores.csv'})"
    if not len(labelled):
        return f"{where} has no labelled scans (label 0/1): no volume metrics; give labels in the datalist"
    missing = "healthy (label 0)" if not n_healthy else "anomalous (label 1)"
    return (f"{where} has only {n_healthy or n_anomalous} {'anomalous' if not n_healthy else 'healthy'} scans and no "
            f"{missing} ones: AUROC, AP and sensitivities need both; add {missing} scans to the section "
            "(mri-anomaly datalist puts a healthy share in test: --test-fraction)")


def _safe_metrics(y, s, **kwargs) -> dict[str, Any]:
    try:
        return metrics_with_ci(y, s, **kwargs)
    except ValueError as err:
        return {"error": str(err), "n": int(len(y)), "n_anomalous": int(np.sum(np.asarray(y) == 1))}


def _operating_point_fn(threshold: float) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    def fn(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        flagged = apply_threshold(s, threshold)
        return {"sensitivity": float(flagged[y == 1].mean()), "specificity": float(1.0 - flagged[y == 0].mean())}

    return fn


def evaluate(
    scores: Sequence[str | os.PathLike] | str | os.PathLike,
    datalist: str | os.PathLike | Mapping | None,
    out: str | os.PathLike,
    runs: Sequence[str | os.PathLike | None] = (),
    names: Sequence[str] | None = None,
    section: str = "test",
    calibration_section: str = "validation",
    specificity: float = 0.95,
    n_bootstrap: int = 1000,
    n_bootstrap_voxel: int = 100,
    max_voxels: int | None = 100_000,
    seed: int = 0,
    report: bool = True,
    title: str = "mri-anomaly evaluation",
    log: Callable[[str], None] | None = None,
    subjects: str | os.PathLike | None = None,
    n_bootstrap_strata: int | None = None,
) -> dict[str, Any]:
    """Evaluate score directories; write ``metrics.json``, ``report.html`` and ``figures/`` under ``out``.

    Args:
        scores: one score directory or several (a comparison).
        datalist: the datalist path (or loaded sections) the scores came from; None if the tables carry
            labels themselves (then no voxel level).
        out: output directory (may be a score directory).
        runs: run directories, one per score directory (or one for all when a single score directory is
            given) in which to store the calibrated thresholds; empty: thresholds are only reported.
        names: labels of the score directories (default: directory names, made unique).
        section: the datalist section evaluated. calibration_section: the healthy section for thresholds.
        specificity: target specificity of the thresholds.
        n_bootstrap: bootstrap resamples of volume/slice CIs (0: no CIs). n_bootstrap_voxel: of voxel CIs.
        max_voxels: voxels per scan kept for voxel metrics (deterministic subsample; None: all).
        seed: seed of bootstrap and subsampling. report: write figures and ``report.html``.
        log: progress messages (default: to stderr).
        subjects: a subject table with ``subject_id``, ``lesion_kind``, ``size_stratum`` for per-kind and
            per-size volume metrics (:mod:`mri_anomaly.evaluation.strata`); default: ``subjects.csv`` beside
            the datalist file when there is one. n_bootstrap_strata: resamples of the per-stratum CIs (default
            ``n_bootstrap``).

    Returns:
        the ``metrics.json`` content.

    Raises:
        FileNotFoundError / ValueError: naming the score directory or file that is missing or malformed.
    """
    log = log or (lambda msg: print(f"[evaluate] {msg}", file=sys.stderr, flush=True))
    t0 = time.time()
    dirs = [scores] if isinstance(scores, (str, os.PathLike)) else list(scores)
    if not dirs:
        raise UserInputError("no score directory given")
    runs = list(runs)
    if runs and len(runs) != len(dirs):
        raise UserInputError(f"{len(runs)} --run given for {len(dirs)} --scores; give one run per score directory")
    for run in runs:
        if not Path(run).is_dir():
            raise MissingInputError(f"{run}: run directory not found (--run must be a folder written by `mri-anomaly train`)")
    sets: list[ScoreSet] = []
    used: set[str] = set()
    for i, d in enumerate(dirs):
        name = names[i] if names and i < len(names) else Path(d).resolve().name
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        sets.append(load_score_set(d, name))
    several = len(sets) > 1
    lookup = _datalist_lookup(datalist)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    subject_path = Path(subjects) if subjects is not None else default_subject_table(
        None if isinstance(datalist, Mapping) else datalist)
    subject_table = load_subject_table(subject_path) if subject_path is not None else None
    metrics: dict[str, Any] = {
        "volume": {},
        "strata": {},
        "brain_fraction": {},
        "baselines": {},
        "slice": {},
        "voxel": {},
        "thresholds": {},
        "per_site": {},
        "runs": {},
        "meta": {
            "section": section,
            "calibration_section": calibration_section,
            "specificity_target": specificity,
            "n_bootstrap": n_bootstrap,
            "n_bootstrap_voxel": n_bootstrap_voxel,
            "max_voxels_per_scan": max_voxels,
            "seed": seed,
            "datalist": None if datalist is None or isinstance(datalist, Mapping) else str(datalist),
            "subjects": None if subject_path is None else str(subject_path),
            "n_bootstrap_strata": n_bootstrap_strata,
        },
        "notes": [],
        "warnings": [],
    }
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"volume": {}, "slice": {}}
    thresholds_by_key: dict[str, float] = {}
    labelled_by_run: dict[str, pd.DataFrame] = {}
    control_done = False
    for i, ss in enumerate(sets):
        _attach_datalist(ss, lookup)
        df = ss.volumes
        sec = df[df["section"] == section] if "section" in df.columns else df
        cal = df[df["section"] == calibration_section] if "section" in df.columns else df.iloc[0:0]
        lab = _labelled(sec)
        metrics["runs"][ss.name] = {
            "directory": str(ss.directory),
            "method": ss.meta.get("method"),
            "run": ss.meta.get("run"),
            "score_columns": ss.score_columns,
            "maps": sorted(ss.map_columns),
            "n_scans": int(len(sec)),
            "n_labelled": int(len(lab)),
            "n_anomalous": int((lab["label"] == 1).sum()) if len(lab) else 0,
            "n_calibration": int(len(cal)),
        }
        if len(sec) == 0:
            metrics["notes"].append(f"{ss.name}: no scans of section {section!r} in {ss.directory / 'scores.csv'}")
        else:
            problem = _one_class_problem(ss, section, sec, lab)
            if problem is not None:
                metrics["warnings"].append(problem)
                metrics["notes"].append(f"WARNING: {problem}")
                print(f"warning: {problem}", file=sys.stderr, flush=True)
        log(f"{ss.name}: volume level, {len(lab)} labelled scans, {len(ss.score_columns)} score columns")
        # volume level
        y = lab["label"].to_numpy(dtype=int) if len(lab) else np.zeros(0, int)
        for col in ss.score_columns:
            key = _key(ss, col, several)
            s = lab[col].to_numpy(dtype=np.float64) if len(lab) else np.zeros(0)
            metrics["volume"][key] = _safe_metrics(y, s, n_resamples=n_bootstrap, seed=seed)
            if "error" not in metrics["volume"][key]:
                curves["volume"][key] = (y, s)
        labelled_by_run[ss.name] = lab
        if subject_table is not None and len(lab) and (y == 0).any() and (y == 1).any():
            per_column = stratified_volume_metrics(lab, ss.score_columns, subject_table,
                                                   n_bootstrap if n_bootstrap_strata is None else n_bootstrap_strata, seed)
            for col, entry in per_column.items():
                metrics["strata"][_key(ss, col, several)] = entry
        # thresholds on healthy calibration scans
        healthy = cal[cal["label"] != 1] if "label" in cal.columns else cal
        if len(cal) and "label" in cal.columns and (cal["label"] == 1).any():
            metrics["notes"].append(
                f"{ss.name}: {int((cal['label'] == 1).sum())} scans labelled anomalous in {calibration_section!r} were left out of calibration"
            )
        if len(healthy):
            calib = calibrate_thresholds(
                {c: healthy[c].to_numpy(dtype=np.float64) for c in ss.score_columns}, specificity, calibration_section
            )
            calib["score_dir"] = str(ss.directory)
            run = runs[i] if runs else None
            if run is not None:
                calib["stored_in"] = str(save_thresholds(run, calib))
                log(f"{ss.name}: thresholds stored in {calib['stored_in']}")
            if calib["note"]:
                metrics["notes"].append(f"{ss.name}: {calib['note']}")
            for col, t in calib["thresholds"].items():
                key = _key(ss, col, several)
                thresholds_by_key[key] = t
                entry: dict[str, Any] = {
                    "threshold": t,
                    "calibration_specificity": calib["calibration_specificity"][col],
                    "n_calibration": calib["n_healthy"],
                }
                if len(lab) and key in curves["volume"]:
                    s = lab[col].to_numpy(dtype=np.float64)
                    op = _safe_metrics(y, s, metric_fn=_operating_point_fn(t), n_resamples=n_bootstrap, seed=seed)
                    entry.update({f"test_{k}": v for k, v in op.items() if k.startswith(("sensitivity", "specificity"))})
                metrics["thresholds"][key] = entry
            metrics["runs"][ss.name]["thresholds"] = {k: v for k, v in calib.items() if k != "calibration_specificity"}
        else:
            metrics["notes"].append(
                f"{ss.name}: no healthy scans of section {calibration_section!r} in its scores.csv: no thresholds calibrated "
                f"(score that section too: mri-anomaly score --section {calibration_section})"
            )
        # per site
        if "site" in lab.columns and lab["site"].notna().any() and lab["site"].nunique() > 1:
            for site, part in lab.groupby("site"):
                ys = part["label"].to_numpy(dtype=int)
                for col in ss.score_columns:
                    key = _key(ss, col, several)
                    ss_ = part[col].to_numpy(dtype=np.float64)
                    entry = _safe_metrics(ys, ss_, n_resamples=n_bootstrap, seed=seed)
                    if key in thresholds_by_key and (ys == 0).any():
                        entry["specificity_at_threshold"] = float(1 - apply_threshold(ss_[ys == 0], thresholds_by_key[key]).mean())
                    if key in thresholds_by_key and (ys == 1).any():
                        entry["sensitivity_at_threshold"] = float(apply_threshold(ss_[ys == 1], thresholds_by_key[key]).mean())
                    metrics["per_site"].setdefault(str(site), {})[key] = entry
        # slice level
        if ss.slices is not None:
            sl = ss.slices
            if "section" in sl.columns:
                sl = sl[sl["section"] == section]
            if "counted" in sl.columns:  # the slices with enough brain that the method's volume scores use
                sl = sl[sl["counted"] == 1]
            if "label" in df.columns:  # a healthy scan has no mask: all its slices are healthy
                healthy_ids = set(df.loc[df["label"] == 0, "subject_id"].astype(str))
                sl = sl.copy()
                if "slice_label" not in sl.columns:
                    sl["slice_label"] = np.nan
                sl["slice_label"] = pd.to_numeric(sl["slice_label"], errors="coerce")
                fill = sl["slice_label"].isna() & sl["subject_id"].astype(str).isin(healthy_ids)
                sl.loc[fill, "slice_label"] = 0
                if "brain_fraction" in sl.columns:
                    metrics["brain_fraction"][ss.name] = brain_fraction_rho(sl, ss.slice_columns, healthy_ids,
                                                                            min(n_bootstrap, 200), seed)
            if "slice_label" in sl.columns:
                sl = sl[sl["slice_label"].isin([0, 1])]
                ys = sl["slice_label"].to_numpy(dtype=int)
                groups = sl["subject_id"].astype(str).to_numpy()
                slice_cols = ss.slice_columns
                log(f"{ss.name}: slice level, {len(sl)} slices of {len(np.unique(groups))} scans")
                for col in slice_cols:
                    key = _key(ss, col, several)
                    s = sl[col].to_numpy(dtype=np.float64)
                    metrics["slice"][key] = _safe_metrics(ys, s, n_resamples=n_bootstrap, seed=seed, groups=groups)
                    if "error" not in metrics["slice"][key]:
                        curves["slice"][key] = (ys, s)
                if not control_done and "brain_fraction" in sl.columns:
                    # control: how far the slice's size alone gets (the slices of the first run with slice scores)
                    control_done = True
                    key = f"{CONTROL_RUN}/brain_fraction" if several else "brain_fraction (control)"
                    metrics["slice"][key] = _safe_metrics(ys, sl["brain_fraction"].to_numpy(dtype=np.float64),
                                                          n_resamples=n_bootstrap, seed=seed, groups=groups)
                    metrics["slice"][key]["control"] = f"the slice's brain fraction as its score (slices of {ss.name})"
            else:
                metrics["notes"].append(f"{ss.name}: slice_scores.csv has no slice_label column: no slice-level metrics")
        # voxel level
        for map_name, col in ss.map_columns.items():
            cases = []
            for row in sec.to_dict("records"):
                rel = row.get(col)
                if not isinstance(rel, str) or not rel:
                    continue
                label = row.get("label")
                label = None if label is None or (isinstance(label, float) and math.isnan(label)) else int(label)
                mask = row.get("mask") if isinstance(row.get("mask"), str) else None
                if mask is None and label != 0:
                    continue
                map_path = rel if os.path.isabs(rel) else str(ss.directory / rel)
                cases.append(VoxelCase(str(row["subject_id"]), str(row["image"]), map_path, mask,
                                       row.get("brain_mask") if isinstance(row.get("brain_mask"), str) else None, label))  # fmt: skip
            if not cases:
                continue
            log(f"{ss.name}: voxel level, map {map_name!r}, {len(cases)} scans")
            key = _key(ss, map_name, several)
            try:
                metrics["voxel"][key] = voxel_metrics(cases, max_voxels, n_bootstrap_voxel, seed)
            except ValueError as err:
                metrics["voxel"][key] = {"error": str(err), "n_scans": len(cases)}
            metrics["voxel"][key]["_cases"] = cases  # for the overlay figure; removed before writing
    metrics["baselines"] = baseline_comparison({ss.name: ss.meta.get("method") for ss in sets}, metrics["volume"],
                                               labelled_by_run, several, n_bootstrap, seed)
    metrics["meta"]["seconds"] = round(time.time() - t0, 2)
    if report:
        from mri_anomaly.evaluation.report import write_report

        log("figures and report.html")
        write_report(metrics, sets, curves, thresholds_by_key, out, title=title, section=section, several=several)
    for v in metrics["voxel"].values():
        v.pop("_cases", None)
    metrics["meta"]["seconds"] = round(time.time() - t0, 2)
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2))
    log(f"wrote {out / 'metrics.json'}" + (f" and {out / 'report.html'}" if report else "") + f" in {time.time() - t0:.1f} s")
    return _jsonable(metrics)
