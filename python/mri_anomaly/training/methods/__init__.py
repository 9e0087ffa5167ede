"""Method adapters: each module registers its methods with :func:`register_method` on import."""

from mri_anomaly.training.methods.base import (
    AnomalyMethod,
    Batch,
    ScoreOutput,
    available_methods,
    get_method_class,
    register_method,
)

# Importing the method modules registers them; a module that is not there yet is simply absent.
import importlib as _importlib

for _module in ("glow", "deep_sad", "latent_norm", "baselines"):
    try:
        _importlib.import_module(f"mri_anomaly.training.methods.{_module}")
    except ModuleNotFoundError as _err:  # only tolerate the module itself missing, not its imports
        if _err.name != f"mri_anomaly.training.methods.{_module}":
            raise

__all__ = ["AnomalyMethod", "Batch", "ScoreOutput", "available_methods", "get_method_class", "register_method"]
