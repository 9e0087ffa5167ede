"""How much a per-dimension Glow prior initialised on a few scans overfits them, with and without shrinkage.

A per-dimension prior (Schirrmeister et al. 2020) gives every latent dimension its own mean and scale. Its
data-dependent init sees ``train.init_batches × batch_size`` scans (8 in ``configs/glow3d-ratio.yaml``): a
voxel-wise atlas of 8 subjects. This measures bits/dim right after the init (coupling networks start at the
identity, so the flow is squeeze + actnorm + 1×1×1 convolutions and the prior decides), on the init scans and on
held-out healthy scans, for shrinkage pseudo-counts ``k`` (``model.prior_shrinkage``) and the per-channel prior.
The gap between the two columns is what the prior learned about those 8 subjects rather than about brains.

Run: ``python benchmarks/glow_prior.py --demo DEMO_OUT`` (a finished ``make demo`` folder, or any folder with
``data/datalist.json``; default: the config's preprocessing of the demo cohort). Writes
``docs/benchmarks/glow_prior.md`` and ``.json`` with the command, machine, load and date.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS_DIR, cpu_model, markdown_table  # noqa: E402


def reading(data: list[dict]) -> list[str]:
    """One line per init size: which prior generalises best to held-out healthy scans, from the numbers."""
    lines = []
    for n in sorted({d["init_scans"] for d in data}):
        rows = [d for d in data if d["init_scans"] == n]
        best = min(rows, key=lambda d: d["bpd_held_out"])
        name = (
            "per_channel"
            if best["prior"] == "per_channel"
            else f"per_dimension with k = {best['shrinkage']:g}"
        )
        lines.append(f"- {n} init scans: lowest held-out bits/dim {best['bpd_held_out']:.3f} with {name}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo", type=Path, required=True, help="demo output folder (holds data/datalist.json)"
    )
    parser.add_argument("--config", default="glow3d-ratio", help="shipped config (model and preprocessing)")
    parser.add_argument("--init-scans", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--held-out", type=int, default=40, help="healthy validation scans to evaluate on")
    parser.add_argument("--shrinkage", type=float, nargs="+", default=[0.0, 8.0, 32.0])
    args = parser.parse_args()

    from mri_anomaly.data import VolumeDataset, load_datalist
    from mri_anomaly.flows import dequantize
    from mri_anomaly.scoring.flow_scores import bits_per_dim
    from mri_anomaly.training import load_config
    from mri_anomaly.training.methods.glow import GlowMethod

    torch.manual_seed(0)
    config = load_config(args.config)
    datalist = load_datalist(args.demo / "data" / "datalist.json")
    healthy_val = [it for it in datalist["validation"] if int(it.get("label", 0)) == 0][: args.held_out]
    training = VolumeDataset(datalist["training"][: max(args.init_scans)], config["preprocessing"])
    held_out = VolumeDataset(healthy_val, config["preprocessing"])
    training_images = torch.stack([torch.as_tensor(training[i]["image"]) for i in range(len(training))])
    held_out_images = torch.stack([torch.as_tensor(held_out[i]["image"]) for i in range(len(held_out))])
    model_args = {
        k: v
        for k, v in config["model"].items()
        if k not in ("outlier_weight", "outlier_temperature", "prior")
    }
    variants = [(f"per_dimension, k = {k:g}", "per_dimension", k) for k in args.shrinkage]
    variants.append(("per_channel", "per_channel", 0.0))
    rows, data = [], []
    load = os.getloadavg()[0]
    for n_init, (label, prior, k) in itertools.product(args.init_scans, variants):
        images = {"init": training_images[:n_init], "held_out": held_out_images}
        torch.manual_seed(0)
        method = GlowMethod(3, 1, prior=prior, prior_shrinkage=k, **model_args)
        glow = method.glow
        g = torch.Generator().manual_seed(0)
        x_init = images["init"] + torch.rand(images["init"].shape, generator=g) / method.n_bins
        glow.initialize(x_init)
        bpd = {}
        with torch.no_grad():
            for name, x in images.items():
                xd = dequantize(x, False, method.n_bins)
                bpd[name] = float(
                    bits_per_dim(glow(xd).log_prob, glow.num_dims(xd.shape[2:]), method.n_bins).mean()
                )
        rows.append(
            [
                n_init,
                label,
                f"{bpd['init']:.3f}",
                f"{bpd['held_out']:.3f}",
                f"{bpd['held_out'] - bpd['init']:.3f}",
            ]
        )
        data.append(
            {
                "init_scans": n_init,
                "prior": prior,
                "shrinkage": k,
                "bpd_init": bpd["init"],
                "bpd_held_out": bpd["held_out"],
            }
        )
        print(rows[-1], flush=True)

    table = markdown_table(
        ["init scans", "prior", "bits/dim, init scans", "bits/dim, held-out healthy", "gap"], rows
    )
    command = "python benchmarks/glow_prior.py " + " ".join(sys.argv[1:])
    md = "\n".join(
        [
            "# Glow prior right after its data-dependent init: init scans vs held-out healthy scans",
            "",
            f"Command: `{command}`  ",
            f"Machine: {cpu_model()}, {os.cpu_count()} CPUs  ",
            f"Load: 1-minute load average {load:.1f} at the start  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
            f"Config: `{args.config}` (model and preprocessing); init on the demo's first training scans, "
            f"evaluated on {len(held_out_images)} healthy validation scans. Dequantisation noise for the "
            "init as in training; the centre of each bin when evaluating.",
            "",
            table,
            "",
            "Lower is better; the gap is how much more surprising an unseen healthy brain is than the init scans.",
            "",
            *reading(data),
            "",
        ]
    )
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    (DOCS_DIR / "glow_prior.md").write_text(md)
    (DOCS_DIR / "glow_prior.json").write_text(json.dumps({"command": command, "rows": data}, indent=2) + "\n")
    print(md)


if __name__ == "__main__":
    main()
