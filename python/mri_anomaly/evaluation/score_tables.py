"""The tables of a score folder (``scores.csv``, ``slice_scores.csv``, ``score_meta.json``) as ``evaluate`` reads
them, completed from the datalist (labels, masks, sites) where the tables lack them."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mri_anomaly.data import load_datalist
from mri_anomaly.data.datalist import first_image
from mri_anomaly.errors import MissingInputError, UserInputError

__all__ = ["RESERVED_COLUMNS", "ScoreTables", "attach_datalist", "datalist_lookup", "load_score_tables"]

RESERVED_COLUMNS = {
    "subject_id", "image", "section", "label", "site", "slice", "slice_label", "semi_target", "mask",
    "brain_mask", "error", "index", "n_voxels", "brain_fraction", "counted", "cropped_foreground_fraction",
}  # fmt: skip


@dataclass
class ScoreTables:
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


def load_score_tables(directory: str | os.PathLike, name: str | None = None) -> ScoreTables:
    """Read a score directory.

    Raises:
        FileNotFoundError: no ``scores.csv`` in ``directory``.
        ValueError: naming the file, when a table lacks ``subject_id`` or has no score column.
    """
    d = Path(directory)
    path = d / "scores.csv"
    if not path.is_file():
        raise MissingInputError(
            f"{path}: not found; --scores must be a directory written by `mri-anomaly score`"
        )
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
    return ScoreTables(name or d.name, d, volumes, slices, columns, maps, meta, slice_columns)


def datalist_lookup(datalist: str | os.PathLike | Mapping | None) -> dict[str, dict[str, Any]]:
    """``{subject_id or image path: item}`` over every section of the datalist (``section`` added)."""
    if datalist is None:
        return {}
    if isinstance(datalist, Mapping):
        sections = datalist
    else:
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
            if first_image(item):  # a multi-contrast item: its first contrast, as in scores.csv
                entry["image"] = first_image(item)
                lookup.setdefault(f"img:{os.path.abspath(str(entry['image']))}", entry)
    return lookup


def _item_for(row: Mapping[str, Any], lookup: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    img = row.get("image")
    if isinstance(img, str) and f"img:{os.path.abspath(img)}" in lookup:
        return lookup[f"img:{os.path.abspath(img)}"]
    return lookup.get(f"id:{row.get('subject_id')}")


def attach_datalist(ss: ScoreTables, lookup: Mapping[str, dict[str, Any]]) -> None:
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
