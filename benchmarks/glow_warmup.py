"""Does a Glow's loss jump early without a learning-rate warm-up, and does a warm-up remove the jump?

The issue behind the ``warmup_steps`` option said the Glow's loss jumped early in training. This script measures it
on the demo's two Glow ratio configs (``DEMO/runs/glow2d-ratio``, ``glow3d-ratio``), trained from scratch on the
demo's cohort with every step logged (``train.log_every=1``), at each phase's first ``--window`` steps: the
``general`` phase (from the data-dependent init) for both, and for the 2D run also the ``in`` phase (from the trained
general model; its whole ``general`` phase runs first, 100 steps). Settings: ``warmup_steps`` 0 (the shipped configs)
and ``--warmup`` in every phase; ``--seeds`` training seeds each. Per phase window:

* the largest jump: the most the loss rises above the lowest loss of the window's earlier steps (bits/dim);
* the steps whose loss rises more than ``--rise`` bits/dim over the step before;
* the loss at the window's last step, the largest gradient norm (before clipping at ``train.grad_clip``) and the
  steps skipped for a non-finite loss.

Usage::

    python benchmarks/glow_warmup.py --demo demo-out [--seeds 0 1 2] [--warmup 10] [--window 40]
        [--out /tmp/mri-anomaly-glow-warmup]

Writes ``docs/benchmarks/glow_warmup.md`` and ``.json``; runs under ``--out`` are reused. Detection with warm-up
(2D Glow, demo and real cases, three seeds) is in ``ablation.md``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import demo_benchmark_parser, markdown_table, meta_lines, reading_lines, run_meta, write_doc  # noqa: E402

RUNS = ("glow2d-ratio", "glow3d-ratio")


def window_stats(log: pd.DataFrame, phase: str, window: int, rise: float) -> dict[str, float]:
    """The jump statistics of ``phase``'s first ``window`` logged steps of a ``train_log.csv`` table (one row per
    step: ``phase``, ``phase_step``, ``loss``, ``grad_norm``, ``skipped_steps``): ``max_jump`` (the most a loss
    rises above the lowest loss before it in the window), ``n_rises`` (steps more than ``rise`` above the step
    before), ``final_loss``, ``max_grad_norm``, ``skipped`` and ``steps``."""
    part = log[(log["phase"] == phase) & (log["phase_step"] <= window)].sort_values("phase_step")
    loss = part["loss"].to_numpy(np.float64)
    if loss.size == 0:
        raise ValueError(f"no logged steps of phase {phase!r}")
    best_before = np.minimum.accumulate(loss)
    jumps = loss[1:] - best_before[:-1]
    return {
        "steps": int(loss.size),
        "max_jump": float(max(jumps.max(), 0.0)) if jumps.size else 0.0,
        "n_rises": int((np.diff(loss) > rise).sum()),
        "final_loss": float(loss[-1]),
        "max_grad_norm": float(part["grad_norm"].max()),
        "skipped": int(part["skipped_steps"].max()) if "skipped_steps" in part else 0,
    }


def train_window(demo: Path, run: str, seed: int, warmup: int, window: int, out: Path) -> pd.DataFrame:
    """Train the demo's ``run`` config with ``seed`` and ``warmup_steps`` = ``warmup`` in every phase, every step
    logged, up to ``window`` steps into its last measured phase (the 2D run's ``in``, the 3D run's ``general``);
    returns its ``train_log.csv``."""
    from mri_anomaly.training import Trainer
    from mri_anomaly.training.config import config_from_yaml

    run_dir = out / run / f"warmup{warmup}" / f"seed{seed}"
    log_path = run_dir / "train_log.csv"
    if not (run_dir / "done").is_file():
        config = config_from_yaml((demo / "runs" / run / "config.yaml").read_text())
        config["seed"] = seed
        config["train"]["log_every"] = 1
        phases = config["train"]["phases"]
        for phase in phases.values():
            phase["warmup_steps"] = warmup
        max_steps = window if config["spatial_dims"] == 3 else int(phases["general"]["steps"]) + window
        Trainer(
            config, str(demo / "data" / "datalist.json"), run_dir, max_steps=max_steps, progress=False
        ).fit()
        (run_dir / "done").write_text("")
    return pd.read_csv(log_path)


def measure(
    demo: Path, seeds: Sequence[int], warmups: Sequence[int], window: int, rise: float, out: Path, log=print
):
    """``[{run, phase, warmup, seed, **window_stats}]`` of every run, setting and seed."""
    rows = []
    for run in RUNS:
        for warmup in warmups:
            for seed in seeds:
                t = time.time()
                table = train_window(demo, run, seed, warmup, window, out)
                phases = ("general", "in") if run.startswith("glow2d") else ("general",)
                for phase in phases:
                    rows.append(
                        {"run": run, "phase": phase, "warmup": warmup, "seed": seed}
                        | window_stats(table, phase, window, rise)
                    )
                log(f"[glow-warmup] {run} warmup {warmup} seed {seed}: {time.time() - t:.0f} s")
    return rows


def summary(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per run, phase and warm-up: the mean over seeds of each statistic, and the per-seed largest jumps."""
    df = pd.DataFrame(rows)
    out = []
    for (run, phase, warmup), g in df.groupby(["run", "phase", "warmup"], sort=False):
        out.append(
            {
                "run": run,
                "phase": phase,
                "warmup": int(warmup),
                "seeds": [int(s) for s in g["seed"]],
                "max_jump_per_seed": [float(v) for v in g["max_jump"]],
                **{k: float(g[k].mean()) for k in ("max_jump", "n_rises", "final_loss", "max_grad_norm")},
                "skipped": int(g["skipped"].sum()),
            }
        )
    return out


def to_markdown(result: Mapping[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Glow training: does the loss jump early without a warm-up?",
        "",
        *meta_lines(meta),
        f"Configs: the demo's `{'`, `'.join(RUNS)}` (`{result['demo']}`), every step logged; seeds "
        f"{', '.join(str(s) for s in result['seeds'])}; each phase's first {result['window']} steps.",
        "",
        "Largest jump: the most the loss (bits/dim; the `in` phase's includes the outlier loss) rises above the "
        "lowest loss of the window's earlier steps, mean over seeds (per seed in brackets). Rises: steps more than "
        f"{result['rise']} bits/dim above the step before, mean over seeds. Gradient norm before clipping.",
        "",
    ]
    header = [
        "run",
        "phase",
        "warm-up steps",
        "largest jump",
        "rises",
        "loss at the last step",
        "largest gradient norm",
        "skipped steps",
    ]
    rows = [
        [
            r["run"],
            r["phase"],
            r["warmup"],
            f"{r['max_jump']:.3f} ({', '.join(f'{v:.3f}' for v in r['max_jump_per_seed'])})",
            f"{r['n_rises']:.1f}",
            f"{r['final_loss']:.3f}",
            f"{r['max_grad_norm']:.1f}",
            r["skipped"],
        ]
        for r in result["summary"]
    ]
    lines += [markdown_table(header, rows), ""]
    lines += reading_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps of the other setting")
    p.add_argument("--window", type=int, default=40, help="steps measured from each phase's start")
    p.add_argument("--rise", type=float, default=0.25, help="a step-to-step rise counted, bits/dim")
    p.add_argument("--out", type=Path, default=Path("/tmp/mri-anomaly-glow-warmup"))
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    demo = args.demo.resolve()
    rows = measure(demo, args.seeds, [0, args.warmup], args.window, args.rise, args.out.resolve())
    result = {
        "demo": str(demo),
        "seeds": list(args.seeds),
        "window": args.window,
        "rise": args.rise,
        "rows": rows,
        "summary": summary(rows),
        "reading": args.reading.read_text().strip() if args.reading else "",
    }
    result["meta"] = run_meta("glow_warmup.py", argv, load_start, t0)
    write_doc(args.docs, "glow_warmup", to_markdown(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
