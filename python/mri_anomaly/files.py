"""Writing output files so that a crash never leaves a half-written one, and one JSON rule for every table.

Every file the package writes (checkpoints, thresholds, metrics, score tables, exports, state files) goes
through :func:`atomic_write`: the bytes go to a temporary file in the same folder, are flushed and fsynced,
and the temporary file is renamed onto the target (``os.replace`` is atomic on POSIX), so a reader sees the
old file or the new one, never a mix.

JSON has no infinities and no NaN. :func:`jsonable` writes ``+inf``/``-inf`` as the strings ``"inf"`` and
``"-inf"`` (``float()`` reads them back: a threshold above every healthy score is ``inf``) and NaN as ``null``
(no value: an AUROC of a one-class set), and turns numpy scalars and paths into plain values.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_with", "atomic_write_text", "atomic_write_json", "jsonable"]


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars, paths and non-finite floats made JSON-safe (module docstring)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """Open ``<path>.tmp`` for writing; on success it is fsynced and renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched; a process killed mid-write leaves
    ``path`` intact and a ``<path>.tmp`` that the next write overwrites.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(
        path.name + ".tmp"
    )  # one writer per file (rank 0); a killed write's leftover is overwritten
    try:
        with open(tmp, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Atomic write by a writer that takes a file *name* (``torch.export.save``, nibabel): ``write(tmp)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")  # keeps the suffix, which these writers read
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``jsonable(data)`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2) + "\n")
