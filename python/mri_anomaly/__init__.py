"""mri-anomaly: anomaly detection in MRI volumes, slice-wise and volume-wise.

Methods: 2D/3D Glow with hierarchical scores (Schirrmeister et al. 2020), Deep SAD / Deep SVDD
(Ruff et al.), and the latent-norm ("targeted collapse") autoencoder (Ghafourian et al.).
"""

from __future__ import annotations

from mri_anomaly._version import __version__

__all__ = ["__version__", "Detector", "load_exported", "print_config", "get_config"]


def __getattr__(name: str):
    """``Detector`` and ``load_exported`` are imported on first use (``import mri_anomaly`` stays light)."""
    if name == "Detector":
        from mri_anomaly.detector import Detector

        return Detector
    if name == "load_exported":
        from mri_anomaly.export import load_exported

        return load_exported
    raise AttributeError(f"module 'mri_anomaly' has no attribute {name!r}")


def get_config() -> dict[str, str]:
    """Versions of the package and its main dependencies, the ops backend and the devices."""
    import platform

    import torch

    from mri_anomaly.ops import backend_name

    info: dict[str, str] = {
        "mri_anomaly": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ops backend": backend_name(),
        "cuda available": str(torch.cuda.is_available()),
        "cuda devices": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none",
        "cpu threads": str(torch.get_num_threads()),
    }
    for name in ("monai", "nibabel", "nilearn", "numpy", "sklearn", "matplotlib"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = "not installed"
    return info


def print_config() -> None:
    """Print :func:`get_config` as aligned ``name: value`` lines (like ``monai.config.print_config``)."""
    info = get_config()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}} : {value}")
