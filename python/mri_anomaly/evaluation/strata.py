"""Volume-level detection per lesion kind and per lesion-volume stratum.

An overall AUROC hides what a method misses: a large tumour is easy, a 0.2 cm^3 focal lesion is not. The
subject table (``subjects.csv`` of the demo cohort: ``subject_id, lesion_kind, lesion_volume_cm3,
size_stratum``; any table with ``subject_id`` and some of these columns works) names each anomalous scan's
stratum. For every stratum, the anomalous scans of that stratum are ranked against **all** healthy scans of
the evaluated section: AUROC with a stratified bootstrap CI
(:func:`~mri_anomaly.evaluation.bootstrap.auroc_with_ci`, all replicates at once) and the AP (point estimate;
it depends on the stratum's prevalence).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mri_anomaly.evaluation.bootstrap import auroc_with_ci
from mri_anomaly.evaluation.metrics import average_precision

__all__ = ["STRATUM_COLUMNS", "load_subject_table", "stratified_volume_metrics"]

STRATUM_COLUMNS = {"kind": "lesion_kind", "variant": "lesion_variant", "size": "size_stratum"}
"""Stratum prefix -> subject-table column (keys of the result look like ``kind:ms``, ``size:small``,
``variant:focal_opposite``). A variant stratum is listed only where it splits a kind (the demo's focal lesions
are brighter or darker than tissue: thresholding the image finds only the first)."""


def load_subject_table(path: str | os.PathLike) -> pd.DataFrame:
    """The subject table with ``subject_id`` as a string column.

    Raises:
        ValueError: naming the file when it has no ``subject_id`` column.
    """
    table = pd.read_csv(path, dtype={"subject_id": str})
    if "subject_id" not in table.columns:
        raise ValueError(
            f"{path}: a subject table needs a subject_id column (columns: {list(table.columns)})"
        )
    return table


def default_subject_table(datalist: str | os.PathLike | None) -> Path | None:
    """``subjects.csv`` beside the datalist file, when there is one (the demo cohort writes it)."""
    if datalist is None or isinstance(datalist, Mapping):
        return None
    path = Path(datalist).resolve().parent / "subjects.csv"
    return path if path.is_file() else None


def stratified_volume_metrics(
    labelled: pd.DataFrame,
    columns: Sequence[str],
    subjects: pd.DataFrame,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """AUROC/AP of each score column per stratum.

    Args:
        labelled: the evaluated scans with ``subject_id``, ``label`` in {0, 1} and the score columns.
        columns: score columns. subjects: the subject table. n_bootstrap: resamples of each CI.

    Returns:
        ``{column: {"kind:<k>" | "variant:<v>" | "size:<s>": {"auroc", "auroc_ci", "ap", "n", "n_anomalous"}}}``;
        strata without anomalous scans, and variant strata holding exactly the scans of one kind, are left out.
    """
    merged = labelled.merge(
        subjects.drop(columns=[c for c in ("label", "section") if c in subjects.columns]),
        on="subject_id",
        how="left",
    )
    healthy = merged[merged["label"] == 0]
    anomalous = merged[merged["label"] == 1]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for prefix, table_column in STRATUM_COLUMNS.items():
        if table_column not in merged.columns or healthy.empty:
            continue
        values = anomalous[table_column].dropna().astype(str)
        for value in sorted(v for v in values.unique() if v):
            part = anomalous[anomalous[table_column].astype(str) == value]
            if prefix == "variant" and _same_as_a_kind(part, anomalous):
                continue
            both = pd.concat([healthy, part])
            y = both["label"].to_numpy(dtype=int)
            for column in columns:
                s = both[column].to_numpy(dtype=np.float64)
                entry = auroc_with_ci(y, s, n_resamples=n_bootstrap, seed=seed)
                entry["ap"] = average_precision(y, s)
                out.setdefault(column, {})[f"{prefix}:{value}"] = entry
    return out


def _same_as_a_kind(part: pd.DataFrame, anomalous: pd.DataFrame) -> bool:
    """Whether ``part`` holds exactly the anomalous scans of one lesion kind (its variant adds nothing)."""
    if "lesion_kind" not in anomalous.columns:
        return False
    kinds = part["lesion_kind"].dropna().astype(str).unique()
    return len(kinds) == 1 and len(part) == int((anomalous["lesion_kind"].astype(str) == kinds[0]).sum())
