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


def _extension_config() -> dict[str, str]:
    """How the extension ``mri_anomaly._C`` was built (its ``build_info()``), or that it is absent."""
    try:
        from mri_anomaly import _C
    except ImportError as error:  # not built (MRI_ANOMALY_NO_EXTENSION=1) or built against another torch
        return {"extension": f"absent ({error})"}
    if not hasattr(_C, "build_info"):
        return {"extension": "built by an older version without build_info(): rebuild it"}
    build = _C.build_info()
    version = build["version"] or "?"
    if version != __version__:
        version += f" (the package is {__version__}: rebuild the extension)"
    return {
        "extension": version,
        "ext. torch": f"{build['torch_version']} (compiled against)",
        "ext. compiler": build["compiler"],
        "ext. cuda": f"yes, archs {build['cuda_archs'] or '?'}" if build["with_cuda"] else "no",
        "ext. openmp": f"yes, max threads {build['omp_max_threads']}" if build["with_openmp"] else "no",
        "ext. cpu tile": f"{build['cpu_tile_values']} values "
        f"({build['cpu_tile_min_voxels']}-{build['cpu_tile_max_voxels']} voxels)",
    }


def get_config() -> dict[str, str]:
    """Versions of the package and its main dependencies, the ops backend, how the compiled extension was
    built (or that it is absent) and the devices."""
    import platform

    import torch

    from mri_anomaly.ops import backend_name

    info: dict[str, str] = {
        "mri_anomaly": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ops backend": backend_name(),
        **_extension_config(),
        "cuda available": str(torch.cuda.is_available()),
        "cuda devices": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        or "none",
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
