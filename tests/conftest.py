"""Shared pytest fixtures: seeding, the real-data folder, CUDA skipping, benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MRI_ANOMALY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """``load_benchmark("detection")``: ``benchmarks/detection.py`` as a module (the scripts are not a package),
    registered in ``sys.modules`` (its dataclasses need it)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(
            f"{name}_benchmark", REPO_ROOT / "benchmarks" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _seed_and_pin_precision():
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module: tiny tensors gain nothing from threads, and on a shared, busy
    CPU the thread hand-offs make them 10-30x slower. Use with ``pytest.mark.usefixtures("single_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test is skipped (with the reason) when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MRI cases not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture
def preprocessing_reads(monkeypatch) -> list:
    """The images read and preprocessed from now on: one entry per run of a ``VolumeDataset``'s guarded
    deterministic chain (its random part, after any cache, is not counted)."""
    from mri_anomaly.data import datasets

    reads: list = []
    original = datasets._Guarded.__call__

    def counting(self, data):
        if type(self) is datasets._Guarded:
            reads.append(data.get("image"))
        return original(self, data)

    monkeypatch.setattr(datasets._Guarded, "__call__", counting)
    return reads


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """A tiny demo cohort (issue 4), built once per session; returns its ``datalist.json``.

    8 mm voxels, 4 healthy (2 training, 1 validation, 1 test), 3 anomalous (ms, tumour, focal when
    ../shared/data is present; else tumour, focal, tumour), 3 general. Preprocess it with
    ``mri_anomaly.data.TINY_PREPROCESSING`` (8 mm, 24 x 24 x 24). Built in a few seconds.
    """
    import warnings

    from mri_anomaly.data import make_demo_cohort

    out = tmp_path_factory.mktemp("demo_cohort")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_demo_cohort(out, seed=0, healthy=4, anomalous=3, general=3, spacing=8.0)


@pytest.fixture(scope="session")
def demo_cohort_two_contrasts(tmp_path_factory) -> Path:
    """The tiny demo cohort of :func:`demo_cohort` in two contrasts, FLAIR and T1 (``"image": [flair, t1]`` per
    item; the FLAIR images are those of :func:`demo_cohort`); returns its ``datalist.json``."""
    import warnings

    from mri_anomaly.data import make_demo_cohort

    out = tmp_path_factory.mktemp("demo_cohort_two_contrasts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_demo_cohort(
            out, seed=0, healthy=4, anomalous=3, general=3, spacing=8.0, contrast=("flair", "t1")
        )
