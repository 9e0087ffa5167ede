"""Time of ``"train"`` steps of Deep SAD (γ_l > 0, synthetic lesions) vs Deep SVDD (γ_l = 0) on the CPU.

What the labelled synthetic anomalies cost per step: ``configs/deep-sad-2d.yaml`` and ``configs/deep-svdd-2d.yaml``
as shipped (batch 32 of 40 × 48 slices), a subset of a demo cohort's training volumes, ``train.num_workers`` from
the command line (default 0: data loading and lesion insertion in the training process). A step is: the next
batch from the phase's :class:`~mri_anomaly.training.loaders.ResumableBatches` (with the method's
``phase_sample_transform``, where the code has it), ``training_loss``, backward, Adam step. The centre is set
from one batch (its value does not matter for the time). Median and total over ``--steps`` steps after 5 warm-up
steps.

Run: ``python benchmarks/deep_sad_step_time.py DATALIST [--volumes 24] [--steps 100] [--num-workers 0]``.
Prints the times (not written to docs: measure on an idle machine before quoting them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from mri_anomaly.data import load_datalist
from mri_anomaly.runs import build_method
from mri_anomaly.training import load_config
from mri_anomaly.training.loaders import ResumableBatches, build_dataset


def step_times(name: str, items: list[dict], steps: int, num_workers: int, cache_dir: Path) -> list[float]:
    config = load_config(name)
    torch.manual_seed(0)
    method = build_method(config)
    dataset = build_dataset(config, items, cache_dir=cache_dir)
    transform = getattr(method, "phase_sample_transform", lambda phase: None)("train")
    extra = {} if transform is None else {"sample_transform": transform}
    batches = iter(
        ResumableBatches(
            dataset,
            config["train"]["batch_size"],
            0,
            1,
            num_workers=num_workers,
            rank=0,
            world_size=1,
            **extra,
        )
    )
    method.train()
    method.begin_phase("train", [next(batches)])
    optimizer = torch.optim.Adam(method.phase_parameters("train"), lr=1e-4)
    times = []
    for _ in range(5 + steps):
        start = time.perf_counter()
        loss = method.training_loss("train", next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[5:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datalist", type=Path)
    parser.add_argument("--volumes", type=int, default=24, help="training volumes used (the first N)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/deep_sad_step_time_cache"))
    args = parser.parse_args()
    items = load_datalist(args.datalist)["training"][: args.volumes]
    for name in ("deep-svdd-2d", "deep-sad-2d"):
        times = step_times(name, items, args.steps, args.num_workers, args.cache_dir)
        print(
            f"{name}: {args.steps} train steps in {sum(times):.2f} s (median {1000 * statistics.median(times):.1f} ms/step), "
            f"num_workers={args.num_workers}, torch threads={torch.get_num_threads()}"
        )


if __name__ == "__main__":
    main()
