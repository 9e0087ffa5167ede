"""``mri-anomaly demo``: the whole pipeline on the synthetic demo cohort, resumable, ending in one report.

Stages (each one is the same Python call the corresponding CLI command makes)::

    data       make_demo_cohort(DIR/data)                            = mri-anomaly demo-data --out DIR/data
    train:<r>  Trainer(load_config(configs/<r>.yaml), D, DIR/runs/<r>, resume=True).fit()
                                                                     = mri-anomaly train --config ... --out DIR/runs/<r>
    score:<r>  score_datalist(DIR/runs/<r>, D, DIR/scores/<r>, ("validation", "test"))
                                                                     = mri-anomaly score --section validation,test ...
    evaluate   evaluate([DIR/scores/*], D, DIR/report, runs=[DIR/runs/*])
                                                                     = mri-anomaly evaluate --scores ... --run ...

Finished stages are recorded in ``DIR/demo_state.json`` (with their wall-clock seconds) and skipped when the
demo is run again; an interrupted training resumes from its checkpoint and an interrupted scoring from its
tables. The runs (:data:`DEMO_RUNS`): 2D and 3D Glow likelihood ratio (which also report the NLL and the
final-scale score), Deep SVDD (no labels), Deep SAD (a few labelled anomalies) and the latent-norm
autoencoder, at demo size, beside the two baselines every learned method must beat (``intensity``: the
image itself; ``normative``: a voxel-wise z-score against the healthy training volumes). ``smoke=True`` shrinks everything (cohort, steps, bootstrap) for the test suite.

:func:`run_seed` trains and scores some runs again with another config ``seed`` on the same cohort
(``DIR/seeds/<seed>/runs/<r>``, ``DIR/seeds/<seed>/scores/<r>``; state in ``DIR/seeds/<seed>/seed_state.json``),
for the seed spread of ``benchmarks/detection.py --seeds``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mri_anomaly.errors import MissingInputError, UserInputError
from mri_anomaly.files import atomic_write_json
from mri_anomaly.training.config import configs_dir

__all__ = ["DEMO_RUNS", "SEED_RUNS", "DemoRun", "configs_dir", "default_lanes", "run_demo", "run_seed"]


@dataclass(frozen=True)
class DemoRun:
    """One method of the demo: a name (its folder), a config file in ``configs/`` and config overrides."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    description: str = ""
    # seconds of training + scoring in a demo on 2 CPU cores (docs/benchmarks/demo_time.md): lanes start the
    # costliest runs first
    cost: float = 1.0


# 2D likelihood ratio: the 2D Glow config turned into the glow-ratio method (general phase, then the
# in-distribution phase with the outlier loss), with the 3D ratio config's outlier weight/temperature and
# the 2D config's 200 steps split between the two phases.
_GLOW2D_RATIO = (
    "method=glow-ratio",
    "model.outlier_weight=2.8",
    "model.outlier_temperature=0.33",
    "train.phases={general: {steps: 100, lr: 1.0e-3, weight_decay: 0.0}, in: {steps: 100, lr: 5.0e-4, weight_decay: 0.0}}",
)

DEMO_RUNS: tuple[DemoRun, ...] = (
    DemoRun("glow2d-ratio", "glow2d-slices.yaml", _GLOW2D_RATIO,
            "2D Glow on slices: likelihood ratio, NLL and final-scale scores", 325.0),
    DemoRun("glow3d-ratio", "glow3d-ratio.yaml", (), "3D Glow on volumes: likelihood ratio, NLL and final-scale scores",
            370.0),
    DemoRun("deep-svdd-2d", "deep-svdd-2d.yaml", (), "Deep SVDD on slices (no labels)", 148.0),
    DemoRun("deep-sad-2d", "deep-sad-2d.yaml", (), "Deep SAD on slices (labelled synthetic anomalies)", 162.0),
    DemoRun("latent-norm-ae-2d", "latent-norm-ae-2d.yaml", (), "latent-norm autoencoder on slices", 113.0),
    DemoRun("intensity", "intensity.yaml", (), "baseline: the image itself as the anomaly map", 32.0),
    DemoRun("normative", "normative.yaml", (), "baseline: voxel-wise normative model (robust z-score)", 14.0),
)  # fmt: skip

SEED_RUNS: tuple[str, ...] = (
    "glow2d-ratio",
    "glow3d-ratio",
    "deep-svdd-2d",
    "deep-sad-2d",
    "latent-norm-ae-2d",
)
"""The runs :func:`run_seed` retrains by default: every learned run of the demo (one training seed's number is one
draw: the autoencoder's best column spans 0.65-0.91 over seeds 0-2)."""

# Smoke sizes: a cohort of a few scans and a couple of optimiser steps per phase.
SMOKE_COHORT: dict[str, Any] = {"healthy": 5, "anomalous": 2, "general": 3}
SMOKE_STEPS = 2
SMOKE_BOOTSTRAP = 20
STATE_FILE = "demo_state.json"


class _State:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, stage: str) -> bool:
        return bool(self.data.get(stage, {}).get("done"))

    def mark(
        self,
        stage: str,
        seconds: float,
        cpu_start: float | None = None,
        cpu_seconds: float | None = None,
        **extra: Any,
    ) -> None:
        entry: dict[str, Any] = {"done": True, "seconds": round(seconds, 2)}
        if cpu_start is not None:  # CPU time of the demo's processes: robust to others sharing the cores
            entry["cpu_seconds"] = round(_cpu_time() - cpu_start, 2)
        if cpu_seconds is not None:  # measured by the lane process that ran the stage
            entry["cpu_seconds"] = round(cpu_seconds, 2)
        self.data[stage] = {**entry, **extra}
        atomic_write_json(self.path, self.data)


def _cpu_time() -> float:
    """CPU seconds of this process and of its child processes that have ended (the cohort's workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _smoke_overrides(config: dict[str, Any]) -> list[str]:
    out = [
        f"train.phases.{phase}.steps={SMOKE_STEPS}"
        for phase, p in config["train"]["phases"].items()
        if p["steps"] > 0
    ]
    out += ["train.init_batches=1", "train.batch_size=2", "train.log_every=1", "train.checkpoint_every=1000"]
    out += ["score.allow_few_calibration_scans=true"]  # the smoke cohort has a handful of validation scans
    model = config.get("model") or {}
    if "hidden_channels" in model:  # Glow: one narrow step per scale
        out += ["model.hidden_channels=8", "model.steps=1"]
    return out


def _demo_configs(
    runs: Sequence[DemoRun], smoke: bool, extra: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """The resolved config of each run: its file in ``configs/``, its overrides, ``extra``, the smoke sizes."""
    from mri_anomaly.training import load_config

    configs = {}
    for r in runs:
        path = configs_dir() / r.config
        if not path.is_file():
            raise MissingInputError(f"{path}: demo config of {r.name!r} not found")
        overrides = list(r.overrides) + list(extra)
        config = load_config(path, overrides)
        if smoke:
            config = load_config(path, overrides + _smoke_overrides(config))
        configs[r.name] = config
    return configs


class _Stager:
    """Numbers the demo's stages in order. ``stage(name, what)``: logs ``[i/n] what ...`` and says whether the
    stage still has to run; ``stage.label(name, what)``: the same number, ``"[i/n] what"`` for a stage still to
    run (logged by whoever starts it) or ``None`` for a finished one (logged as skipped here)."""

    def __init__(self, state: _State, n_stages: int, log: Callable[[str], None]) -> None:
        self.state, self.n_stages, self.log, self.number = state, n_stages, log, 0

    def label(self, name: str, what: str) -> str | None:
        self.number += 1
        if self.state.done(name):
            self.log(f"[{self.number}/{self.n_stages}] {what}: already done, skipped")
            return None
        return f"[{self.number}/{self.n_stages}] {what}"

    def __call__(self, name: str, what: str) -> bool:
        label = self.label(name, what)
        if label is not None:
            self.log(f"{label} ...")
        return label is not None


def _train_and_score(
    out: Path,
    runs: Sequence[DemoRun],
    configs: dict[str, dict[str, Any]],
    datalist: Path,
    state: _State,
    stage: _Stager,
    device: str,
    progress: bool,
    lanes: int = 1,
    log: Callable[[str], None] = _say,
) -> list[Path]:
    """The train and score stages of ``runs`` into ``out/runs/<name>`` and ``out/scores/<name>``, a run's scoring
    right after its training; returns the score folders. The runs train, calibrate and score on the same scans,
    most of them preprocessed alike: each scan is preprocessed once per preprocessing config (one
    :class:`~mri_anomaly.data.PreprocessedCache`). ``lanes`` > 1 (CPU only): that many processes, each on its
    share of the cores, take the runs costliest first (:func:`_run_in_lanes`)."""
    from mri_anomaly.data import PreprocessedCache

    jobs = []
    for r in runs:
        train = stage.label(f"train:{r.name}", f"train {r.name} ({r.description or r.config})")
        score = stage.label(f"score:{r.name}", f"score {r.name} (validation and test sections)")
        if train or score:
            jobs.append({"name": r.name, "out": str(out), "config": configs[r.name], "datalist": str(datalist),
                         "train": train, "score": score, "cost": r.cost, "say": log is _say})  # fmt: skip
    if lanes > 1 and device == "cpu":
        _run_in_lanes(jobs, state, lanes, log)
    else:
        preprocessed = PreprocessedCache()
        for job in jobs:
            _run_stages(
                job,
                preprocessed,
                device,
                progress,
                lambda kind, entry: _mark(state, job["name"], kind, entry),
                log,
            )
    return [out / "scores" / r.name for r in runs]


def _mark(state: _State, name: str, kind: str, entry: dict[str, Any]) -> None:
    """Record a finished ``kind`` (``train``/``score``) stage of run ``name`` from :func:`_run_stages`' entry."""
    extra = {"steps": entry["steps"]} if "steps" in entry else {}
    state.mark(f"{kind}:{name}", entry["seconds"], cpu_seconds=entry["cpu_seconds"], **extra)


def _run_stages(
    job: dict[str, Any],
    cache,
    device: str,
    progress: bool,
    on_done: Callable[[str, dict[str, Any]], None],
    say: Callable[[str], None] = lambda _: None,
) -> None:
    """Train (resumable) and/or score one run of ``job`` (its ``train``/``score``: the stage's label, or ``None``
    when done); ``say(label ...)`` as each stage starts, ``on_done(kind, {"seconds", "cpu_seconds"[, "steps"]})``
    as it ends.

    Raises:
        RuntimeError: the training stopped before its last step.
    """
    from mri_anomaly.scoring.runner import score_datalist
    from mri_anomaly.training import Trainer

    name, out = job["name"], Path(job["out"])
    run_dir, score_dir = out / "runs" / name, out / "scores" / name
    if job["train"]:
        say(f"{job['train']} ...")
        t, c = time.time(), _cpu_time()
        result = Trainer(job["config"], job["datalist"], run_dir, device=device, resume=True, progress=progress,
                         preprocessed_cache=cache).fit()  # fmt: skip
        if not result.completed:
            raise RuntimeError(
                f"training of {name} stopped before the end ({run_dir}); rerun the demo to resume"
            )
        on_done(
            "train", {"seconds": time.time() - t, "cpu_seconds": _cpu_time() - c, "steps": result.global_step}
        )
    if job["score"]:
        say(f"{job['score']} ...")
        t, c = time.time(), _cpu_time()
        score_datalist(run_dir, job["datalist"], score_dir, sections=("validation", "test"), device=device,
                       progress=progress, preprocessed_cache=cache)  # fmt: skip
        on_done("score", {"seconds": time.time() - t, "cpu_seconds": _cpu_time() - c})


def default_lanes(device: str = "cpu") -> int:
    """The demo's lanes: 2 on a CPU with at least 2 cores, else 1. On 2 cores a run on one thread did a step in
    1.4-1.6x the time it took on two (conv layers this small keep two threads half idle), so two runs side by
    side on one core each finish sooner than one after the other on both (docs/benchmarks/demo_time.md)."""
    return 2 if device == "cpu" and (os.cpu_count() or 1) >= 2 else 1


_lane_cache = None  # a lane process's PreprocessedCache, shared by the runs it takes
_lane_number = 0  # 1, 2, ... in the lane processes


def _lane_start(threads: int, counter) -> None:
    import torch

    global _lane_number
    with counter.get_lock():
        counter.value += 1
        _lane_number = counter.value
    torch.set_num_threads(threads)


def _lane_job(job: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """:func:`_run_stages` in a lane process; returns the run's name and its finished stages."""
    from mri_anomaly.data import PreprocessedCache

    global _lane_cache
    if _lane_cache is None:
        _lane_cache = PreprocessedCache()
    done: list[tuple[str, dict[str, Any]]] = []
    say = (lambda msg: _say(f"{msg} (lane {_lane_number})")) if job["say"] else (lambda _: None)
    _run_stages(job, _lane_cache, "cpu", False, lambda kind, entry: done.append((kind, entry)), say)
    return job["name"], done


def _run_in_lanes(jobs: list[dict[str, Any]], state: _State, lanes: int, log: Callable[[str], None]) -> None:
    """Run ``jobs`` (:func:`_run_stages`) in ``lanes`` spawned processes of ``cores // lanes`` threads each, the
    costliest runs first; the state is marked here as each run ends (a failure stops the lanes and re-raises:
    finished stages stay done, an interrupted training resumes from its checkpoint). No per-step progress bars
    here: the lanes log when each stage starts and ends."""
    import multiprocessing

    if not jobs:
        return
    jobs = sorted(jobs, key=lambda j: -j["cost"])
    threads = max(1, (os.cpu_count() or 1) // lanes)
    log(f"{len(jobs)} run(s) in {min(lanes, len(jobs))} lanes of {threads} thread(s), costliest first")
    context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    counter = context.Value("i", 0)
    # leaving the with-block terminates the lanes, also when a run failed or the user interrupted
    with context.Pool(min(lanes, len(jobs)), initializer=_lane_start, initargs=(threads, counter)) as pool:
        for name, done in pool.imap_unordered(_lane_job, jobs, chunksize=1):
            for kind, entry in done:
                _mark(state, name, kind, entry)
                log(f"{kind} {name}: done in {entry['seconds']:.0f} s")


def run_demo(
    out: str | os.PathLike,
    runs: Sequence[DemoRun] = DEMO_RUNS,
    seed: int = 0,
    device: str = "cpu",
    smoke: bool = False,
    n_bootstrap: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] = _say,
    lanes: int | None = None,
    spacing: float | None = None,
) -> Path:
    """Run (or resume) the demo into ``out``; returns the path of ``report.html``.

    Args:
        out: the demo folder (created): ``data/``, ``runs/<name>/``, ``scores/<name>/``, ``report/``.
        runs: which methods (default: all of :data:`DEMO_RUNS`).
        seed: seed of the demo cohort. device: ``cpu`` or ``cuda``.
        smoke: tiny sizes (a few scans, 2 steps per phase, 20 bootstrap resamples): for tests only, the
            numbers mean nothing.
        n_bootstrap: bootstrap resamples of the report's CIs.
        progress: progress bars of training and scoring (with one lane).
        lanes: runs trained and scored side by side, each in its own process on its share of the cores
            (default :func:`default_lanes`: 2 on a CPU with 2 cores or more); 1: one after the other in this
            process, with per-step progress bars.
        spacing: the cohort's isotropic voxel size in mm (None: the demo's 4 mm); ``runs`` must preprocess onto
            that grid (``benchmarks/grid_spacing.py`` sets their overrides). Recorded in the settings and with
            the cohort stage (``spacing_mm``).

    Raises:
        FileNotFoundError: a config is missing. ValueError: ``out`` holds a demo made with other settings.
    """
    from mri_anomaly.data import make_demo_cohort
    from mri_anomaly.data.demo import default_workers
    from mri_anomaly.evaluation.evaluate import evaluate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out / STATE_FILE)
    settings: dict[str, Any] = {"seed": seed, "smoke": smoke, "runs": [r.name for r in runs]}
    if spacing is not None:  # only then: demos made before the option resume with their settings unchanged
        settings["spacing"] = float(spacing)
    if state.data.get("settings") not in (None, settings):
        raise UserInputError(
            f"{out} holds a demo made with other settings ({state.data['settings']}); use another --out or delete {out / STATE_FILE}"
        )
    state.data["settings"] = settings
    configs = _demo_configs(runs, smoke)
    stage = _Stager(state, 2 + 2 * len(runs), log)
    t_all = time.time()
    data_dir = out / "data"
    datalist = data_dir / "datalist.json"
    if stage("data", f"demo cohort -> {data_dir}"):
        t, c = time.time(), _cpu_time()
        kwargs = dict(SMOKE_COHORT) if smoke else {}
        if spacing is not None:
            kwargs["spacing"] = float(spacing)
        make_demo_cohort(data_dir, seed=seed, workers=default_workers(), **kwargs)
        state.mark("data", time.time() - t, c, **({} if spacing is None else {"spacing_mm": float(spacing)}))
    lanes = default_lanes(device) if lanes is None else int(lanes)
    score_dirs = _train_and_score(out, runs, configs, datalist, state, stage, device, progress, lanes, log)
    report_dir = out / "report"
    if stage("evaluate", f"evaluate and compare -> {report_dir}"):
        t, c = time.time(), _cpu_time()
        evaluate(score_dirs, datalist, report_dir, runs=[out / "runs" / r.name for r in runs],
                 names=[r.name for r in runs], n_bootstrap=SMOKE_BOOTSTRAP if smoke else n_bootstrap,
                 n_bootstrap_voxel=5 if smoke else 100, title="mri-anomaly demo: methods compared on the synthetic cohort",
                 log=log, allow_few_calibration_scans=smoke, workers=lanes)  # fmt: skip
        state.mark("evaluate", time.time() - t, c)
    state.data["total_seconds_this_call"] = round(time.time() - t_all, 2)
    atomic_write_json(out / STATE_FILE, state.data)
    report = report_dir / "report.html"
    log(f"done in {time.time() - t_all:.0f} s. Report: {report.resolve()}")
    return report


def run_seed(
    demo: str | os.PathLike,
    seed: int,
    runs: Sequence[str | DemoRun] = SEED_RUNS,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = _say,
    lanes: int | None = None,
) -> Path:
    """Train and score ``runs`` of a finished demo again with the config's ``seed=<seed>`` on the same cohort.

    Each run keeps its :data:`DEMO_RUNS` config and overrides (and the demo's smoke sizes when the demo is a
    smoke demo); ``seed`` sets model init, data order, augmentation and synthetic lesions. A :class:`DemoRun` in
    ``runs`` is taken as given (another config or overrides on the same cohort: an ablation's variants). Writes
    ``DEMO/seeds/<seed>/runs/<name>`` and ``DEMO/seeds/<seed>/scores/<name>`` (validation and test sections),
    resumable like the demo (``DEMO/seeds/<seed>/seed_state.json``); no evaluation. Returns
    ``DEMO/seeds/<seed>``.

    Raises:
        MissingInputError: ``demo`` has no finished cohort. UserInputError: an unknown run name.
    """
    demo = Path(demo)
    demo_state = _State(demo / STATE_FILE)
    datalist = demo / "data" / "datalist.json"
    if not demo_state.done("data") or not datalist.is_file():
        raise MissingInputError(
            f"{demo}: no finished demo cohort (data/datalist.json); run the demo there first"
        )
    by_name = {r.name: r for r in DEMO_RUNS}
    unknown = [n for n in runs if not isinstance(n, DemoRun) and n not in by_name]
    if unknown:
        raise UserInputError(f"unknown demo runs {unknown}; known: {sorted(by_name)}")
    chosen = [n if isinstance(n, DemoRun) else by_name[n] for n in runs]
    smoke = bool((demo_state.data.get("settings") or {}).get("smoke"))
    out = demo / "seeds" / str(seed)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out / "seed_state.json")
    settings = {"seed": seed, "smoke": smoke}
    if state.data.get("settings") not in (None, settings):
        raise UserInputError(
            f"{out} was made with other settings ({state.data['settings']}); delete it to redo it"
        )
    state.data["settings"] = settings
    configs = _demo_configs(chosen, smoke, extra=(f"seed={seed}",))
    stage = _Stager(state, 2 * len(chosen), lambda msg: log(f"seed {seed}: {msg}"))
    lanes = default_lanes(device) if lanes is None else int(lanes)
    _train_and_score(out, chosen, configs, datalist, state, stage, device, progress, lanes,
                     lambda msg: log(f"seed {seed}: {msg}"))  # fmt: skip
    atomic_write_json(out / "seed_state.json", state.data)
    return out
