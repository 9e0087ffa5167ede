"""Helpers shared by the benchmark scripts: device naming, median timing, copy bandwidth, table output.

Timing: CPU wall clock (``time.perf_counter``) or CUDA events around each call; the median over
``reps`` calls after ``warmup`` calls. TF32 is pinned off by :func:`pin_precision`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def pin_precision() -> None:
    """Full fp32 everywhere: no TF32 in matmuls or convolutions (it changes results and speeds)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_tag(device: torch.device) -> str:
    """A file-name-safe device id: ``cpu-2core`` or the GPU name, e.g. ``cuda-NVIDIA-H100-80GB-HBM3``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
    return f"cpu-{torch.get_num_threads()}core"


def device_description(device: torch.device) -> str:
    """Human-readable device line for the report (CPU model and threads, or GPU name and memory)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (
        f"{cpu_model()}, {torch.get_num_threads()} threads (os.cpu_count()={os.cpu_count()}), "
        f"torch {torch.__version__}"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[int], Any], device: torch.device, reps: int = 5, warmup: int = 1
) -> tuple[float, float]:
    """Median and max seconds of ``fn(i)`` over ``reps`` calls after ``warmup`` calls.

    ``fn`` gets the call index so that it can rotate through several input buffers (keeps inputs
    out of the GPU's L2 between calls).
    """
    for i in range(warmup):
        fn(i)
    synchronize(device)
    times = []
    for i in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(warmup + i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(warmup + i)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def copy_bandwidth(device: torch.device, nbytes: int | None = None, reps: int = 5) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written per second) of ``dst.copy_(src)``.

    Tensors are far above cache sizes: 256 MiB on the CPU, 2 GiB on a GPU (> 1 GB D2D copy).
    """
    if nbytes is None:
        nbytes = (2 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds, _ = median_time(lambda i: dst.copy_(src), device, reps=reps, warmup=1)
    return 2 * nbytes / seconds / 1e9


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def save_results(name: str, tag: str, markdown: str, data: dict[str, Any], out_dir: Path = DOCS_DIR) -> Path:
    """Write ``<out_dir>/<name>-<tag>.md`` and ``.json``; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / f"{name}-{tag}.md"
    md_path.write_text(markdown)
    (out_dir / f"{name}-{tag}.json").write_text(json.dumps(data, indent=2) + "\n")
    return md_path


def demo_benchmark_parser(
    doc: str, seeds: bool = False, real_flag: str | None = None
) -> argparse.ArgumentParser:
    """The parser of a benchmark that reads a finished demo: ``doc``'s first paragraph as its description, ``--demo``
    (required), ``--docs`` and ``--reading`` (a markdown file put under "Reading", :func:`reading_lines`); with
    ``seeds``, ``--seeds`` (the demo's retrained seeds to read too, :func:`demo_seeds`); with ``real_flag`` (e.g.
    ``"--real"``), that option for the real cases' folder (default ``../shared/data``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="a finished `mri-anomaly demo` folder")
    p.add_argument("--docs", type=Path, default=DOCS_DIR)
    p.add_argument("--reading", type=Path, help="a markdown file with the reading of the numbers")
    if seeds:
        p.add_argument(
            "--seeds", type=int, nargs="*", default=[], help="retrained seeds of the demo to read too"
        )
    if real_flag:
        from real_data import default_data_dir

        p.add_argument(
            real_flag, type=Path, default=default_data_dir(), help="the real cases (../shared/data)"
        )
    return p


def demo_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds a demo benchmark reads: 0 (the demo's own runs) first, then ``--seeds`` without 0."""
    return [0, *[s for s in args.seeds if s != 0]]


def meta_lines(meta: Mapping[str, Any]) -> list[str]:
    """A demo benchmark document's first lines: its command, then machine, load, date and duration (:func:`run_meta`)."""
    return [
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['load']}; {meta['date']}; {meta['seconds']:.0f} s.  ",
    ]


def reading_lines(result: Mapping[str, Any]) -> list[str]:
    """The document's "Reading" section: ``result["reading"]`` when there is one."""
    return ["## Reading", "", result["reading"], ""] if result.get("reading") else []


def write_doc(docs: Path, name: str, markdown: str, result: Mapping[str, Any]) -> None:
    """Write ``<docs>/<name>.md`` and ``.json`` (floats of numpy types as numbers) and print the markdown."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{name}.md").write_text(markdown)
    (docs / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(markdown)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the count. Training repeats exactly on one
    machine only at the same thread count (the demo's autoencoder, seed 1, on an Intel Xeon: 0.852 volume AUROC on
    one thread, 0.829 on two), and the demo trains each run on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_steps_run(config: dict[str, Any], datalist: Path, run_dir: Path, steps: int | str) -> float:
    """Train ``config`` into ``run_dir`` (resumable) unless a run of ``steps`` (steps per phase, or a name of
    per-phase steps) is there; returns its training wall seconds (kept in ``run_dir/train_time.json``)."""
    from mri_anomaly.training import Trainer

    timing_path = run_dir / "train_time.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if not (run_dir / "checkpoint.pt").is_file() or timing.get("steps") != steps:
        t = time.time()
        Trainer(config, str(datalist), run_dir, resume=True, progress=False).fit()
        timing = {"steps": steps, "seconds": round(time.time() - t, 1)}
        timing_path.write_text(json.dumps(timing))
    return float(timing["seconds"])


def run_with_config(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """A copy of run ``src`` at ``dst`` (replaced) whose checkpoint and ``config.yaml`` hold the config as ``edit``
    changes it in place, the weights unchanged, without the run's calibration: slice norms and thresholds fitted on
    the maps the old config made would standardise and flag the new ones against another map's levels (recalibrate
    with ``Trainer(config, datalist, dst, resume=True).fit()`` where they are needed). Returns the new config."""
    import shutil

    from mri_anomaly.training.config import config_from_yaml, config_to_yaml

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    if (src / "train_log.csv").is_file():
        shutil.copy2(src / "train_log.csv", dst / "train_log.csv")
    checkpoint = torch.load(src / "checkpoint.pt", map_location="cpu", weights_only=False)
    config = config_from_yaml(checkpoint["config"])
    edit(config)
    checkpoint["config"] = config_to_yaml(config)
    for stale in ("thresholds", "threshold_info"):
        checkpoint.pop(stale, None)
    torch.save(checkpoint, dst / "checkpoint.pt")
    (dst / "config.yaml").write_text(checkpoint["config"])
    return config


def recalibrate_run(run_dir: Path, datalist: Path) -> None:
    """Calibrate the run in ``run_dir`` on the datalist's validation section as training does at its end (slice norms
    and thresholds into ``thresholds.json``), with the config its checkpoint holds."""
    from mri_anomaly.data.datalist import load_datalist
    from mri_anomaly.evaluation.calibration import calibrate_run
    from mri_anomaly.evaluation.thresholds import save_thresholds
    from mri_anomaly.runs import load_run

    method, config, _ = load_run(run_dir)
    items = load_datalist(datalist, check_files=False, check_headers=False).get("validation") or []
    calibration = calibrate_run(method, config, items)
    if calibration is None:
        raise RuntimeError(f"{run_dir}: nothing to calibrate on in {datalist}")
    save_thresholds(run_dir, calibration)


def volume_aurocs_on_test(
    run_dir: Path, datalist: Path, score_dir: Path, columns: Sequence[str]
) -> dict[str, float]:
    """Volume AUROC of ``columns`` on the datalist's ``test`` scans, scored by ``run_dir`` into ``score_dir``."""
    import pandas as pd
    from mri_anomaly.data import load_datalist
    from mri_anomaly.evaluation.metrics import auroc
    from mri_anomaly.scoring.runner import score_datalist

    score_datalist(run_dir, datalist, score_dir, sections=("test",), progress=False, save_maps=False)
    scores = pd.read_csv(score_dir / "scores.csv", dtype={"subject_id": str})
    labels = {it["subject_id"]: int(it["label"]) for it in load_datalist(datalist)["test"]}
    y = scores["subject_id"].map(labels).to_numpy()
    return {c: float(auroc(y, scores[c].to_numpy(dtype=float))) for c in columns}


def run_meta(
    script: str, argv: Sequence[str] | None, load_start: float, t0: float, **extra: Any
) -> dict[str, Any]:
    """The command, machine, load, date and duration lines every benchmark document starts with."""
    import datetime as dt
    import sys

    command = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    return {
        "command": command.strip(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "load": f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.time() - t0, 1),
        **extra,
    }


def write_steps_doc(
    docs: Path,
    name: str,
    title: str,
    meta: dict[str, Any],
    intro: str,
    table: str,
    reading: str,
    results: list,
) -> str:
    """Write a training-length benchmark's ``<docs>/<name>.md`` (header, intro, table, reading) and ``.json``;
    returns the markdown."""
    md = "\n".join([
        f"# {title}",
        "",
        f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Load: {meta['load']}  ",
        f"Date: {meta['date']}  ",
        f"Cohort: `{meta['demo']}` (the demo's; test: its test scans; runs reused from `--out` when present)",
        "",
        intro,
        "",
        table,
        "",
        reading,
        "",
    ])  # fmt: skip
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (docs / f"{name}.md").write_text(md)
    return md


def demo_test_items(demo: Path) -> list[dict[str, Any]]:
    """The demo's ``test`` datalist items with absolute ``image``/``mask`` paths, each with its ``lesion_kind``
    from ``subjects.csv`` ('' for healthy scans)."""
    import csv

    data = demo / "data"
    with open(data / "subjects.csv", newline="") as f:
        kinds = {row["subject_id"]: row["lesion_kind"] for row in csv.DictReader(f)}
    out = []
    for it in json.loads((data / "datalist.json").read_text())["test"]:
        it = dict(it)
        for key in ("image", "mask"):
            if key in it and not Path(it[key]).is_absolute():
                it[key] = str(data / it[key])
        # an anomalous scan missing from subjects.csv is a broken demo folder: KeyError, not a healthy scan
        it["lesion_kind"] = kinds[str(it["subject_id"])] if it.get("label") == 1 else ""
        out.append(it)
    return out


def seed_runs(demo: Path, run: str) -> dict[str, Path]:
    """``{seed: run dir}``: the demo's own run (seed 0) and the seeded copies ``DEMO/seeds/<s>/runs/<run>``
    (from ``detection.py --seeds``) that exist."""
    found = {"0": demo / "runs" / run}
    seeds = demo / "seeds"
    if seeds.is_dir():
        for d in sorted(seeds.iterdir(), key=lambda p: p.name):
            if (d / "runs" / run / "checkpoint.pt").is_file():
                found[d.name] = d / "runs" / run
    return {s: p for s, p in found.items() if (p / "checkpoint.pt").is_file()}
