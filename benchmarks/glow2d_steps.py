"""Is the demo's 2D Glow likelihood-ratio model trained long enough? Held-out bits/dim and detection by steps.

Trains the demo's ``glow2d-ratio`` run (``configs/glow2d-slices.yaml`` with the demo's overrides,
``mri_anomaly.pipeline.DEMO_RUNS``) with ``N`` steps in each of its two phases (general, in-distribution) on a
finished demo's cohort, for each ``N`` of ``--steps``, and reports:

* bits/dim of the in-distribution model on the slices (brain fraction >= 0.1) of 80 training scans and of the 80
  healthy validation scans (held out): while held-out bits/dim still fall, the model is under-trained;
* volume AUROC on the demo's test scans of the run's ``llr``/``nll`` columns (``score_datalist``), no CIs
  (the detection benchmark has them for the shipped setting), and the healthy test scans' median and 90th
  percentile of ``nll_top200mm3`` (the demo's best column; its healthy tail is where a training seed loses);
* training wall time;

for each training seed of ``--seeds`` (the config's ``seed``): is the spread over seeds a matter of training length?

Runs already trained under ``--out`` are reused (resumable). Usage::

    python benchmarks/glow2d_steps.py --demo demo-out [--steps 100 200 400] [--seeds 0 1 2]
        [--out /tmp/mri-anomaly-glow2d-steps]

Writes ``docs/benchmarks/glow2d_steps.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DOCS_DIR,
    markdown_table,
    run_meta,
    train_steps_run,
    volume_aurocs_on_test,
    write_steps_doc,
)

COLUMNS = ("nll_top200mm3", "llr_top200mm3", "llr_q999", "nll_q999", "llr_top5_mean", "nll_bpd_top5_mean")
TAIL = "nll_top200mm3"  # the healthy scans' median and 90th percentile of this column


def slices_of(items: list[dict], config: dict) -> torch.Tensor:
    """(S, 1, H, W): the axial slices of the preprocessed ``items`` that the 2D run trains and scores on."""
    from mri_anomaly.data import SliceDataset, VolumeDataset

    ds = SliceDataset(VolumeDataset(items, config["preprocessing"]), config["slices"]["min_brain_fraction"])
    return torch.stack([torch.as_tensor(ds[i]["image"]) for i in range(len(ds))])


def bits_per_dim_of(method, slices: torch.Tensor, batch: int = 256) -> float:
    from mri_anomaly.flows import dequantize
    from mri_anomaly.scoring.flow_scores import bits_per_dim

    glow, out = method.in_distribution, []
    with torch.no_grad():
        for i in range(0, len(slices), batch):
            xd = dequantize(slices[i : i + batch], False, method.n_bins)
            out.append(bits_per_dim(glow(xd).log_prob, glow.num_dims(xd.shape[2:]), method.n_bins))
    return float(torch.cat(out).mean())


def healthy_tail(score_dir: Path, datalist: Path, column: str) -> dict[str, float]:
    """The healthy test scans' median and 90th percentile of ``column`` in ``score_dir``'s scores."""
    import pandas as pd
    from mri_anomaly.data import load_datalist

    labels = {it["subject_id"]: int(it["label"]) for it in load_datalist(datalist)["test"]}
    scores = pd.read_csv(score_dir / "scores.csv", dtype={"subject_id": str})
    healthy = scores.loc[scores["subject_id"].map(labels) == 0, column].to_numpy(dtype=np.float64)
    return {"median": float(np.median(healthy)), "q90": float(np.quantile(healthy, 0.9))}


def reading(data: list[dict]) -> str:
    """One sentence from the numbers: do held-out bits/dim still fall at the largest step count, and how do the
    volume AUROCs move (mean ± SD over the seeds)?"""
    steps = sorted({d["steps_per_phase"] for d in data})

    def over_seeds(n: int, get) -> tuple[float, float]:
        values = np.array([get(d) for d in data if d["steps_per_phase"] == n], dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0

    held = [over_seeds(n, lambda d: d["bpd"]["validation"])[0] for n in steps]
    falling = all(b < a for a, b in zip(held, held[1:]))

    def moved(column: str) -> str:
        return " → ".join(
            "{:.3f} ± {:.3f}".format(*over_seeds(n, lambda d: d["auroc"][column])) for n in steps
        )

    return (
        f"Held-out bits/dim (mean over seeds) {held[0]:.2f} at {steps[0]} steps per phase, {held[-1]:.2f} at "
        f"{steps[-1]}: {'still falling at every step count (under-trained at the smaller ones)' if falling else 'not falling at every step count'}; "
        f"volume AUROC (mean ± SD over seeds) of `{TAIL}` {moved(TAIL)}, of `llr_top200mm3` {moved('llr_top200mm3')}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--demo", required=True, help="a finished `mri-anomaly demo --out` folder (its cohort)"
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400], help="steps per phase")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (the config's seed)"
    )
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "mri-anomaly-glow2d-steps"))
    parser.add_argument("--docs", default=str(DOCS_DIR))
    args = parser.parse_args(argv)

    from mri_anomaly.data import load_datalist
    from mri_anomaly.pipeline import DEMO_RUNS, configs_dir
    from mri_anomaly.runs import load_run
    from mri_anomaly.training import load_config

    demo, out = Path(args.demo), Path(args.out)
    datalist_path = demo / "data" / "datalist.json"
    datalist = load_datalist(datalist_path)
    run = next(r for r in DEMO_RUNS if r.name == "glow2d-ratio")
    load_start, t0 = os.getloadavg()[0], time.time()
    rows, data, cache = [], [], {}
    for n in args.steps:
        for seed in args.seeds:
            run_dir = out / "runs" / f"steps{n}-seed{seed}"
            phases = (
                f"train.phases={{general: {{steps: {n}, lr: 1.0e-3, weight_decay: 0.0}}, "
                f"in: {{steps: {n}, lr: 5.0e-4, weight_decay: 0.0}}}}"
            )
            overrides = [o for o in run.overrides if not o.startswith("train.phases=")] + [
                phases,
                f"seed={seed}",
            ]
            config = load_config(configs_dir() / run.config, overrides)
            train_seconds = train_steps_run(config, datalist_path, run_dir, n)
            method, config, _ = load_run(run_dir)
            for section, items in (
                ("training", datalist["training"][:80]),
                ("validation", datalist["validation"]),
            ):
                if section not in cache:
                    cache[section] = slices_of(items, config)
            bpd = {s: bits_per_dim_of(method, cache[s]) for s in ("training", "validation")}
            score_dir = out / "scores" / f"steps{n}-seed{seed}"
            aurocs = volume_aurocs_on_test(run_dir, datalist_path, score_dir, COLUMNS)
            tail = healthy_tail(score_dir, datalist_path, TAIL)
            rows.append([n, seed, f"{bpd['training']:.3f}", f"{bpd['validation']:.3f}",
                         *(f"{aurocs[c]:.3f}" for c in COLUMNS), f"{tail['median']:.3g} ({tail['q90']:.3g})",
                         f"{train_seconds:.0f}"])  # fmt: skip
            data.append({"steps_per_phase": n, "seed": seed, "bpd": bpd, "auroc": aurocs, "healthy_tail": tail,
                         "train_seconds": train_seconds, "slices": {s: len(cache[s]) for s in cache}})  # fmt: skip
            print(f"[glow2d-steps] {n} seed {seed}: {rows[-1]}", file=sys.stderr, flush=True)
    header = ["steps per phase", "seed", "bits/dim, 80 training scans", "bits/dim, 80 held-out healthy",
              *(f"AUROC `{c}`" for c in COLUMNS), f"healthy `{TAIL}` median (90th pct)", "training s"]  # fmt: skip
    meta = run_meta("glow2d_steps.py", argv, load_start, t0, demo=str(demo))
    md = write_steps_doc(
        Path(args.docs),
        "glow2d_steps",
        "2D Glow likelihood ratio: training length",
        meta,
        "The demo trains 100 steps per phase (seed 0), here on this process's threads (the demo's lanes train on "
        "one thread each, which rounds differently). Bits/dim of the in-distribution model on axial slices with ≥ 10 % brain; "
        "AUROC of volume columns on the test scans (no CIs: see `detection.md` for the shipped setting's).",
        markdown_table(header, rows),
        reading(data),
        data,
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
