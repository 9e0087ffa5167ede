"""The levels of ``evaluate``, one function each: volume (with strata), thresholds, per-site, slice, voxel.

Each function reads one run's tables (:class:`~mri_anomaly.evaluation.score_tables.ScoreTables`) and fills its
part of the ``metrics.json`` dict held by an :class:`Evaluation`; keys are ``column`` for one run and
``run/column`` when several runs are compared.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mri_anomaly.evaluation.bootstrap import metrics_with_ci
from mri_anomaly.evaluation.controls import brain_fraction_rho
from mri_anomaly.evaluation.score_tables import ScoreTables
from mri_anomaly.evaluation.strata import stratified_volume_metrics
from mri_anomaly.evaluation.thresholds import (
    apply_threshold,
    calibrate_thresholds,
    refuse_few_scans,
    save_thresholds,
)
from mri_anomaly.evaluation.voxel import ScanVoxels, VoxelCase, voxel_metrics

__all__ = [
    "CONTROL_RUN",
    "Evaluation",
    "labelled_scans",
    "section_slices",
    "slice_level",
    "site_level",
    "threshold_level",
    "volume_level",
    "voxel_level",
]

CONTROL_RUN = "control"
"""Run name of the control rows (the brain fraction as a slice score) when several runs are compared."""


@dataclass
class Evaluation:
    """Options of one ``evaluate`` call and the results it accumulates."""

    section: str
    calibration_section: str
    specificity: float
    n_bootstrap: int
    n_bootstrap_voxel: int
    max_voxels: int | None
    seed: int
    several: bool
    metrics: dict[str, Any]
    log: Callable[[str], None]
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: {"volume": {}, "slice": {}}
    )
    thresholds_by_key: dict[str, float] = field(default_factory=dict)
    control_done: bool = False
    allow_few_calibration_scans: bool = False
    voxel_scans: dict[tuple, ScanVoxels] = field(default_factory=dict)
    """the evaluated voxels of each scan, read once for all maps of all runs (:func:`~mri_anomaly.evaluation.voxel.load_case_voxels`)"""

    def key(self, ss: ScoreTables, column: str) -> str:
        return f"{ss.name}/{column}" if self.several else column

    def note(self, text: str) -> None:
        self.metrics["notes"].append(text)


def labelled_scans(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a 0/1 ``label``."""
    if "label" not in df.columns:
        return df.iloc[0:0]
    return df[df["label"].isin([0, 1])]


def one_class_problem(
    ss: ScoreTables, section: str, scans: pd.DataFrame, labelled: pd.DataFrame
) -> str | None:
    """Why the section cannot give detection metrics (no labels, or one class only), or None when it can."""
    n_anomalous = int((labelled["label"] == 1).sum()) if len(labelled) else 0
    n_healthy = len(labelled) - n_anomalous
    if n_healthy and n_anomalous:
        return None
    where = f"{ss.name}: section {section!r} ({len(scans)} scans in {ss.directory / 'scores.csv'})"
    if not len(labelled):
        return f"{where} has no labelled scans (label 0/1): no volume metrics; give labels in the datalist"
    missing = "healthy (label 0)" if not n_healthy else "anomalous (label 1)"
    return (
        f"{where} has only {n_healthy or n_anomalous} {'anomalous' if not n_healthy else 'healthy'} scans and no "
        f"{missing} ones: AUROC, AP and sensitivities need both; add {missing} scans to the section "
        "(mri-anomaly datalist puts a healthy share in test: --test-fraction)"
    )


def _safe_metrics(y, s, **kwargs) -> dict[str, Any]:
    try:
        return metrics_with_ci(y, s, **kwargs)
    except ValueError as err:
        return {"error": str(err), "n": int(len(y)), "n_anomalous": int(np.sum(np.asarray(y) == 1))}


def _operating_point_fn(threshold: float) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    def fn(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        flagged = apply_threshold(s, threshold)
        return {
            "sensitivity": float(flagged[y == 1].mean()),
            "specificity": float(1.0 - flagged[y == 0].mean()),
        }

    return fn


def volume_level(
    ev: Evaluation,
    ss: ScoreTables,
    scans: pd.DataFrame,
    labelled: pd.DataFrame,
    subject_table: pd.DataFrame | None,
    n_bootstrap_strata: int | None,
) -> np.ndarray:
    """Volume metrics of every score column (and per lesion kind / size stratum with a subject table).

    Returns:
        (n,) the labels of ``labelled``.
    """
    if len(scans) == 0:
        ev.note(f"{ss.name}: no scans of section {ev.section!r} in {ss.directory / 'scores.csv'}")
    else:
        problem = one_class_problem(ss, ev.section, scans, labelled)
        if problem is not None:
            ev.metrics["warnings"].append(problem)
            ev.note(f"WARNING: {problem}")
            print(f"warning: {problem}", file=sys.stderr, flush=True)
    ev.log(f"{ss.name}: volume level, {len(labelled)} labelled scans, {len(ss.score_columns)} score columns")
    y = labelled["label"].to_numpy(dtype=int) if len(labelled) else np.zeros(0, int)
    for col in ss.score_columns:
        key = ev.key(ss, col)
        s = labelled[col].to_numpy(dtype=np.float64) if len(labelled) else np.zeros(0)
        ev.metrics["volume"][key] = _safe_metrics(y, s, n_resamples=ev.n_bootstrap, seed=ev.seed)
        if "error" not in ev.metrics["volume"][key]:
            ev.curves["volume"][key] = (y, s)
    if subject_table is not None and len(labelled) and (y == 0).any() and (y == 1).any():
        resamples = ev.n_bootstrap if n_bootstrap_strata is None else n_bootstrap_strata
        per_column = stratified_volume_metrics(labelled, ss.score_columns, subject_table, resamples, ev.seed)
        for col, entry in per_column.items():
            ev.metrics["strata"][ev.key(ss, col)] = entry
    return y


def threshold_level(
    ev: Evaluation,
    ss: ScoreTables,
    calibration: pd.DataFrame,
    labelled: pd.DataFrame,
    y: np.ndarray,
    run: str | os.PathLike | None,
) -> None:
    """Thresholds calibrated on the healthy calibration scans (stored in ``run`` when given), and their
    sensitivity and specificity on the evaluated section."""
    healthy = calibration[calibration["label"] != 1] if "label" in calibration.columns else calibration
    if len(calibration) and "label" in calibration.columns and (calibration["label"] == 1).any():
        ev.note(
            f"{ss.name}: {int((calibration['label'] == 1).sum())} scans labelled anomalous in "
            f"{ev.calibration_section!r} were left out of calibration"
        )
    if not len(healthy):
        ev.note(
            f"{ss.name}: no healthy scans of section {ev.calibration_section!r} in its scores.csv: no thresholds "
            f"calibrated (score that section too: mri-anomaly score --section {ev.calibration_section})"
        )
        return
    calib = calibrate_thresholds(
        {c: healthy[c].to_numpy(dtype=np.float64) for c in ss.score_columns},
        ev.specificity,
        ev.calibration_section,
    )
    calib["score_dir"] = str(ss.directory)
    if calib["note"]:
        ev.note(f"{ss.name}: {calib['note']}")
    calib = refuse_few_scans(calib, ev.allow_few_calibration_scans, "--allow-few-calibration-scans")
    if "refused" in calib:
        ev.note(f"{ss.name}: {calib['refused']}")
        ev.metrics["runs"][ss.name]["thresholds"] = calib
        return
    if run is not None:
        calib["stored_in"] = str(save_thresholds(run, calib))
        ev.log(f"{ss.name}: thresholds stored in {calib['stored_in']}")
    for col, t in calib["thresholds"].items():
        key = ev.key(ss, col)
        ev.thresholds_by_key[key] = t
        entry: dict[str, Any] = {
            "threshold": t,
            "calibration_specificity": calib["calibration_specificity"][col],
            "n_calibration": calib["n_healthy"],
        }
        if len(labelled) and key in ev.curves["volume"]:
            s = labelled[col].to_numpy(dtype=np.float64)
            op = _safe_metrics(
                y, s, metric_fn=_operating_point_fn(t), n_resamples=ev.n_bootstrap, seed=ev.seed
            )
            entry.update(
                {f"test_{k}": v for k, v in op.items() if k.startswith(("sensitivity", "specificity"))}
            )
        ev.metrics["thresholds"][key] = entry
    ev.metrics["runs"][ss.name]["thresholds"] = {
        k: v for k, v in calib.items() if k != "calibration_specificity"
    }


def site_level(ev: Evaluation, ss: ScoreTables, labelled: pd.DataFrame) -> None:
    """Volume metrics per acquisition site, where the data name more than one."""
    if not ("site" in labelled.columns and labelled["site"].notna().any() and labelled["site"].nunique() > 1):
        return
    for site, part in labelled.groupby("site"):
        ys = part["label"].to_numpy(dtype=int)
        for col in ss.score_columns:
            key = ev.key(ss, col)
            s = part[col].to_numpy(dtype=np.float64)
            entry = _safe_metrics(ys, s, n_resamples=ev.n_bootstrap, seed=ev.seed)
            threshold = ev.thresholds_by_key.get(key)
            if threshold is not None and (ys == 0).any():
                entry["specificity_at_threshold"] = float(1 - apply_threshold(s[ys == 0], threshold).mean())
            if threshold is not None and (ys == 1).any():
                entry["sensitivity_at_threshold"] = float(apply_threshold(s[ys == 1], threshold).mean())
            ev.metrics["per_site"].setdefault(str(site), {})[key] = entry


def section_slices(slices: pd.DataFrame, volumes: pd.DataFrame, section: str) -> pd.DataFrame:
    """The counted slices of ``section`` (the slices with enough brain that the method's volume scores use),
    ``slice_label`` made numeric and 0 on every slice of a healthy scan of ``volumes`` (a healthy scan has no
    mask); slices of unlabelled scans keep a missing ``slice_label``."""
    sl = slices
    if "section" in sl.columns:
        sl = sl[sl["section"] == section]
    if "counted" in sl.columns:
        sl = sl[sl["counted"] == 1]
    if "label" in volumes.columns:
        healthy_ids = set(volumes.loc[volumes["label"] == 0, "subject_id"].astype(str))
        sl = sl.copy()
        if "slice_label" not in sl.columns:
            sl["slice_label"] = np.nan
        sl["slice_label"] = pd.to_numeric(sl["slice_label"], errors="coerce")
        fill = sl["slice_label"].isna() & sl["subject_id"].astype(str).isin(healthy_ids)
        sl.loc[fill, "slice_label"] = 0
    return sl


def slice_level(ev: Evaluation, ss: ScoreTables, volumes: pd.DataFrame) -> None:
    """Slice metrics (a bootstrap over whole scans), the brain-fraction correlation on healthy scans, and once
    per evaluation the brain fraction itself as a control score."""
    if ss.slices is None:
        return
    sl = section_slices(ss.slices, volumes, ev.section)
    if "label" in volumes.columns and "brain_fraction" in sl.columns:
        healthy_ids = set(volumes.loc[volumes["label"] == 0, "subject_id"].astype(str))
        ev.metrics["brain_fraction"][ss.name] = brain_fraction_rho(
            sl, ss.slice_columns, healthy_ids, min(ev.n_bootstrap, 200), ev.seed
        )
    if "slice_label" not in sl.columns:
        ev.note(f"{ss.name}: slice_scores.csv has no slice_label column: no slice-level metrics")
        return
    sl = sl[sl["slice_label"].isin([0, 1])]
    ys = sl["slice_label"].to_numpy(dtype=int)
    groups = sl["subject_id"].astype(str).to_numpy()
    ev.log(f"{ss.name}: slice level, {len(sl)} slices of {len(np.unique(groups))} scans")
    for col in ss.slice_columns:
        key = ev.key(ss, col)
        s = sl[col].to_numpy(dtype=np.float64)
        ev.metrics["slice"][key] = _safe_metrics(
            ys, s, n_resamples=ev.n_bootstrap, seed=ev.seed, groups=groups
        )
        if "error" not in ev.metrics["slice"][key]:
            ev.curves["slice"][key] = (ys, s)
    if not ev.control_done and "brain_fraction" in sl.columns:
        # control: how far the slice's size alone gets (the slices of the first run with slice scores)
        ev.control_done = True
        key = f"{CONTROL_RUN}/brain_fraction" if ev.several else "brain_fraction (control)"
        ev.metrics["slice"][key] = _safe_metrics(
            ys,
            sl["brain_fraction"].to_numpy(dtype=np.float64),
            n_resamples=ev.n_bootstrap,
            seed=ev.seed,
            groups=groups,
        )
        ev.metrics["slice"][key]["control"] = f"the slice's brain fraction as its score (slices of {ss.name})"


def voxel_level(ev: Evaluation, ss: ScoreTables, scans: pd.DataFrame) -> None:
    """Voxel metrics of every map over the evaluated scans with a mask (anomalous) or label 0 (healthy)."""
    for map_name, col in ss.map_columns.items():
        cases = []
        for row in scans.to_dict("records"):
            rel = row.get(col)
            if not isinstance(rel, str) or not rel:
                continue
            label = row.get("label")
            label = None if label is None or (isinstance(label, float) and math.isnan(label)) else int(label)
            mask = row.get("mask") if isinstance(row.get("mask"), str) else None
            if mask is None and label != 0:
                continue
            map_path = rel if os.path.isabs(rel) else str(ss.directory / rel)
            brain = row.get("brain_mask") if isinstance(row.get("brain_mask"), str) else None
            cases.append(VoxelCase(str(row["subject_id"]), str(row["image"]), map_path, mask, brain, label))
        if not cases:
            continue
        ev.log(f"{ss.name}: voxel level, map {map_name!r}, {len(cases)} scans")
        key = ev.key(ss, map_name)
        try:
            ev.metrics["voxel"][key] = voxel_metrics(
                cases, ev.max_voxels, ev.n_bootstrap_voxel, ev.seed, scans=ev.voxel_scans
            )
        except ValueError as err:
            ev.metrics["voxel"][key] = {"error": str(err), "n_scans": len(cases)}
        ev.metrics["voxel"][key]["_cases"] = cases  # for the overlay figure; removed before writing
