"""The tables of a score folder, written so that an interrupted run loses nothing.

``scores.csv`` gets one row per volume and ``slice_scores.csv`` one row per axial slice, appended and fsynced
as each volume is done (:class:`AppendTable`); a crash can only leave a half-written last line, which
:func:`read_rows` drops. Under ``torchrun`` each rank appends to its own shard folder and
:func:`merge_tables` merges the shards into the folder's tables in datalist order. Layout: the module
docstring of :mod:`mri_anomaly.scoring.runner`.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mri_anomaly.data.datalist import first_image
from mri_anomaly.files import atomic_write

__all__ = [
    "ERRORS_FILE",
    "ERROR_COLUMNS",
    "META_FILE",
    "SCORES_FILE",
    "SHARDS_DIR",
    "SLICE_SCORES_FILE",
    "AppendTable",
    "csv_value",
    "merge_tables",
    "read_rows",
    "row_key",
    "write_rows_atomic",
]

SCORES_FILE = "scores.csv"
SLICE_SCORES_FILE = "slice_scores.csv"
ERRORS_FILE = "errors.csv"
META_FILE = "score_meta.json"
SHARDS_DIR = "shards"
ERROR_COLUMNS = ("subject_id", "image", "section", "error")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
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


def write_rows_atomic(path: Path, header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Replace the CSV at ``path`` with ``header`` and ``rows`` atomically (extra keys ignored, missing ones empty)."""
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)


class AppendTable:
    """A CSV appended one row (or one volume's rows) at a time, flushed and fsynced after each write."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self.path = path
        self.header = list(header)
        existing, rows = read_rows(path)
        if existing and existing != self.header:
            # same rows, new header (for example a resumed run that adds a column): rewrite atomically
            write_rows_atomic(path, self.header, rows)
        elif not existing:
            write_rows_atomic(path, self.header, [])

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.header, extrasaction="ignore", restval="")
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())


def csv_value(value: Any) -> Any:
    """Floats as ``repr`` (round-trips exactly); anything else unchanged."""
    if isinstance(value, float):
        return repr(value)
    return value


def row_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """A score row's identity: ``(section, image)``."""
    return str(row.get("section", "")), str(row.get("image", ""))


def merge_tables(
    out: Path,
    shard_dirs: Sequence[Path],
    sections: Sequence[str],
    data: Mapping[str, list],
    score_header: Sequence[str],
    slice_header: Sequence[str],
    retry: set[tuple[str, str]],
) -> None:
    """Merge shard tables into ``out``'s, in datalist order (sections as in the datalist, then items);
    drop half-finished volumes; remove the shards.

    Slice rows without a matching ``scores.csv`` row (a volume interrupted mid-way) are dropped, as are
    error rows of volumes that were scored since or are about to be retried.
    """
    order: dict[tuple[str, str], tuple[int, int]] = {}
    for si, s in enumerate(list(data) + [k for k in sections if k not in data]):  # datalist section order
        for i, it in enumerate(data.get(s, [])):
            order.setdefault((s, str(first_image(it) or "")), (si, i))
    far = (10**9, 10**9)

    def gather(name: str) -> tuple[list[str], list[dict[str, str]]]:
        header, rows = read_rows(out / name)
        for d in shard_dirs:
            h, r = read_rows(d / name)
            header = header or h
            rows += r
        return header, rows

    _, score_rows = gather(SCORES_FILE)
    unique: dict[tuple[str, str], dict[str, str]] = {}
    for r in score_rows:
        unique.setdefault(row_key(r), r)
    finished = set(unique)
    score_rows = sorted(unique.values(), key=lambda r: order.get(row_key(r), far))
    _, slice_rows = gather(SLICE_SCORES_FILE)
    subject_key = {(r.get("section", ""), r.get("subject_id", "")): row_key(r) for r in unique.values()}
    kept_slices: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in slice_rows:
        k = subject_key.get((r.get("section", ""), r.get("subject_id", "")))
        if k is not None:
            kept_slices.setdefault(k, [])
            kept_slices[k].append(r)
    ordered_slices = []
    for k in sorted(kept_slices, key=lambda k: order.get(k, far)):
        by_slice = {
            int(r.get("slice") or 0): r for r in kept_slices[k]
        }  # a retried volume's rows: the last set wins
        ordered_slices += [by_slice[i] for i in sorted(by_slice)]
    _, error_rows = gather(ERRORS_FILE)
    error_rows = [r for r in error_rows if row_key(r) not in finished and row_key(r) not in retry]
    error_rows = sorted(
        {row_key(r): r for r in error_rows}.values(), key=lambda r: order.get(row_key(r), far)
    )

    write_rows_atomic(out / SCORES_FILE, score_header, score_rows)
    write_rows_atomic(out / SLICE_SCORES_FILE, slice_header, ordered_slices)
    write_rows_atomic(out / ERRORS_FILE, ERROR_COLUMNS, error_rows)
    for d in shard_dirs:
        shutil.rmtree(d, ignore_errors=True)
    shards = out / SHARDS_DIR
    if shards.is_dir() and not any(shards.iterdir()):
        shards.rmdir()
