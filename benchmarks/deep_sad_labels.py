"""Do a few labelled anomalies help? Deep SVDD (γ_l = 0) vs Deep SAD (γ_l > 0) on the demo cohort.

Reproduces the question of Ruff et al. (ICLR 2020, Table 1, scenario (i)) on our synthetic MRI cohort:
AUROC of the one-class model and of Deep SAD with a fraction γ_l of labelled anomalies, mean ± std over
seeds, slice-wise and volume-wise.

* Data: ``mri_anomaly.data.make_demo_cohort`` (seed 0 by default; 24 healthy training volumes, test = 8
  healthy + 12 anomalous volumes with MS, tumour and focal lesions), preprocessed as in
  ``configs/deep-sad-2d.yaml`` (4 mm, 40 × 48 × 40); models are 2D (axial slices).
* Labelled anomalies: γ_l = the expected fraction of each training batch replaced by a healthy slice with a
  synthetic lesion (``RandLesion``, focal or tumour, new at every step; each slice with probability γ_l, in
  the DataLoader workers) marked ``semi_target = −1``
  (see :mod:`mri_anomaly.training.methods.deep_sad`). The test set's MS lesions are a kind never labelled.
* Training: the project's ``Trainer`` on the config above (``pretrain`` then ``train`` phases), with the
  steps given on the command line; seed s sets the model initialisation, data order and lesions.
* Scoring: ``score_datalist`` on the ``test`` section. Slice-wise AUROC over the brain slices (brain fraction
  ≥ 0.1) of all test volumes, a slice being positive when the lesion mask has voxels in it; volume-wise
  AUROC with the **volume score = mean of its brain slices' scores** (column ``deep_sad_dist_mean``).
  AUROC from ``sklearn.metrics.roc_auc_score``.

Run: ``python benchmarks/deep_sad_labels.py`` (writes ``docs/benchmarks/deep_sad_labels.md`` and ``.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]


def _auroc(labels: list[int], scores: list[float]) -> float:
    return float(roc_auc_score(labels, scores))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _lesion_kinds(cohort: Path) -> dict[str, str]:
    """subject_id -> lesion kind ("" for healthy) from the demo cohort's subjects.csv."""
    path = cohort / "subjects.csv"
    return {r["subject_id"]: r["lesion_kind"] for r in _read_csv(path)} if path.is_file() else {}


def run_one(
    config: dict,
    datalist: Path,
    work: Path,
    gamma_l: float,
    seed: int,
    kinds: dict[str, str],
    reuse: bool = False,
) -> dict:
    """Train one model (or, with ``reuse``, re-read a finished run) and return its test AUROCs and timings."""
    from mri_anomaly.scoring.runner import score_datalist
    from mri_anomaly.training import Trainer

    name = f"gamma{gamma_l:g}_seed{seed}"
    cfg = json.loads(json.dumps(config))
    cfg["seed"] = seed
    cfg["model"]["gamma_l"] = gamma_l
    record = work / name / "train.json"
    if reuse and record.is_file() and (work / name / "scores" / "scores.csv").is_file():
        train = json.loads(record.read_text())  # re-analysis of a finished run: no training, no scoring
    else:
        start = time.time()
        result = Trainer(cfg, datalist, work / name / "run", progress=False).fit()
        train = {"seconds": round(time.time() - start, 1), "last_loss": result.last_loss}
        score_datalist(
            work / name / "run",
            datalist,
            work / name / "scores",
            sections=("test",),
            save_maps=False,
            progress=False,
        )
        record.write_text(json.dumps(train))
    volumes = _read_csv(work / name / "scores" / "scores.csv")
    slices = [r for r in _read_csv(work / name / "scores" / "slice_scores.csv") if r["counted"] == "1"]
    labels = {r["subject_id"]: int(r["label"]) for r in volumes}
    # Healthy test volumes have no mask file: their slices are negatives.
    slice_labels = [int(r["slice_label"]) if r["slice_label"] != "" else 0 for r in slices]
    if any(r["slice_label"] == "" and labels[r["subject_id"]] == 1 for r in slices):
        raise RuntimeError("an anomalous test volume has no mask: slice labels unknown")
    per_kind = {}
    for kind in sorted({k for k in kinds.values() if k}):
        rows = [(y, r) for y, r in zip(slice_labels, slices) if kinds.get(r["subject_id"], "") in ("", kind)]
        if any(y for y, _ in rows):
            per_kind[kind] = _auroc([y for y, _ in rows], [float(r["deep_sad_dist"]) for _, r in rows])
    healthy = [r for r in slices if labels[r["subject_id"]] == 0]
    return {
        "gamma_l": gamma_l,
        # Control for the slice-size shortcut: lesions sit in slices with more brain.
        "healthy_slices_spearman_score_vs_brain_fraction": float(
            spearmanr(
                [float(r["deep_sad_dist"]) for r in healthy], [float(r["brain_fraction"]) for r in healthy]
            )[0]
        ),
        "slice_auroc_of_brain_fraction_alone": _auroc(
            slice_labels, [float(r["brain_fraction"]) for r in slices]
        ),
        "seed": seed,
        "volume_auroc": _auroc(
            [int(r["label"]) for r in volumes], [float(r["deep_sad_dist_mean"]) for r in volumes]
        ),
        "slice_auroc": _auroc(slice_labels, [float(r["deep_sad_dist"]) for r in slices]),
        "slice_auroc_by_kind": per_kind,
        "n_volumes": len(volumes),
        "n_anomalous_volumes": sum(labels.values()),
        "n_slices": len(slices),
        "n_lesion_slices": sum(slice_labels),
        "last_loss": train["last_loss"],
        "train_seconds": train["seconds"],
    }


def _without_reading(args: list[str]) -> list[str]:
    """The command-line arguments without ``--reading TEXT`` (the text goes into its own section)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--reading":
            skip = True
        elif not a.startswith("--reading="):
            out.append(a)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_tables(results: list[dict], meta: dict, out_dir: Path) -> None:
    gammas = sorted({r["gamma_l"] for r in results})
    summary = []
    for g in gammas:
        rows = [r for r in results if r["gamma_l"] == g]
        s_mean, s_std = _mean_std([r["slice_auroc"] for r in rows])
        v_mean, v_std = _mean_std([r["volume_auroc"] for r in rows])
        by_kind = {
            k: _mean_std([r["slice_auroc_by_kind"][k] for r in rows]) for k in rows[0]["slice_auroc_by_kind"]
        }
        rho = _mean_std([r["healthy_slices_spearman_score_vs_brain_fraction"] for r in rows])
        summary.append(
            {
                "gamma_l": g,
                "slice_auroc_by_kind": by_kind,
                "spearman_score_vs_brain_fraction": rho,
                "slice_auroc_mean": s_mean,
                "slice_auroc_std": s_std,
                "volume_auroc_mean": v_mean,
                "volume_auroc_std": v_std,
                "seeds": [r["seed"] for r in rows],
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "deep_sad_labels.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=2) + "\n"
    )
    first = results[0]
    kind_names = sorted(summary[0]["slice_auroc_by_kind"])
    lines = [
        "# Deep SVDD vs Deep SAD: does labelling a few anomalies help?",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['device']}, {meta['threads']} torch thread(s);"
        f" training time summed over the {len(results)} runs: {sum(r['train_seconds'] for r in results):.0f} s,"
        " on a CPU shared with other jobs; `--reuse` re-reads finished runs without retraining).",
        "",
        f"Demo cohort (seed {meta['cohort_seed']}): {first['n_volumes']} test volumes ({first['n_anomalous_volumes']} "
        f"anomalous: MS, tumour, focal), {first['n_slices']} brain slices ({first['n_lesion_slices']} with lesion). "
        f"2D model on axial slices, config `{meta['config']}` with {meta['pretrain_steps']} pretraining and "
        f"{meta['train_steps']} training steps (batch {meta['batch_size']}, Adam lr {meta['pretrain_lr']:g} / "
        f"{meta['train_lr']:g}).",
        "",
        "γ_l = expected fraction of every training batch that is a healthy slice with a synthetic lesion "
        "(RandLesion: focal or tumour, new at each step) labelled `semi_target = -1`; γ_l = 0 is Deep SVDD. "
        "**Volume score = mean of the volume's brain-slice scores** (`deep_sad_dist_mean`). "
        f"AUROC (`sklearn.metrics.roc_auc_score`), mean ± std over seeds {summary[0]['seeds']}.",
        "",
        "| method | γ_l | slice AUROC | volume AUROC |"
        + "".join(f" slice AUROC, {k} only |" for k in kind_names)
        + " ρ(score, brain fraction), healthy slices |",
        "|---|---|---|---|" + "---|" * len(kind_names) + "---|",
    ]
    for s in summary:
        method = "Deep SVDD" if s["gamma_l"] == 0 else "Deep SAD"
        lines.append(
            f"| {method} | {s['gamma_l']:g} | {s['slice_auroc_mean']:.3f} ± {s['slice_auroc_std']:.3f} | "
            f"{s['volume_auroc_mean']:.3f} ± {s['volume_auroc_std']:.3f} |"
            + "".join(
                f" {s['slice_auroc_by_kind'][k][0]:.3f} ± {s['slice_auroc_by_kind'][k][1]:.3f} |"
                for k in kind_names
            )
            + f" {s['spearman_score_vs_brain_fraction'][0]:+.2f} ± {s['spearman_score_vs_brain_fraction'][1]:.2f} |"
        )
    lines += [
        "",
        "Per-kind columns: slices of healthy test volumes and of the volumes with that lesion kind "
        "(MS patterns are never among the labelled synthetic lesions).",
        "",
        "Control: lesion slices have more brain than the average slice, so the slice's brain fraction "
        f"*alone* scores slice AUROC {first['slice_auroc_of_brain_fraction_alone']:.3f}; the last column is "
        "the Spearman correlation between a model's score and the brain fraction on healthy test slices "
        "(near ±1: the score mostly measures slice size, not lesions).",
    ]
    lines += [
        "",
        "Per run:",
        "",
        "| γ_l | seed | slice AUROC | volume AUROC | final loss | train s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['gamma_l']:g} | {r['seed']} | {r['slice_auroc']:.3f} | {r['volume_auroc']:.3f} | "
            f"{r['last_loss']:.4g} | {r['train_seconds']:.0f} |"
        )
    if meta.get("reading"):
        lines += ["", "## Reading", "", meta["reading"]]
    lines.append("")
    (out_dir / "deep_sad_labels.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cohort", type=Path, default=None, help="demo cohort folder (made with seed 0 if absent)"
    )
    parser.add_argument("--cohort-seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "deep-sad-2d.yaml")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.01, 0.05, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument(
        "--train-lr", type=float, default=1e-3, help="the config's 1e-4 barely moves φ in a few hundred steps"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for these small nets)"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--work", type=Path, default=None, help="where runs go (default: a temporary folder)")
    parser.add_argument(
        "--reuse", action="store_true", help="re-analyse finished runs in --work instead of retraining"
    )
    parser.add_argument("--reading", default=None, help="a sentence of interpretation for the markdown")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from mri_anomaly.data import make_demo_cohort
    from mri_anomaly.training.config import load_config

    work = args.work or Path(tempfile.mkdtemp(prefix="deep_sad_labels_"))
    cohort = args.cohort or work / "cohort"
    datalist = cohort / "datalist.json"
    if not datalist.is_file():
        make_demo_cohort(cohort, seed=args.cohort_seed)
    config = load_config(args.config)
    config["train"]["phases"]["pretrain"]["steps"] = args.pretrain_steps
    config["train"]["phases"]["train"]["steps"] = args.train_steps
    config["train"]["phases"]["pretrain"]["lr"] = args.pretrain_lr
    config["train"]["phases"]["train"]["lr"] = args.train_lr
    kinds = _lesion_kinds(cohort)

    start = time.time()
    results = []
    for seed in args.seeds:
        for gamma_l in args.gammas:
            r = run_one(config, datalist, work, gamma_l, seed, kinds, reuse=args.reuse)
            print(
                f"gamma_l={gamma_l:g} seed={seed}: slice AUROC {r['slice_auroc']:.3f}, volume AUROC "
                f"{r['volume_auroc']:.3f} ({r['train_seconds']:.0f} s)",
                flush=True,
            )
            results.append(r)
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
    )
    meta = {
        "command": "python benchmarks/deep_sad_labels.py "
        + " ".join(_without_reading(argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device,
        "threads": args.threads,
        "torch": torch.__version__,
        "cohort_seed": args.cohort_seed,
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "pretrain_steps": args.pretrain_steps,
        "train_steps": args.train_steps,
        "pretrain_lr": args.pretrain_lr,
        "train_lr": args.train_lr,
        "batch_size": config["train"]["batch_size"],
        "total_seconds": time.time() - start,
    }
    if args.reading:
        meta["reading"] = args.reading
    write_tables(results, meta, args.out_dir)
    print(f"wrote {args.out_dir / 'deep_sad_labels.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
