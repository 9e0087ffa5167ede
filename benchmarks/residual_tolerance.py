"""The latent-norm autoencoder's residual map at several ``residual_tolerance_mm``: same weights, other maps.

The 2D FLAIR autoencoder reconstructs a slice from 32 numbers and draws edges (ventricles, sulci) a voxel or
two off; its positive residual ``max(x − x̂, 0)`` is then as bright along those edges as in a lesion, and how
bright differs between training seeds. ``residual_tolerance_mm`` compares each voxel with the reconstruction's
maximum over a box of that radius instead (:func:`mri_anomaly.training.methods.latent_norm.signed_residual`).
This script rescores the demo's autoencoder runs (seed 0 and the seeded copies of ``detection.py --seeds``) with
the trained weights unchanged and only the tolerance set, on the demo's validation and test scans; for
``--run latent-norm-ae-3d``, which the demo does not train, ``configs/<run>.yaml`` is first trained on the demo's
cohort for each of ``--seeds`` (into ``--out``). It reports: volume AUROC of ``residual_top200mm3`` (95 % CI) and its paired difference with ``intensity_top200mm3``, voxel
AP, the healthy test scans' median ``residual_top200mm3``, and the Spearman correlation of the scans' scores
with ``intensity_top200mm3`` (how much the map ranks scans like thresholding the image does). ``intensity``
is evaluated in the same run.

Usage::

    python benchmarks/residual_tolerance.py --demo demo-out [--run latent-norm-ae-2d] [--tolerances 0 4 8 12]
        [--seeds 0 1 2] [--out DIR] [--docs DIR]

Writes ``docs/benchmarks/residual_tolerance.md`` (``residual_tolerance-3d.md`` for the 3D run) and ``.json`` with
the command, machine, load and date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown_table, run_meta, seed_runs, train_steps_run  # noqa: E402

RUNS = ("latent-norm-ae-2d", "latent-norm-ae-3d")
COLUMN = "residual_top200mm3"
BASELINE = "intensity_top200mm3"


def trained_runs(demo: Path, run: str, seeds: list[int], work: Path) -> dict[str, Path]:
    """``{seed: run dir}``: the demo's runs of ``run`` when it trained them, else ``configs/<run>.yaml`` trained
    on the demo's cohort with each seed into ``work/trained/seed<s>`` (reused when already there)."""
    found = seed_runs(demo, run)
    if found:
        return found
    from mri_anomaly.training.config import load_config

    out = {}
    for seed in seeds:
        config = load_config(REPO / "configs" / f"{run}.yaml", [f"seed={seed}"])
        steps = int(config["train"]["phases"]["train"]["steps"])
        run_dir = work / "trained" / f"seed{seed}"
        seconds = train_steps_run(config, demo / "data" / "datalist.json", run_dir, steps)
        print(f"{run} seed {seed}: trained in {seconds:.0f} s", file=sys.stderr)
        out[str(seed)] = run_dir
    return out


def run_with_tolerance(run_dir: Path, out: Path, tolerance_mm: float) -> Path:
    """A copy of ``run_dir`` whose stored config has ``model.residual_tolerance_mm`` set (weights unchanged)."""
    import torch
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    for name in ("thresholds.json", "train_log.csv"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    config = yaml.safe_load(checkpoint["config"])
    config["model"]["residual_tolerance_mm"] = float(tolerance_mm)
    checkpoint["config"] = yaml.safe_dump(config, sort_keys=False)
    torch.save(checkpoint, out / "checkpoint.pt")
    (out / "config.yaml").write_text(checkpoint["config"])
    return out


def test_table(score_dir: Path) -> pd.DataFrame:
    """The score directory's ``test`` rows, indexed by subject."""
    table = pd.read_csv(score_dir / "scores.csv", dtype={"subject_id": str})
    return table[table["section"] == "test"].set_index("subject_id")


def voxel_ap(score_dir: Path, datalist: Path, out: Path) -> float:
    """Voxel AP of the score directory's single map, as ``mri-anomaly evaluate`` computes it."""
    from mri_anomaly.evaluation.evaluate import evaluate

    metrics = evaluate(
        score_dir, datalist, out, n_bootstrap=0, n_bootstrap_voxel=0, report=False, log=lambda _: None
    )
    (name,) = metrics["voxel"]
    return float(metrics["voxel"][name]["ap"])


def measure(score_dir: Path, baseline: pd.DataFrame, datalist: Path, column: str, evaluation: Path) -> dict:
    """``column``'s volume AUROC, its paired difference with ``intensity``, the map's voxel AP (evaluated into
    ``evaluation``), the healthy median and the rank correlation with ``intensity``, on the test scans."""
    from mri_anomaly.evaluation.bootstrap import auroc_with_ci
    from scipy.stats import spearmanr

    table = test_table(score_dir)
    y = table["label"].to_numpy(int)
    score = table[column].to_numpy(float)
    reference = baseline.loc[table.index, BASELINE].to_numpy(float)
    single = auroc_with_ci(y, score)
    paired = auroc_with_ci(y, score, paired_with=reference)
    return {
        "auroc": single["auroc"],
        "auroc_ci": single["auroc_ci"],
        "vs_intensity": paired["auroc_difference"],
        "vs_intensity_ci": paired["auroc_difference_ci"],
        "voxel_ap": voxel_ap(score_dir, datalist, evaluation),
        "healthy_median": float(np.median(score[y == 0])),
        "spearman_intensity": float(spearmanr(score, reference)[0]),
        "n": int(len(y)),
        "n_anomalous": int(y.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo", type=Path, required=True, help="a finished demo folder (with seeds/ if any)"
    )
    parser.add_argument("--run", choices=RUNS, default=RUNS[0], help="the autoencoder run")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 4.0, 8.0, 12.0], help="mm")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to train when the demo has no such run"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="work folder (default DEMO/residual_tolerance-<run>)"
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    from mri_anomaly.scoring.runner import score_datalist

    load_start, t0 = os.getloadavg()[0], time.time()
    demo = args.demo.resolve()
    work = (args.out or args.demo / f"residual_tolerance-{args.run}").resolve()
    datalist = demo / "data" / "datalist.json"
    baseline_dir = demo / "scores" / "intensity"
    baseline = test_table(baseline_dir)
    intensity = measure(baseline_dir, baseline, datalist, BASELINE, work / "evaluation" / "intensity")
    from_demo = bool(seed_runs(demo, args.run))
    results = {}
    for seed, run_dir in trained_runs(demo, args.run, args.seeds, work).items():
        for mm in args.tolerances:
            name = f"seed{seed}-{mm:g}mm"
            run = run_with_tolerance(run_dir, work / "runs" / name, mm)
            score_dir = work / "scores" / name
            if not (score_dir / "scores.csv").is_file():
                score_datalist(
                    run, datalist, score_dir, sections=("validation", "test"), save_maps=True, progress=False
                )
            results.setdefault(seed, {})[f"{mm:g}"] = measure(
                score_dir, baseline, datalist, COLUMN, work / "evaluation" / name
            )
            print(f"seed {seed}, {mm:g} mm: AUROC {results[seed][f'{mm:g}']['auroc']:.3f}", file=sys.stderr)
    meta = run_meta("residual_tolerance.py", argv, load_start, t0, demo=str(args.demo))
    three_d = args.run.endswith("3d")
    origin = (
        f"`configs/{args.run}.yaml` trained on the demo's cohort with seeds {', '.join(results)} (the demo does not "
        "train it)"
        if not from_demo
        else f"The demo's `{args.run}` runs (seed 0 and the seeds of `detection.py --seeds`)"
    )

    def ci(v: dict, key: str, signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        lo, hi = v[key + "_ci"]
        return f"{f.format(v[key])} [{f.format(lo)}, {f.format(hi)}]"

    rows = []
    for seed, by_mm in results.items():
        for mm, v in by_mm.items():
            rows.append([seed, mm, ci(v, "auroc"), ci(v, "vs_intensity", True), f"{v['voxel_ap']:.3f}",
                         f"{v['healthy_median']:.3f}", f"{v['spearman_intensity']:.2f}"])  # fmt: skip
    header = ["seed", "tolerance (mm)", f"`{COLUMN}` AUROC", "− `intensity`", "voxel AP",
              "healthy median", "Spearman with `intensity`"]  # fmt: skip
    means = []
    for mm in (f"{m:g}" for m in args.tolerances):
        values = [by_mm[mm] for by_mm in results.values()]
        aurocs = [v["auroc"] for v in values]
        means.append([mm, f"{np.mean(aurocs):.3f} ± {np.std(aurocs, ddof=1) if len(aurocs) > 1 else 0:.3f}",
                      f"{min(aurocs):.3f}", f"{np.mean([v['voxel_ap'] for v in values]):.3f}",
                      f"{np.mean([v['spearman_intensity'] for v in values]):.2f}"])  # fmt: skip
    n = intensity["n"]
    md = "\n".join([
        f"# Latent-norm autoencoder ({'3D' if three_d else '2D'}): the residual map's tolerance",
        "",
        f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Load: {meta['load']}  ",
        f"Date: {meta['date']}; {meta['seconds']:.0f} s  ",
        f"Scans: the {n - intensity['n_anomalous']} healthy and {intensity['n_anomalous']} anomalous test scans "
        f"of `{args.demo}`; thresholds and voxel AP as `mri-anomaly evaluate` computes them.",
        "",
        f"{origin}, their trained weights unchanged, rescored with `model.residual_tolerance_mm` set: each "
        "voxel's positive residual is taken against the reconstruction's maximum within that radius "
        f"{'in the volume' if three_d else 'in the slice'} (0: voxel by voxel, the map "
        "before the option). `− intensity`: paired AUROC difference with `intensity_top200mm3` on the same "
        "scans (95 % bootstrap CI). `healthy median`: the healthy test scans' median score. `Spearman with "
        "intensity`: rank correlation of all test scans' scores with `intensity_top200mm3`.",
        "",
        markdown_table(header, rows),
        "",
        f"`intensity` in the same run: AUROC {ci(intensity, 'auroc')}, voxel AP {intensity['voxel_ap']:.3f}.",
        "",
        "Over seeds:",
        "",
        markdown_table(["tolerance (mm)", "AUROC mean ± SD", "lowest seed", "voxel AP mean",
                        "Spearman mean"], means),  # fmt: skip
        "",
    ])  # fmt: skip
    args.docs.mkdir(parents=True, exist_ok=True)
    name = "residual_tolerance-3d" if three_d else "residual_tolerance"
    (args.docs / f"{name}.md").write_text(md)
    (args.docs / f"{name}.json").write_text(
        json.dumps({"meta": meta, "intensity": intensity, "results": results}, indent=2) + "\n"
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
