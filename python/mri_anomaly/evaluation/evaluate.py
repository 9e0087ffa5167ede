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

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from mri_anomaly.errors import MissingInputError, UserInputError
from mri_anomaly.evaluation.controls import baseline_comparison
from mri_anomaly.evaluation.levels import (
    CONTROL_RUN,
    Evaluation,
    labelled_scans,
    site_level,
    slice_level,
    threshold_level,
    volume_level,
    voxel_level,
)
from mri_anomaly.evaluation.score_tables import (
    ScoreTables,
    attach_datalist,
    datalist_lookup,
    load_score_tables,
)
from mri_anomaly.evaluation.strata import default_subject_table, load_subject_table
from mri_anomaly.files import atomic_write_json, jsonable

__all__ = ["CONTROL_RUN", "evaluate"]


def _load_runs(dirs: Sequence[str | os.PathLike], names: Sequence[str] | None) -> list[ScoreTables]:
    """The score folders' tables, named by ``names`` or by their folder names (made unique)."""
    sets: list[ScoreTables] = []
    used: set[str] = set()
    for i, d in enumerate(dirs):
        name = names[i] if names and i < len(names) else Path(d).resolve().name
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        sets.append(load_score_tables(d, name))
    return sets


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
    allow_few_calibration_scans: bool = False,
    workers: int = 1,
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
        allow_few_calibration_scans: store thresholds even from fewer healthy calibration scans than the
            specificity needs (otherwise none are stored and the report says why).
        workers: processes that evaluate the runs and draw the figures (spawned when > 1, each run in one of
            them); ``metrics.json`` is the same for any number (each run's part is merged in run order). A script
            that calls this with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard of spawned processes.

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
        raise UserInputError(
            f"{len(runs)} --run given for {len(dirs)} --scores; give one run per score directory"
        )
    for run in runs:
        if not Path(run).is_dir():
            raise MissingInputError(
                f"{run}: run directory not found (--run must be a folder written by `mri-anomaly train`)"
            )
    if int(workers) < 1:
        raise UserInputError(f"workers must be >= 1, got {workers}")
    sets = _load_runs(dirs, names)
    lookup = datalist_lookup(datalist)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    subject_path = (
        Path(subjects)
        if subjects is not None
        else default_subject_table(None if isinstance(datalist, Mapping) else datalist)
    )
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
            "allow_few_calibration_scans": allow_few_calibration_scans,
        },
        "notes": [],
        "warnings": [],
    }
    options = dict(
        section=section,
        calibration_section=calibration_section,
        specificity=specificity,
        n_bootstrap=n_bootstrap,
        n_bootstrap_voxel=n_bootstrap_voxel,
        max_voxels=max_voxels,
        seed=seed,
        several=len(sets) > 1,
        allow_few_calibration_scans=allow_few_calibration_scans,
    )
    ev = Evaluation(**options, metrics=metrics, log=log)
    run_dirs = [str(r) for r in runs] if runs else [None] * len(sets)
    workers = min(int(workers), len(sets))
    executor = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    )
    try:
        for ss in sets:
            attach_datalist(ss, lookup)
        if executor is None:
            parts = _evaluate_runs(options, sets, run_dirs, subject_table, n_bootstrap_strata, log)
        else:
            task = dict(options=options, datalist=datalist, subjects=subject_path, strata=n_bootstrap_strata)
            groups = _balanced_groups([_evaluation_cost(ss) for ss in sets], workers)
            tasks = [{**task, "runs": [(str(sets[i].directory), sets[i].name, run_dirs[i]) for i in g]}
                     for g in groups]  # fmt: skip
            parts = [None] * len(sets)
            for group, results in zip(groups, executor.map(_evaluate_runs_worker, tasks)):
                for i, part in zip(group, results):
                    parts[i] = part
        labelled_by_run = {}
        for ss, part in zip(sets, parts):
            for line in part.pop("log", []):
                log(line)
            _merge_run_part(ev, part)
            labelled_by_run[ss.name] = part["labelled"]
        metrics["baselines"] = baseline_comparison(
            {ss.name: ss.meta.get("method") for ss in sets},
            metrics["volume"],
            labelled_by_run,
            ev.several,
            n_bootstrap,
            seed,
        )
        metrics["meta"]["seconds"] = round(time.time() - t0, 2)
        if report:
            from mri_anomaly.evaluation.report import write_report

            log("figures and report.html")
            write_report(
                metrics,
                sets,
                ev.curves,
                ev.thresholds_by_key,
                out,
                title=title,
                section=section,
                several=ev.several,
                executor=executor,
            )
    finally:
        if executor is not None:
            executor.shutdown()
    for v in metrics["voxel"].values():
        v.pop("_cases", None)
    metrics["meta"]["seconds"] = round(time.time() - t0, 2)
    atomic_write_json(out / "metrics.json", metrics)
    log(
        f"wrote {out / 'metrics.json'}"
        + (f" and {out / 'report.html'}" if report else "")
        + f" in {time.time() - t0:.1f} s"
    )
    return jsonable(metrics)


_RUN_PARTS = ("volume", "strata", "brain_fraction", "slice", "voxel", "thresholds", "per_site", "runs")


def _evaluate_run(
    options: Mapping[str, Any],
    ss: ScoreTables,
    subject_table: pd.DataFrame | None,
    n_bootstrap_strata: int | None,
    run_dir: str | None,
    voxel_scans: dict,
    control_done: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], bool]:
    """Every level of one run (its scores already joined with the datalist) into a part of ``metrics.json`` of its
    own: ``{"metrics", "curves", "thresholds", "labelled"}``, and whether the slice control is done now."""
    part: dict[str, Any] = {**{k: {} for k in _RUN_PARTS}, "notes": [], "warnings": []}
    ev = Evaluation(**options, metrics=part, log=log, control_done=control_done, voxel_scans=voxel_scans)
    df = ss.volumes
    section, calibration_section = ev.section, ev.calibration_section
    scans = df[df["section"] == section] if "section" in df.columns else df
    calibration = df[df["section"] == calibration_section] if "section" in df.columns else df.iloc[0:0]
    labelled = labelled_scans(scans)
    part["runs"][ss.name] = {
        "directory": str(ss.directory),
        "method": ss.meta.get("method"),
        "run": ss.meta.get("run"),
        "score_columns": ss.score_columns,
        "maps": sorted(ss.map_columns),
        "n_scans": int(len(scans)),
        "n_labelled": int(len(labelled)),
        "n_anomalous": int((labelled["label"] == 1).sum()) if len(labelled) else 0,
        "n_calibration": int(len(calibration)),
    }
    y = volume_level(ev, ss, scans, labelled, subject_table, n_bootstrap_strata)
    threshold_level(ev, ss, calibration, labelled, y, run_dir)
    site_level(ev, ss, labelled)
    slice_level(ev, ss, df)
    voxel_level(ev, ss, scans)
    result = {"metrics": part, "curves": ev.curves, "thresholds": ev.thresholds_by_key, "labelled": labelled}
    return result, ev.control_done


def _evaluate_runs(
    options: Mapping[str, Any],
    sets: Sequence[ScoreTables],
    run_dirs: Sequence[str | None],
    subject_table: pd.DataFrame | None,
    n_bootstrap_strata: int | None,
    log: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    """:func:`_evaluate_run` of each run in order, sharing the scans' voxels and the slice control; with ``log``
    None, each run's log lines are kept in its part (``"log"``) for the caller to print."""
    parts, cache, control_done = [], {}, False
    for ss, run_dir in zip(sets, run_dirs):
        lines: list[str] = []
        part, control_done = _evaluate_run(
            options, ss, subject_table, n_bootstrap_strata, run_dir, cache, control_done, log or lines.append
        )
        parts.append(part if log else {**part, "log": lines})
    return parts


def _evaluate_runs_worker(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`_evaluate_runs` of the runs of ``task["runs"]`` (score folder, name, run folder) in a worker process,
    the log lines kept in the parts (the parent prints them in run order)."""
    lookup = datalist_lookup(task["datalist"])
    subjects = task["subjects"]
    subject_table = load_subject_table(subjects) if subjects is not None else None
    sets = [load_score_tables(directory, name) for directory, name, _ in task["runs"]]
    for ss in sets:
        attach_datalist(ss, lookup)
    run_dirs = [run_dir for _, _, run_dir in task["runs"]]
    return _evaluate_runs(task["options"], sets, run_dirs, subject_table, task["strata"], None)


def _merge_run_part(ev: Evaluation, part: Mapping[str, Any]) -> None:
    """Add one run's part to ``ev`` as if it had been evaluated into it: dicts updated (``per_site`` per site),
    notes and warnings appended, and the slice-level brain-fraction control kept from the first run that has it."""
    for key, value in part["metrics"].items():
        target = ev.metrics[key]
        if isinstance(value, list):
            target.extend(value)
        elif key == "per_site":
            for site, entries in value.items():
                target.setdefault(site, {}).update(entries)
        else:
            for k, v in value.items():
                if k in target and isinstance(v, dict) and "control" in v:
                    continue  # the control of an earlier run stands
                target[k] = v
    for level, curves in part["curves"].items():
        ev.curves.setdefault(level, {}).update(curves)
    ev.thresholds_by_key.update(part["thresholds"])


def _evaluation_cost(ss: ScoreTables) -> float:
    """A rough relative cost of evaluating a run: its volume and slice columns, a map counting for four."""
    return len(ss.score_columns) + len(ss.slice_columns) + 4 * len(ss.map_columns)


def _balanced_groups(costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices of ``costs`` in ``n`` groups of about equal total (costliest first to the lightest group), each
    group in index order."""
    groups: list[list[int]] = [[] for _ in range(n)]
    totals = [0.0] * n
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        j = min(range(n), key=lambda j: totals[j])
        groups[j].append(i)
        totals[j] += costs[i]
    return [sorted(g) for g in groups if g]
