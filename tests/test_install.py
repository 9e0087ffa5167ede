"""``pip install .`` (a wheel, not editable) gives a working ``mri-anomaly`` outside the checkout: the shipped
configs (found by name) and the MONAI bundle are package data.

The wheel is built from a copy of the sources without the compiled extension (``MRI_ANOMALY_NO_EXTENSION=1``,
the pure-PyTorch fallback) so the test takes seconds; the extension build itself is what ``make setup`` does.
It is installed into a fresh virtual environment that reuses this environment's packages (torch, MONAI, ...)
through a ``.pth`` line: nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in", "python", "configs", "csrc")


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``(bin folder of a fresh venv with the wheel installed, environment without PYTHONPATH)``."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(
                path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
            )
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MRI_ANOMALY_CONFIGS")}
    env["MRI_ANOMALY_NO_EXTENSION"] = "1"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        root,
        env,
    )
    wheel = next((root / "dist").glob("mri_anomaly-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    bin_dir = venv / "bin"
    site = Path(
        _run(
            [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            root,
            env,
        ).stdout.strip()
    )
    (site / "reuse_parent_environment.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )  # torch, MONAI, ...
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(bin_dir / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        root,
        env,
    )
    return bin_dir, env


@pytest.mark.slow
def test_the_installed_package_is_used_and_ships_its_configs_and_bundle(installed, tmp_path):
    bin_dir, env = installed
    code = (
        "import mri_anomaly, pathlib; from mri_anomaly.training.config import configs_dir; "
        "print(pathlib.Path(mri_anomaly.__file__).parent); print(configs_dir())"
    )
    package, configs = _run([str(bin_dir / "python"), "-c", code], tmp_path, env).stdout.split()
    assert Path(package).is_relative_to(bin_dir.parent) and not Path(package).is_relative_to(REPO)
    assert Path(configs) == Path(package) / "configs"
    shipped = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert (
        sorted(p.name for p in Path(configs).glob("*.yaml")) == shipped
    )  # every configs/*.yaml, automatically
    for name in ("inference.yaml", "metadata.json", "README.md"):
        assert (Path(configs) / "bundle" / name).read_bytes() == (
            REPO / "configs" / "bundle" / name
        ).read_bytes()
    info = _run([str(bin_dir / "mri-anomaly"), "info"], tmp_path, env).stdout
    assert f"configs         : {configs}" in info
    assert "glow3d" in next(line for line in info.splitlines() if line.startswith("shipped configs"))


@pytest.mark.slow
def test_the_installed_command_trains_two_steps_from_a_config_name(installed, demo_cohort, tmp_path):
    bin_dir, env = installed
    tiny = [
        "preprocessing.spacing=[8, 8, 8]",
        "preprocessing.spatial_size=[24, 24, 24]",
        "model.levels=2",
        "model.steps=1",
        "model.hidden_channels=8",
        "train.batch_size=2",
        "train.init_batches=1",
        "train.phases.train.steps=2",
        "train.log_every=1",
    ]
    result = _run(
        [
            str(bin_dir / "mri-anomaly"),
            "train",
            "--config",
            "glow3d",
            "--datalist",
            str(demo_cohort),
            "--out",
            "run",
            "--no-progress",
            *[a for t in tiny for a in ("--set", t)],
        ],
        tmp_path,
        env,
    )
    assert (tmp_path / "run" / "checkpoint.pt").is_file(), result.stdout
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ["global_step", "1", "2"]
