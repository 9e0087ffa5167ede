"""Builds the extension ``mri_anomaly._C`` (fused actnorm + invertible 1x1(x1) conv ops).

CPU (C++) always; CUDA when a CUDA build of torch and ``nvcc`` are present (or ``FORCE_CUDA=1``).
``MRI_ANOMALY_NO_EXTENSION=1`` skips the build: the package then runs on its pure-PyTorch
reference of the same ops and says so in ``mri_anomaly.print_config()``.
Build with ``pip install --no-build-isolation -e .`` so it compiles against the installed torch.

The repository's ``configs/`` (every ``*.yaml`` and the MONAI bundle in ``configs/bundle/``) is the single
source of the shipped configs; ``build_py`` copies it into the package as ``mri_anomaly/configs/``, so an
installed (non-editable) package finds them by name (``--config glow3d``) outside the checkout.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")


def _package_version() -> str | None:
    """``__version__`` of ``python/mri_anomaly/_version.py`` (the extension's ``build_info()`` reports it)."""
    with open(os.path.join(HERE, "python", "mri_anomaly", "_version.py")) as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    return match.group(1) if match else None


def _string_macro(name: str, value: str) -> tuple[str, str]:
    """``-D<name>="<value>"``: a C string literal (torch's ninja build shell-quotes each flag)."""
    return name, json.dumps(value)


class BuildPyWithConfigs(build_py):
    """``build_py`` plus ``configs/`` -> ``<build_lib>/mri_anomaly/configs/`` (package data of wheels)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode or not os.path.isdir(CONFIGS):  # an editable install reads the checkout's configs/
            return
        target = os.path.join(self.build_lib, "mri_anomaly", "configs")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CONFIGS, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


def _extensions():
    if os.environ.get("MRI_ANOMALY_NO_EXTENSION", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "kernels", "*.cpp")))
    cpp_sources += sorted(glob.glob(os.path.join("csrc", "torch", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "kernels", "*.cu")))
    cuda_sources += sorted(glob.glob(os.path.join("csrc", "torch", "*.cu")))
    if not cpp_sources:
        return [], {}

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    torch_has_cuda = torch.version.cuda is not None
    with_cuda = bool(cuda_sources) and torch_has_cuda and CUDA_HOME is not None and (
        force_cuda or torch.cuda.is_available()
    )
    if force_cuda and not (torch_has_cuda and CUDA_HOME is not None):
        # A CPU-only torch has no c10_cuda/torch_cuda to link against: fail loudly, not at import.
        raise RuntimeError("FORCE_CUDA=1 needs a CUDA build of torch and CUDA_HOME/nvcc")

    include_dirs = [os.path.join(here, "csrc")]
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    define_macros = []
    version = _package_version()
    if version is not None:
        define_macros.append(_string_macro("MRI_ANOMALY_VERSION", version))
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        define_macros.append(("WITH_CUDA", None))
        define_macros.append(_string_macro("MRI_ANOMALY_CUDA_ARCHS", os.environ["TORCH_CUDA_ARCH_LIST"]))
        ext = CUDAExtension(
            "mri_anomaly._C",
            cpp_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "mri_anomaly._C",
            cpp_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass={**cmdclass, "build_py": BuildPyWithConfigs})
