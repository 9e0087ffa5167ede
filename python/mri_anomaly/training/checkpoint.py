"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, containers, strings and numbers::

    format: 1
    method: "glow"                       # registered method name
    config: "<resolved YAML text>"
    state_dict: {...}                    # method.state_dict(): weights and data-init buffers (actnorm, centre)
    optimizer: {...} | None              # the current phase's optimiser state
    progress: {phase_index, phase_step, global_step, completed, skipped_steps, phases_begun: [...]}
    rng: {torch: ByteTensor, cuda: [ByteTensor], numpy: {...}, python: [...]}
    thresholds: {score column: float}    # at ``specificity`` on the healthy ``validation`` section
    threshold_info: {specificity: float, n_validation: int, section: "validation"}
    versions: {mri_anomaly: ..., torch: ..., monai: ...}

Writing goes through :func:`mri_anomaly.files.atomic_write` (a temporary file, fsynced, renamed onto ``<path>``), so a
process killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_anomaly.errors import MissingInputError, UserInputError
from mri_anomaly.files import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "versions",
]

CHECKPOINT_FORMAT = 1


def versions() -> dict[str, str]:
    """Package and main dependency versions, recorded in every checkpoint."""
    from mri_anomaly._version import __version__

    info = {"mri_anomaly": __version__, "torch": str(torch.__version__)}
    try:
        import monai

        info["monai"] = str(monai.__version__)
    except ImportError:  # pragma: no cover
        pass
    return info


def capture_rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from, as tensors and plain lists (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, ``os.replace``).

    Returns:
        the path written.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "versions": versions(), **checkpoint}
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not a readable checkpoint of this package (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, not a torch file, or unsafe content
        raise UserInputError(
            f"{path}: not a readable mri-anomaly checkpoint ({type(err).__name__}: {err})"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or checkpoint.get("format") != CHECKPOINT_FORMAT
        or "state_dict" not in checkpoint
    ):
        raise UserInputError(
            f"{path}: not an mri-anomaly checkpoint (format {CHECKPOINT_FORMAT} with a state_dict expected)"
        )
    return checkpoint
