"""Wall-clock time of ``mri-anomaly demo`` (the README's first command), per stage, saved as a table.

Runs the full demo from scratch into a fresh folder (or, with ``--existing DIR``, tabulates the stage times a
finished demo recorded in ``DIR/demo_state.json``) and writes ``docs/benchmarks/demo_time.md``. The goal is
under 20 minutes on 2 CPU cores; this is a benchmark, never a timed test. The machine's load average is
recorded, because on a shared machine other processes slow every stage.

Usage::

    python benchmarks/demo_time.py [--out /tmp/demo-bench] [--existing DIR] [--doc docs/benchmarks/demo_time.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 20 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="/tmp/mri-anomaly-demo-bench", help="fresh demo folder (deleted first)"
    )
    parser.add_argument(
        "--existing", default=None, help="tabulate a finished demo folder instead of running one"
    )
    parser.add_argument("--doc", default=str(REPO / "docs" / "benchmarks" / "demo_time.md"))
    parser.add_argument(
        "--note", default="", help="a paragraph added to the table (e.g. load observed by hand)"
    )
    args = parser.parse_args(argv)

    import threading

    import numpy as np
    import torch

    load_start = os.getloadavg()
    samples: list[float] = []
    stop = threading.Event()

    def sample_load() -> None:  # the load while the demo runs, every 15 s
        while not stop.wait(15.0):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    if args.existing:
        folder = Path(args.existing)
        wall = None
        how = f"stage times recorded by a full `mri-anomaly demo --out {folder}` run (tabulated with --existing)"
    else:
        folder = Path(args.out)
        shutil.rmtree(folder, ignore_errors=True)
        exe = Path(sys.executable).with_name("mri-anomaly")
        cmd = [str(exe) if exe.exists() else "mri-anomaly", "demo", "--out", str(folder), "--no-progress"]
        t = time.time()
        subprocess.run(cmd, check=True)
        wall = time.time() - t
        how = f"`{' '.join(cmd[1:])}` from scratch, timed end to end by this script"
    stop.set()
    load_end = os.getloadavg()
    during = (
        f"; during the run mean {np.mean(samples):.1f}, max {np.max(samples):.1f} ({len(samples)} samples)"
        if samples
        else ""
    )
    state = json.loads((folder / "demo_state.json").read_text())
    stages = [(k, v["seconds"]) for k, v in state.items() if isinstance(v, dict) and "seconds" in v]
    cpu = {k: v.get("cpu_seconds") for k, v in state.items() if isinstance(v, dict)}
    total_stages = sum(s for _, s in stages)
    total = wall if wall is not None else total_stages
    lines = [
        "# `mri-anomaly demo` wall-clock time",
        "",
        f"Measured: {how}.",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs visible, torch {torch.__version__} with {torch.get_num_threads()} threads.",
        (
            f"1-minute load average {load_start[0]:.1f} at the start and {load_end[0]:.1f} at the end{during} "
            "(a load above the CPU count means other processes took part of the cores)."
            if not args.existing
            else "Load: not measured by this tabulation (see the note below)."
        ),
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "CPU seconds are the demo process's own user + system time (all its threads): unlike the wall clock they do not",
        "grow when other processes share the cores.",
        "",
        "| stage | wall seconds | CPU seconds |",
        "|---|---:|---:|",
    ]
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    lines += [f"| {name} | {sec:.1f} | {fmt(cpu.get(name))} |" for name, sec in stages]
    cpu_total = sum(v for v in cpu.values() if v is not None)
    lines += [f"| **sum of stages** | **{total_stages:.1f}** | {cpu_total:.1f} |"]
    if wall is not None:
        lines += [f"| **end to end (incl. start-up)** | **{wall:.1f}** |"]
    verdict = "within" if total < GOAL_S else "OVER"
    lines += [
        "",
        f"Total {total / 60:.1f} min wall clock: {verdict} the 20-minute goal on this (shared) 2-CPU machine.",
        f"The demo's own CPU time was {cpu_total / 60:.1f} min; the process got {cpu_total / max(total_stages, 1e-9):.2f} "
        "cores on average. On an otherwise idle 2-core machine the wall time lies between CPU time / 2 and CPU time "
        f"({cpu_total / 120:.1f}-{cpu_total / 60:.1f} min) - an estimate, not a measurement.",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    slowest = sorted(stages, key=lambda x: -x[1])[:3]
    lines += ["Slowest stages: " + ", ".join(f"{n} ({s / 60:.1f} min)" for n, s in slowest) + ".", ""]
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
