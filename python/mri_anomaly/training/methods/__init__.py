"""Method adapters: each module registers its methods with :func:`register_method` on import."""

from __future__ import annotations

from mri_anomaly.training.methods import baselines, deep_sad, glow, latent_norm  # noqa: F401  (they register)
from mri_anomaly.training.methods.base import _REGISTRY, AnomalyMethod, Batch, BatchScores, register_method

__all__ = [
    "AnomalyMethod",
    "Batch",
    "BatchScores",
    "available_methods",
    "get_method_class",
    "register_method",
]


def get_method_class(name: str) -> type[AnomalyMethod]:
    """The method class registered as ``name``; a clear error lists the known names."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)
