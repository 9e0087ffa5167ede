"""A training run folder: its file names, the method it trained and what was calibrated on it.

``RUN/`` holds ``checkpoint.pt`` (weights, config, progress, RNG state), ``config.yaml`` (the resolved config, a
record: the checkpoint's config is the one used, and :func:`load_run` warns when the file was edited),
``train_log.csv`` and ``thresholds.json`` (thresholds and slice norms, :mod:`mri_anomaly.evaluation.thresholds`).
Training writes a run (:mod:`mri_anomaly.training.trainer`); scoring, export and the bundle read one through
this module, so none of them depends on the trainer.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from mri_anomaly.errors import MissingInputError, UserInputError
from mri_anomaly.evaluation.thresholds import load_thresholds
from mri_anomaly.scoring.maps import model_spacing
from mri_anomaly.scoring.slice_norms import check_map_profile
from mri_anomaly.training.checkpoint import load_checkpoint
from mri_anomaly.training.config import ConfigError, config_differences, config_from_yaml, slice_context
from mri_anomaly.training.methods import AnomalyMethod, get_method_class

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "LOG_NAME",
    "build_method",
    "load_run",
    "run_fingerprint",
    "run_slice_norms",
    "run_thresholds",
]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
CONFIG_NAME = "config.yaml"


def build_method(config: Mapping[str, Any]) -> AnomalyMethod:
    """The method of a validated config, freshly constructed (weights from the current torch RNG).

    Raises:
        ConfigError: the method's constructor refused a ``model:`` value (its argument checks, e.g. ``steps: 0``).
    """
    cls = get_method_class(config["method"])
    try:
        return cls.from_config(
            config["spatial_dims"],
            config["in_channels"],
            dict(config.get("model") or {}),
            model_spacing=model_spacing(config),
            slice_context=slice_context(config),
        )
    except ValueError as err:
        if isinstance(err, UserInputError):
            raise
        raise ConfigError([f"model: method {config['method']!r} refused its arguments: {err}"]) from err


def load_run(run_dir: str | os.PathLike, device: torch.device | str = "cpu"):
    """The trained method (eval mode, on ``device``), its config and checkpoint from a run directory.

    Returns:
        ``(method, config, checkpoint)``.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``checkpoint.pt``.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise MissingInputError(
            f"{run_dir}: no {CHECKPOINT_NAME} (train a model there first with `mri-anomaly train`)"
        )
    checkpoint = load_checkpoint(path, map_location="cpu")
    config = config_from_yaml(checkpoint["config"])
    progress = checkpoint.get("progress") or {}
    phases = get_method_class(config["method"]).phases
    if progress.get("begun_phase_index", len(phases) - 1) < len(phases) - 1:
        raise UserInputError(
            f"{path}: training stopped before its last phase ({phases[-1]!r}) began, so the model cannot score yet; "
            f"continue it with `mri-anomaly train ... --out {run_dir} --resume`"
        )
    _warn_if_config_edited(Path(run_dir), config)
    method = build_method(config)
    method.load_state_dict(checkpoint["state_dict"])
    method.to(device).eval()
    return method, config, checkpoint


def _warn_if_config_edited(run_dir: Path, config: Mapping[str, Any]) -> None:
    """``RUN/config.yaml`` is a record of the trained config; the model is the checkpoint's. Editing the file
    changes nothing, so say so instead of scoring silently with the old settings."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return
    try:
        edited = config_from_yaml(path.read_text())
    except (ConfigError, yaml.YAMLError) as err:
        warnings.warn(
            f"{path}: cannot be read ({err}); the config stored in {CHECKPOINT_NAME} is used", stacklevel=3
        )
        return
    keys = [".".join(path) for path, _, _ in config_differences(config, edited)]
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        warnings.warn(
            f"{path} differs from the config stored in {CHECKPOINT_NAME} ({shown}): the model was trained with "
            f"the checkpoint's, which is used; to change a setting, train a new run with it",
            stacklevel=3,
        )


def run_fingerprint(checkpoint: Mapping[str, Any]) -> str:
    """Identifies the model that scored: its config and how far it was trained (a resumed run scores anew)."""
    progress = checkpoint.get("progress") or {}
    text = f"{checkpoint.get('config', '')}|{progress.get('global_step')}|{progress.get('completed')}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def run_thresholds(run_dir: Path, checkpoint: Mapping[str, Any]) -> dict[str, float]:
    """``RUN/thresholds.json`` when present (it may have been recalibrated), else the checkpoint's."""
    stored = load_thresholds(run_dir)
    if stored is not None:
        return dict(stored["thresholds"])
    return {k: float(v) for k, v in (checkpoint.get("thresholds") or {}).items()}


def run_slice_norms(run_dir: Path, checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's per-position slice norms: ``RUN/thresholds.json``'s ``slice_norms``, else the checkpoint's."""
    stored = load_thresholds(run_dir)
    if stored is not None and stored.get("slice_norms"):
        norms = dict(stored["slice_norms"])
    else:
        norms = (checkpoint.get("threshold_info") or {}).get("slice_norms") or None
    if norms:
        from mri_anomaly.scoring.volume import slice_score_columns_of

        config = config_from_yaml(checkpoint["config"]) if checkpoint.get("config") else None
        columns = slice_score_columns_of(get_method_class(config["method"]), config) if config else []
        check_map_profile(norms, str(run_dir), columns)
    return norms
