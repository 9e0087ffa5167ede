"""A smoke version of `mri-anomaly demo` (tiny cohort, 2 steps per phase): every stage runs, the report
compares all methods, thresholds land in the runs, and a second call skips the finished stages."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


@pytest.mark.slow
def test_demo_smoke_end_to_end_and_resume(tmp_path, capsys):
    from mri_anomaly.cli import main
    from mri_anomaly.pipeline import DEMO_RUNS, STATE_FILE

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--smoke", "--no-progress"]) == 0
    captured = capsys.readouterr()
    report = out / "report" / "report.html"
    assert f"Report: {report.resolve()}" in captured.out
    assert "[16/16] evaluate and compare" in captured.err  # progress: data + 7 x (train, score) + evaluate

    metrics = json.loads((out / "report" / "metrics.json").read_text())
    runs = {r.name for r in DEMO_RUNS}
    assert set(metrics["runs"]) == runs
    volume_runs = {key.split("/")[0] for key in metrics["volume"]}
    assert volume_runs == runs
    # the Glow runs carry likelihood-ratio, NLL and final-scale scores (2D: aggregated over slices)
    assert {"glow3d-ratio/llr", "glow3d-ratio/nll_bpd", "glow3d-ratio/final_scale"} <= set(metrics["volume"])
    assert {"glow2d-ratio/llr_mean", "glow2d-ratio/final_scale_top5_mean"} <= set(metrics["volume"])
    for key, entry in metrics["volume"].items():
        assert 0.0 <= entry["auroc"] <= 1.0, key
        assert "auroc_ci" in entry, key
    assert metrics["voxel"], "maps of the Glow and autoencoder runs are evaluated at voxel level"
    # the controls: every learned run against both baselines, per-stratum AUROCs, brain-fraction rho per run
    learned = {r.name for r in DEMO_RUNS} - {"intensity", "normative"}
    assert set(metrics["baselines"]) == learned
    assert all(set(e["vs"]) == {"intensity", "normative"} for e in metrics["baselines"].values())
    assert any(k.startswith("kind:") for e in metrics["strata"].values() for k in e)
    assert set(metrics["brain_fraction"]) == runs
    assert any(e.get("control") for e in metrics["slice"].values())
    for r in DEMO_RUNS:  # thresholds stored in every run
        stored = json.loads((out / "runs" / r.name / "thresholds.json").read_text())
        assert stored["section"] == "validation" and stored["thresholds"]

    parser = _Images()
    parser.feed(report.read_text())
    assert parser.src and all((report.parent / s).is_file() for s in parser.src)
    assert any("overlay_" in s for s in parser.src) and any("profiles_" in s for s in parser.src)

    state = json.loads((out / STATE_FILE).read_text())
    assert all(state[f"train:{r.name}"]["done"] for r in DEMO_RUNS)
    stamp = (out / "runs" / "glow3d-ratio" / "checkpoint.pt").stat().st_mtime_ns

    # resumable: a second call skips every finished stage and rewrites nothing
    assert main(["demo", "--out", str(out), "--smoke", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("already done, skipped") == 16
    assert (out / "runs" / "glow3d-ratio" / "checkpoint.pt").stat().st_mtime_ns == stamp
    # other settings in the same folder are refused, not mixed in
    assert main(["demo", "--out", str(out), "--no-progress", "--methods", "deep-svdd-2d"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_stage_cpu_time_counts_the_child_processes_that_ended():
    """The demo's stages record CPU seconds; the cohort's worker processes must count in them."""
    import subprocess
    import sys

    from mri_anomaly.pipeline import _cpu_time

    start = _cpu_time()
    child = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    subprocess.run([sys.executable, "-c", child], check=True)
    assert _cpu_time() - start >= 0.5


def test_runs_in_lanes_train_and_score_as_one_after_the_other(demo_cohort, tmp_path):
    """Two lanes (spawned processes) give the checkpoints, thresholds and score tables of one lane on the same
    number of threads, and record each stage's wall and CPU seconds."""
    import os

    import torch
    from mri_anomaly.pipeline import DEMO_RUNS, _demo_configs, _Stager, _State, _train_and_score
    from mri_anomaly.training.checkpoint import load_checkpoint

    runs = [r for r in DEMO_RUNS if r.name in ("glow2d-ratio", "deep-svdd-2d", "intensity")]
    configs = _demo_configs(runs, smoke=True)
    threads = max(1, (os.cpu_count() or 1) // 2)  # what each of two lanes runs on
    outs = {}
    for lanes in (1, 2):
        out = outs[lanes] = tmp_path / f"lanes{lanes}"
        out.mkdir()
        state = _State(out / "state.json")
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            stage = _Stager(state, 2 * len(runs), lambda _: None)
            dirs = _train_and_score(
                out, runs, configs, demo_cohort, state, stage, "cpu", False, lanes, lambda _: None
            )
        finally:
            torch.set_num_threads(previous)
        assert dirs == [out / "scores" / r.name for r in runs]
        for r in runs:
            for kind in ("train", "score"):
                entry = state.data[f"{kind}:{r.name}"]
                assert entry["done"] and entry["seconds"] > 0 and entry["cpu_seconds"] > 0, (
                    lanes,
                    kind,
                    r.name,
                )
    for r in runs:
        a = load_checkpoint(outs[1] / "runs" / r.name / "checkpoint.pt")
        b = load_checkpoint(outs[2] / "runs" / r.name / "checkpoint.pt")
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (r.name, key)
        for name in ("runs/{}/thresholds.json", "scores/{}/scores.csv", "scores/{}/slice_scores.csv"):
            path = name.format(r.name)
            assert (outs[1] / path).read_text() == (outs[2] / path).read_text(), path


def test_run_seed_takes_a_run_defined_outside_the_demo(demo_cohort, tmp_path):
    """``run_seed`` retrains a :class:`DemoRun` it is given (an ablation's variant) with the seed on the demo's
    cohort, its overrides kept; an unknown run name is still refused."""
    import shutil

    from mri_anomaly.errors import UserInputError
    from mri_anomaly.pipeline import STATE_FILE, DemoRun, run_seed
    from mri_anomaly.training.config import config_from_yaml

    demo = tmp_path / "demo"
    shutil.copytree(demo_cohort.parent, demo / "data")
    (demo / STATE_FILE).write_text(
        json.dumps({"settings": {"seed": 0, "smoke": True}, "data": {"done": True}})
    )
    variant = DemoRun("latent-norm-ae-2d-aug", "latent-norm-ae-2d.yaml", ("train.augment=true",))

    out = run_seed(demo, 3, runs=[variant], progress=False, log=lambda _: None, lanes=1)

    config = config_from_yaml((out / "runs" / variant.name / "config.yaml").read_text())
    assert config["seed"] == 3 and config["train"]["augment"] is True
    assert (out / "runs" / variant.name / "checkpoint.pt").is_file()
    assert (out / "scores" / variant.name / "scores.csv").is_file()
    with pytest.raises(UserInputError, match="unknown demo runs"):
        run_seed(demo, 3, runs=["no-such-run"], progress=False, log=lambda _: None, lanes=1)


class _Stop(Exception):
    """Raised where the demo would train: these tests stop after its cohort stage."""


@pytest.fixture
def cohort_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``make_demo_cohort`` call of ``run_demo`` (which makes nothing), whose
    training stage raises :class:`_Stop`."""
    import mri_anomaly.data
    from mri_anomaly import pipeline

    made: list[dict] = []

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(mri_anomaly.data, "make_demo_cohort", lambda out, **kwargs: made.append(kwargs))
    monkeypatch.setattr(pipeline, "_train_and_score", stop)
    return made


def test_run_demo_makes_its_cohort_on_the_grid_asked_and_refuses_another(tmp_path, cohort_calls):
    from mri_anomaly import pipeline
    from mri_anomaly.errors import UserInputError

    runs = pipeline.DEMO_RUNS[:1]

    def demo(spacing):
        pipeline.run_demo(tmp_path, runs=runs, spacing=spacing, progress=False, log=lambda _: None)

    with pytest.raises(_Stop):
        demo(2.0)
    assert cohort_calls[0]["spacing"] == 2.0
    state = json.loads((tmp_path / pipeline.STATE_FILE).read_text())
    assert state["data"]["spacing_mm"] == 2.0
    assert state["settings"] == {"seed": 0, "smoke": False, "runs": [runs[0].name], "spacing": 2.0}
    for other in (4.0, None):  # the 4 mm demo's cohort is not this one
        with pytest.raises(UserInputError, match="other settings"):
            demo(other)
    with pytest.raises(_Stop):  # the same grid resumes: the cohort is not made again
        demo(2.0)
    assert len(cohort_calls) == 1


def test_run_demo_default_grid_keeps_the_settings_of_demos_made_before(tmp_path, cohort_calls):
    from mri_anomaly import pipeline

    with pytest.raises(_Stop):
        pipeline.run_demo(tmp_path, runs=pipeline.DEMO_RUNS[:1], progress=False, log=lambda _: None)
    state = json.loads((tmp_path / pipeline.STATE_FILE).read_text())
    assert "spacing" not in cohort_calls[0] and "spacing_mm" not in state["data"]
    assert set(state["settings"]) == {"seed", "smoke", "runs"}
