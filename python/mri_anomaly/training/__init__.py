"""Training engine: configs, the :class:`Trainer`, checkpoints and ``torchrun`` support.

Python API (the ``mri-anomaly train`` command mirrors it)::

    from mri_anomaly.training import Trainer, load_config

    config = load_config("configs/glow3d.yaml", overrides=["train.phases.train.steps=20"])
    result = Trainer(config, "demo/datalist.json", "runs/glow3d").fit()
"""

from mri_anomaly.training.checkpoint import load_checkpoint, save_checkpoint
from mri_anomaly.training.config import ConfigError, apply_overrides, load_config, validate_config
from mri_anomaly.training.trainer import Trainer, TrainResult, build_method

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
