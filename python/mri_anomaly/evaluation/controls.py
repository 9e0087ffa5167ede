"""Controls that say whether a score measures anomalies: the brain-fraction confound and the baselines.

* **Brain fraction.** A slice score that tracks how much of the slice is brain (caps of the head vs central
  slices) looks like detection at slice level without being it. Reported: the Spearman rho between every
  slice score column and the slice's brain fraction on the counted slices of *healthy* scans (0 is what a
  score of anatomy should show), and the brain fraction itself as a slice "score" (the AUROC a trivial
  detector gets from slice size alone).
* **Baselines.** A learned method is worth its cost only where it beats the ``intensity`` and ``normative``
  baselines on the same scans. For each learned run its best volume column (highest AUROC) is compared with
  each baseline's best column by a paired bootstrap of the AUROC difference (the same resampled scans for
  both, stratified by label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from mri_anomaly.evaluation.bootstrap import auroc_with_ci

__all__ = ["BASELINE_METHODS", "baseline_comparison", "best_volume_columns", "brain_fraction_rho"]

BASELINE_METHODS = ("intensity", "normative")


def brain_fraction_rho(
    slices: pd.DataFrame, columns: Sequence[str], healthy_ids: set[str], n_resamples: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Spearman rho of each column with ``brain_fraction`` over counted slices of healthy scans.

    Args:
        slices: ``slice_scores.csv`` rows (``subject_id``, ``brain_fraction``, ``counted``, score columns).
        columns: slice score columns. healthy_ids: subject ids of healthy scans.
        n_resamples: bootstrap resamples of whole scans for the 95 % CI of rho (slices of one scan are not
            independent: a scan's size shifts all its slices together), 0 for none.

    Returns:
        ``{"n_slices", "n_scans", "rho": {column: rho}, "rho_ci": {column: [low, high]}}`` (rho NaN when a
        column is constant).
    """
    part = slices[slices["subject_id"].astype(str).isin(healthy_ids)]
    if "counted" in part.columns:
        part = part[part["counted"] == 1]
    fraction = (
        part["brain_fraction"].to_numpy(dtype=np.float64) if "brain_fraction" in part.columns else np.zeros(0)
    )
    subjects = part["subject_id"].astype(str).to_numpy()
    members = [np.flatnonzero(subjects == u) for u in np.unique(subjects)]
    rng = np.random.default_rng(seed)
    draws = [
        np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        for _ in range(n_resamples if members else 0)
    ]

    def rho_of(values: np.ndarray, f: np.ndarray) -> float:
        ok = np.isfinite(values) & np.isfinite(f)
        if ok.sum() < 3 or np.ptp(values[ok]) == 0 or np.ptp(f[ok]) == 0:
            return float("nan")
        return float(spearmanr(values[ok], f[ok]).statistic)

    rho: dict[str, float] = {}
    rho_ci: dict[str, list[float]] = {}
    for column in columns:
        values = part[column].to_numpy(dtype=np.float64)
        rho[column] = rho_of(values, fraction)
        if draws and np.isfinite(rho[column]):
            replicates = np.array([rho_of(values[d], fraction[d]) for d in draws])
            replicates = replicates[np.isfinite(replicates)]
            if replicates.size >= 2:
                rho_ci[column] = [float(v) for v in np.quantile(replicates, [0.025, 0.975])]
    return {"n_slices": int(len(part)), "n_scans": int(len(members)), "rho": rho, "rho_ci": rho_ci}


def best_volume_columns(
    volume_metrics: Mapping[str, Mapping[str, Any]], several: bool
) -> dict[str, tuple[str, float]]:
    """Each run's volume column with the highest finite AUROC: ``{run: (column, auroc)}`` in the runs' order
    (keys ``run/column`` when ``several``; else the one run is ``""``). Ties keep the first column."""
    best: dict[str, tuple[str, float]] = {}
    for key, entry in volume_metrics.items():
        run, column = key.split("/", 1) if several and "/" in key else ("", key)
        value = entry.get("auroc")
        if (
            isinstance(value, (int, float))
            and np.isfinite(value)
            and (run not in best or value > best[run][1])
        ):
            best[run] = (column, float(value))
    return best


def baseline_comparison(
    runs: Mapping[str, str | None],
    volume_metrics: Mapping[str, Mapping[str, Any]],
    labelled: Mapping[str, pd.DataFrame],
    several: bool,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Each learned run's best volume column against each baseline's best column.

    Args:
        runs: ``{run name: method}``. volume_metrics: ``metrics["volume"]`` (keys ``run/column`` when
            ``several``). labelled: ``{run name: its labelled evaluated scans (subject_id, label, columns)}``.
        several: whether the keys of ``volume_metrics`` carry the run name.
        n_resamples: bootstrap resamples of the AUROC difference.

    Returns:
        ``{run: {"best_column", "auroc", "vs": {baseline run: {"column", "auroc", "difference",
        "difference_ci", "beats", "significant", "n_common_scans"}}, "beats_all_baselines", "verdict"}}`` for every
        learned run; empty when no baseline was evaluated. ``beats`` is the point estimate (AUROC higher);
        ``significant``: the paired difference's 95 % CI lies above 0. ``verdict``: ``"yes"`` when it is
        significant against every baseline, ``"ahead, CI includes 0"`` when only the point estimates are higher,
        ``"no"`` otherwise.
    """
    best_of = best_volume_columns(volume_metrics, several)

    def best(run: str) -> tuple[str, float] | None:
        return best_of.get(run if several else "")

    baselines = [r for r, m in runs.items() if m in BASELINE_METHODS and best(r) is not None]
    out: dict[str, Any] = {}
    if not baselines:
        return out
    for run, method in runs.items():
        found = best(run)
        if method in BASELINE_METHODS or found is None or run not in labelled:
            continue
        column, value = found
        entry: dict[str, Any] = {"best_column": column, "auroc": value, "vs": {}}
        for base in baselines:
            base_column, base_value = best(base)  # type: ignore[misc]
            pair = labelled[run][["subject_id", "label", column]].merge(
                labelled[base][["subject_id", base_column]], on="subject_id", suffixes=("", " (baseline)")
            )
            y = pair["label"].to_numpy(dtype=int)
            if len(pair) < 2 or y.min() == y.max():
                continue
            base_key = base_column if base_column != column else f"{base_column} (baseline)"
            paired = auroc_with_ci(
                y,
                pair[column].to_numpy(dtype=np.float64),
                n_resamples=n_resamples,
                seed=seed,
                paired_with=pair[base_key].to_numpy(dtype=np.float64),
            )
            diff, ci = (
                paired["auroc_difference"],
                paired.get("auroc_difference_ci", [float("nan"), float("nan")]),
            )
            entry["vs"][base] = {
                "column": base_column,
                "auroc": base_value,
                "difference": diff,
                "difference_ci": ci,
                "beats": bool(diff > 0),
                "significant": bool(np.isfinite(ci[0]) and ci[0] > 0),
                "n_common_scans": int(len(pair)),
            }
        entry["beats_all_baselines"] = bool(entry["vs"]) and all(v["beats"] for v in entry["vs"].values())
        significant = bool(entry["vs"]) and all(v["significant"] for v in entry["vs"].values())
        entry["verdict"] = (
            "yes" if significant else "ahead, CI includes 0" if entry["beats_all_baselines"] else "no"
        )
        out[run] = entry
    return out
