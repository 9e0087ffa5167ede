"""The mri-anomaly command: every subcommand's --help, info, clear errors, train -> score through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mri_anomaly import __version__
from mri_anomaly.cli import build_parser, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMANDS = {
    "train": ["--config", "--datalist", "--out", "--resume", "--device", "--max-steps", "--set"],
    "score": ["--run", "--datalist", "--section", "--out", "--device", "--no-maps"],
    "info": [],
    "demo-data": ["--out"],
    "datalist": [],
    "evaluate": ["--scores"],
    "demo": ["--out"],
}


def test_every_command_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: mri-anomaly {command}")
    for option in COMMANDS[command]:
        assert option in text, option
    # each option is explained, not just listed
    assert len(text.splitlines()) >= 4 + len(COMMANDS[command])


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    assert main([]) == 2  # no command: help, non-zero status


def test_info_prints_versions_backend_and_methods(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for key in ("mri_anomaly", "torch", "monai", "ops backend", "cuda available", "methods"):
        assert any(line.startswith(key) for line in text.splitlines()), key
    assert "glow-ratio" in text and "deep-sad" in text and "latent-norm-ae" in text


def _info_values(text: str) -> dict[str, str]:
    return {key.strip(): value for key, _, value in (line.partition(" : ") for line in text.splitlines())}


def test_info_prints_how_the_extension_was_built(capsys):
    from mri_anomaly import ops

    assert main(["info"]) == 0
    values = _info_values(capsys.readouterr().out)
    if not ops.extension_available("cpu"):
        assert values["extension"].startswith("absent ("), values["extension"]
        return
    from mri_anomaly import _C

    build = _C.build_info()
    assert values["extension"] == __version__
    assert values["ext. torch"].startswith(build["torch_version"])
    assert values["ext. compiler"] == build["compiler"]
    assert values["ext. cuda"] == (f"yes, archs {build['cuda_archs']}" if build["with_cuda"] else "no")
    assert values["ext. openmp"].startswith("yes, max threads " if build["with_openmp"] else "no")
    tile = f"{build['cpu_tile_min_voxels']}-{build['cpu_tile_max_voxels']} voxels"
    assert values["ext. cpu tile"] == f"{build['cpu_tile_values']} values ({tile})"


def test_info_says_when_the_extension_is_absent():
    code = (
        "import sys, warnings\n"
        "sys.modules['mri_anomaly._C'] = None  # makes `from mri_anomaly import _C` raise ImportError\n"
        "warnings.simplefilter('ignore')\n"
        "from mri_anomaly.cli import main\n"
        "raise SystemExit(main(['info']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    values = _info_values(out.stdout)
    assert values["ops backend"] == "pure-PyTorch reference"
    assert values["extension"].startswith("absent ("), values["extension"]
    assert not [key for key in values if key.startswith("ext. ")]


def test_bad_config_is_one_clear_message_without_traceback(tmp_path, demo_cohort, capsys):
    config = yaml.safe_load((CONFIGS / "glow3d.yaml").read_text())
    config["train"]["batch_sise"] = 2
    config["model"]["levels"] = "three"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    status = main(
        [
            "train",
            "--config",
            str(path),
            "--datalist",
            str(demo_cohort),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "score.specificity=2",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "mri-anomaly train: error: 3 problem(s) in " in err and str(path) in err
    assert "train.batch_sise: unknown key" in err
    assert "model.levels: expected int, got str 'three'" in err
    assert "score.specificity: must be in (0, 1), got 2" in err
    assert not (tmp_path / "run").exists()


def test_missing_run_and_datalist_are_clear_errors(tmp_path, capsys):
    assert (
        main(
            [
                "score",
                "--run",
                str(tmp_path / "nothing"),
                "--datalist",
                "x.json",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no checkpoint.pt" in capsys.readouterr().err
    status = main(
        [
            "train",
            "--config",
            str(CONFIGS / "glow3d.yaml"),
            "--datalist",
            str(tmp_path / "missing.json"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert status == 2
    assert "datalist file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_score_through_the_command(demo_cohort, tmp_path, capsys):
    """``python -m mri_anomaly train`` in a fresh process (what users and torchrun run), then ``score``;
    tiny sizes from the command line."""
    from mri_anomaly.data import load_datalist

    run, out = tmp_path / "run", tmp_path / "out"
    tiny = [
        "--set",
        "preprocessing.spacing=[8, 8, 8]",
        "--set",
        "preprocessing.spatial_size=[24, 24, 24]",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.init_batches=1",
        "--set",
        "model.channels=[4, 8]",
        "--set",
        "model.pooled_size=2",
        "--set",
        "train.phases.train.steps=5",
        "--set",
        "score.allow_few_calibration_scans=true",  # the tiny cohort has one validation scan
        "--no-progress",
    ]
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "mri_anomaly",
            "train",
            "--config",
            str(CONFIGS / "latent-norm-ae-3d.yaml"),
            "--datalist",
            str(demo_cohort),
            "--out",
            str(run),
            "--max-steps",
            "3",
            *tiny,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr
    assert "stopped at step 3 of 5" in train.stdout
    assert (run / "checkpoint.pt").is_file() and (run / "train_log.csv").is_file()
    assert (
        main(
            [
                "score",
                "--run",
                str(run),
                "--datalist",
                str(demo_cohort),
                "--section",
                "validation,test",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    lines = (out / "scores.csv").read_text().splitlines()
    assert (
        lines[0]
        == "subject_id,image,section,label,latent_norm,residual_q999,residual_top200mm3,flag:latent_norm,flag:residual_q999,"
        "flag:residual_top200mm3,map:residual,"
        "cropped_foreground_fraction"
    )
    data = load_datalist(demo_cohort)
    assert len(lines) == 1 + len(data["validation"]) + len(data["test"])


# ------------------------------------------------------------------------------------------ user errors vs bugs (issue 13)
def test_user_errors_share_one_type_that_is_still_a_value_error():
    from mri_anomaly.data import DatalistError, InputFileError
    from mri_anomaly.errors import MissingInputError, OutputExistsError, UserInputError
    from mri_anomaly.training import ConfigError

    for kind in (ConfigError, DatalistError, InputFileError, MissingInputError, OutputExistsError):
        assert issubclass(kind, UserInputError) and issubclass(kind, ValueError), kind
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(OutputExistsError, FileExistsError)


@pytest.mark.parametrize("bug", [ValueError("internal: shapes disagree"), KeyError("internal_key")])
def test_an_internal_value_or_key_error_keeps_its_traceback(bug, demo_cohort, tmp_path, monkeypatch, capsys):
    from mri_anomaly.training.trainer import Trainer

    def fit(self):
        raise bug

    monkeypatch.setattr(Trainer, "fit", fit)
    with pytest.raises(type(bug), match="internal"):
        main(
            [
                "train",
                "--config",
                str(CONFIGS / "glow3d.yaml"),
                "--datalist",
                str(demo_cohort),
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
            ]
        )
    assert "error:" not in capsys.readouterr().err  # not disguised as a one-line user error


def test_an_existing_run_and_a_missing_labels_csv_are_one_line_user_errors(demo_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    status = main(
        ["train", "--config", str(CONFIGS / "glow3d.yaml"), "--datalist", str(demo_cohort), "--out", str(run)]
    )
    assert status == 2
    assert "already holds a training run" in capsys.readouterr().err
    folder = Path(demo_cohort).parent
    status = main(
        [
            "datalist",
            "--folder",
            str(folder),
            "--labels",
            str(tmp_path / "none.csv"),
            "--out",
            str(tmp_path / "d.json"),
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'none.csv'}: labels CSV not found" in err and "Traceback" not in err
