"""Why the Glow models' ``final_scale`` score fails: its density split into the flow and the prior part.

Schirrmeister et al. score with the final (coarsest) scale's likelihood contribution alone. On the demo it ranks
lesions below ``nll_bpd`` at every training seed, and below chance for some (``detection.md``, section
"Seeds"). A scale's contribution is the log-det of its flow steps plus its prior's log-density of the latent it
splits off (``GlowOutput.flow_log_det_maps`` and the rest of ``log_density_maps``). This script reads both
parts of the in-distribution model's final scale, per voxel (nats; higher = more likely), averaged over the
lesion voxels of anomalous test scans, over the rest of their brain, and over the brain of healthy test scans,
for the demo's Glow ratio runs and their seeded copies (``DEMO/seeds/<s>/runs``, from ``detection.py --seeds``).
A part that detects the lesion is lower in lesions than in healthy brain.

Usage::

    python benchmarks/final_scale.py --demo demo-out [--healthy 20] [--anomalous 48] [--docs docs/benchmarks]

Writes ``docs/benchmarks/final_scale.md`` and ``.json`` with the command, machine, load and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, demo_test_items, seed_runs  # noqa: E402

RUNS = ("glow2d-ratio", "glow3d-ratio")
REGIONS = ("lesion", "other brain", "healthy scans")


@torch.no_grad()
def final_scale_parts(run_dir: Path, items: list[dict]) -> dict[str, dict[str, float]]:
    """Mean per-voxel flow and prior parts of the in-distribution model's final-scale density, per region."""
    from monai.utils import convert_to_tensor
    from mri_anomaly.flows import dequantize
    from mri_anomaly.runs import load_run
    from mri_anomaly.scoring.brain import brain_mask
    from mri_anomaly.scoring.items import PreprocessedItems

    method, config, _ = load_run(run_dir)
    glow = method.in_distribution
    sums = {r: {"flow": 0.0, "prior": 0.0, "voxels": 0} for r in REGIONS}
    data = PreprocessedItems(items, config)
    for i in range(len(data)):
        _, item, error = data[i]
        if error is not None:
            raise RuntimeError(error)
        image = convert_to_tensor(item["image"], track_meta=False).float()  # (C, H, W, D)
        mask = item.get("mask")
        mask = convert_to_tensor(mask, track_meta=False).float() > 0.5 if mask is not None else None
        if mask is not None and not bool(mask.any()):
            mask = None
        if config["spatial_dims"] == 2:  # axial slices, as the 2D model scores them
            x, m = image.permute(3, 0, 1, 2), None if mask is None else mask.permute(3, 0, 1, 2)
        else:
            x, m = image[None], None if mask is None else mask[None]
        brain = brain_mask(x) > 0
        out = glow(dequantize(x, False, method.n_bins), return_maps=True, split_maps=True)
        flow = out.flow_log_det_maps[:, -1:]
        prior = out.log_density_maps[:, -1:] - flow
        regions = {"healthy scans": brain} if m is None else {"lesion": brain & m, "other brain": brain & ~m}
        for name, where in regions.items():
            sums[name]["flow"] += float(flow[where].double().sum())
            sums[name]["prior"] += float(prior[where].double().sum())
            sums[name]["voxels"] += int(where.sum())
    return {
        r: {
            "flow": v["flow"] / max(v["voxels"], 1),
            "prior": v["prior"] / max(v["voxels"], 1),
            "total": (v["flow"] + v["prior"]) / max(v["voxels"], 1),
            "voxels": v["voxels"],
        }
        for r, v in sums.items()
    }


def test_items(demo: Path, healthy: int, anomalous: int) -> list[dict]:
    """The first ``healthy`` healthy and ``anomalous`` anomalous test scans of the demo, absolute paths."""
    test = demo_test_items(demo)
    return [it for it in test if it.get("label") == 0][:healthy] + [
        it for it in test if it.get("label") == 1
    ][:anomalous]


def to_markdown(results: dict) -> str:
    lines = [
        "| run | seed | flow: lesion | other brain | healthy scans | prior: lesion | other brain | healthy scans "
        "| total: lesion | healthy scans |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, seeds in results.items():
        for seed, r in seeds.items():
            cells = [f"{r[g]['flow']:+.3f}" for g in REGIONS] + [f"{r[g]['prior']:+.3f}" for g in REGIONS]
            cells += [f"{r['lesion']['total']:+.3f}", f"{r['healthy scans']['total']:+.3f}"]
            lines.append(f"| {run} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo", type=Path, required=True, help="a finished demo folder (with seeds/ if any)"
    )
    parser.add_argument("--healthy", type=int, default=20, help="healthy test scans read (the first N)")
    parser.add_argument("--anomalous", type=int, default=48, help="anomalous test scans read (the first N)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)

    load_start, t0 = os.getloadavg()[0], time.time()
    items = test_items(args.demo, args.healthy, args.anomalous)
    results = {}
    for run in RUNS:
        for seed, run_dir in seed_runs(args.demo, run).items():
            results.setdefault(run, {})[seed] = final_scale_parts(run_dir, items)
            print(f"{run} seed {seed}: done", file=sys.stderr)
    command = "python benchmarks/final_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_h = sum(it.get("label") == 0 for it in items)
    md = "\n".join(
        [
            "# Glow `final_scale`: its density split into the flow and the prior part",
            "",
            f"Command: `{command}`  ",
            f"Machine: {cpu_model()}, {os.cpu_count()} CPUs  ",
            f"Load: 1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end  ",
            f"Date: {now}; {time.time() - t0:.0f} s  ",
            f"Scans: the first {n_h} healthy and {len(items) - n_h} anomalous test scans of `{args.demo}`.",
            "",
            "The in-distribution model's final-scale log-density per voxel (nats; higher = more likely), averaged "
            "over the brain voxels of each region: `lesion` (the mask), `other brain` (the anomalous scans' brain "
            "outside the mask), `healthy scans` (their brain). `flow`: the log-dets of the scale's flow steps; "
            "`prior`: its prior's log-density of the latent the scale splits off; `total` = both, the density "
            "the `final_scale` score negates. A part detects lesions where it is lower in `lesion` than in "
            "`healthy scans`. 2D runs: every axial slice; 3D runs: the volume.",
            "",
            to_markdown(results),
            "",
        ]
    )
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "final_scale.md").write_text(md)
    (args.docs / "final_scale.json").write_text(
        json.dumps({"command": command, "date": now, "results": results}, indent=2) + "\n"
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
