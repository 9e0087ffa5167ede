"""Training engine: configs, the :class:`Trainer`, checkpoints and ``torchrun`` support.

Python API (the ``mri-anomaly train`` command mirrors it)::

    from mri_anomaly.training import Trainer, load_config

    config = load_config("configs/glow3d.yaml", overrides=["train.phases.train.steps=20"])
    result = Trainer(config, "demo/datalist.json", "runs/glow3d").fit()
"""

from __future__ import annotations

from typing import Any

from mri_anomaly.training.checkpoint import load_checkpoint, save_checkpoint
from mri_anomaly.training.config import ConfigError, apply_overrides, load_config, validate_config

__all__ = [
    "ConfigError",
    "Trainer",
    "TrainResult",
    "apply_overrides",
    "build_method",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "validate_config",
]


def __getattr__(name: str) -> Any:
    """The trainer is imported on first use: it depends on scoring and evaluation (calibration at the end of
    training), which depend on this package's methods, checkpoints and configs."""
    if name in ("Trainer", "TrainResult"):
        from mri_anomaly.training import trainer

        return getattr(trainer, name)
    if name == "build_method":
        from mri_anomaly.runs import build_method

        return build_method
    raise AttributeError(f"module 'mri_anomaly.training' has no attribute {name!r}")
