"""The latent-norm autoencoder's residual map at several ``residual_tolerance_mm``: same weights, other maps.

The 2D FLAIR autoencoder reconstructs a slice from 32 numbers and draws edges (ventricles, sulci) a voxel or
two off; its positive residual ``max(x − x̂, 0)`` is then as bright along those edges as in a lesion, and how
bright differs between training seeds. ``residual_tolerance_mm`` compares each voxel with the reconstruction's
maximum over a box of that radius instead (:func:`mri_anomaly.training.methods.latent_norm.signed_residual`).
This script rescores the demo's autoencoder runs (seed 0 and the seeded copies of ``detection.py --seeds``) with
the trained weights unchanged and only the tolerance set, on the demo's validation and test scans; for
``--run latent-norm-ae-3d``, which the demo does not train, ``configs/<run>.yaml`` is first trained on the demo's
cohort for each of ``--seeds`` (into ``--out``); so is ``--run latent-norm-ae-2d-multicontrast`` (FLAIR + T1 as
channels), on the cohort ``--data`` names (``mri-anomaly demo-data --contrast flair,t1`` with the demo's seed and
counts: its FLAIR images and test subjects are the demo's, checked). ``--variant NAME=KEY=VALUE;...`` trains
and rescores the run once per set of config overrides (e.g. two learning rates); ``--residuals`` rescores with
``model.residual`` set too; ``--parts MM`` scores each channel's positive and negative residual apart; ``--real``
scores MS patient07 (FLAIR + T1) with the two-contrast run. It reports: volume AUROC of ``residual_top200mm3``
(95 % CI) and its paired difference with ``intensity_top200mm3``, voxel AP, the healthy test scans' median
``residual_top200mm3``, the Spearman correlation of the scans' scores with ``intensity_top200mm3`` (how much the
map ranks scans like thresholding the image does) and each run's final training loss. ``intensity`` is evaluated
in the same run.

Usage::

    python benchmarks/residual_tolerance.py --demo demo-out [--run latent-norm-ae-2d] [--tolerances 0 4 8 12]
        [--seeds 0 1 2] [--data DIR] [--variant NAME=KEY=VALUE;KEY=VALUE ...] [--residuals positive absolute]
        [--parts MM] [--real ../shared/data] [--out DIR] [--docs DIR]

Writes ``docs/benchmarks/residual_tolerance.md`` (``residual_tolerance-3d.md`` for the 3D run,
``residual_tolerance-multicontrast.md`` for the two-contrast one) and ``.json`` with the command, machine, load
and date.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown_table, run_meta, run_with_config, seed_runs, torch_threads, train_steps_run  # noqa: E402
from mri_anomaly.training.methods.base import AnomalyMethod  # noqa: E402

PROFILE = f"_slice_{AnomalyMethod.slice_statistic}"  # a map's slice profile column: <map>{PROFILE}

RUNS = ("latent-norm-ae-2d", "latent-norm-ae-3d", "latent-norm-ae-2d-multicontrast")
DOC_NAMES = {
    "latent-norm-ae-2d": "residual_tolerance",
    "latent-norm-ae-3d": "residual_tolerance-3d",
    "latent-norm-ae-2d-multicontrast": "residual_tolerance-multicontrast",
}
COLUMN = "residual_top200mm3"
BASELINE = "intensity_top200mm3"


def trained_runs(
    demo: Path,
    run: str,
    seeds: list[int],
    work: Path,
    datalist: Path,
    overrides: list[str],
    reuse_demo: bool = True,
) -> dict[str, Path]:
    """``{seed: run dir}`` for each of ``seeds``: the demo's run of that seed when the demo trained it and no
    overrides are asked, else ``configs/<run>.yaml`` with ``overrides`` trained on ``datalist`` with that seed into
    ``work/seed<s>`` (reused when already there). A seed the demo lacks is trained, not dropped: a variant
    compared with others must stand on the same seeds. ``reuse_demo`` False (another cohort's ``datalist``):
    every seed is trained. Training runs on one thread, as the demo and ``detection.py --seeds`` train, so a seed
    trained here is the demo's run of that seed on the same machine, not another draw beside it."""
    found = seed_runs(demo, run) if reuse_demo and not overrides else {}
    out = {}
    for seed in seeds:
        if str(seed) in found:
            out[str(seed)] = found[str(seed)]
            continue
        from mri_anomaly.training.config import load_config

        config = load_config(REPO / "configs" / f"{run}.yaml", [*overrides, f"seed={seed}"])
        steps = int(config["train"]["phases"]["train"]["steps"])
        run_dir = work / f"seed{seed}"
        with torch_threads(1):
            seconds = train_steps_run(config, datalist, run_dir, steps)
        print(f"{run} seed {seed} {' '.join(overrides)}: trained in {seconds:.0f} s", file=sys.stderr)
        out[str(seed)] = run_dir
    return out


def demo_seeds(trained_by_variant: dict[str, dict[str, Path]], work: Path) -> dict[str, list[str]]:
    """``{variant: seeds}`` whose run :func:`trained_runs` took from the demo (any run dir outside ``work``)."""
    return {
        v: [s for s, run_dir in trained.items() if not run_dir.resolve().is_relative_to(work.resolve())]
        for v, trained in trained_by_variant.items()
    }


def _score_patient07(run_dir: Path, data: Path, work: Path, max_voxels: int) -> tuple[dict, dict]:
    """MS patient07 of ``data`` (FLAIR + T1) scored by ``run_dir`` into ``work/scores``: ``(case, scored)``, the
    latter :func:`real_data.score_run`'s."""
    from real_data import score_run

    ms = data / "ms-lesjak2017-mni" / "patient07"
    flair, t1, mask = (
        str((ms / f).resolve()) for f in ("FLAIR.nii.gz", "T1.nii.gz", "lesion_consensus.nii.gz")
    )
    case = {"subject_id": "ms-patient07", "image": flair, "mask": mask, "label": 1}
    work.mkdir(parents=True, exist_ok=True)
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"test": [{**case, "image": [flair, t1]}]}, indent=2))
    return case, score_run(run_dir, [case], datalist, work / "scores", max_voxels)


def real_case(run_dir: Path, data: Path, work: Path, max_voxels: int = 500_000) -> dict:
    """MS patient07 of ``data`` (``../shared/data``: the one real case with both FLAIR and T1) scored by a
    two-contrast run: slice AUROC inside the scan of the ``residual`` map's slice profile (lesion vs lesion-free slices) and the
    ``residual`` map's voxel AP, with the raw FLAIR's voxel AP (the intensity baseline) and chance beside it."""
    from real_data import voxel_scores

    case, scored = _score_patient07(run_dir, data, work, max_voxels)
    voxel = scored["voxel"]["ms-patient07"]["residual"]
    raw = voxel_scores(case, case["image"], max_voxels)
    return {
        "slice_auroc": scored["slice"]["ms-patient07"][f"residual{PROFILE}"]["auroc"],
        "voxel_ap": voxel["ap"],
        "intensity_voxel_ap": raw["ap"],
        "chance_ap": raw["prevalence"],
    }


def real_case_parts(run_dir: Path, data: Path, work: Path, parts: Sequence[str]) -> dict[str, dict]:
    """MS patient07 scored with each part of the residual as its own map (call inside :func:`maps_per_part`, with
    ``run_dir`` calibrated inside it too, so that every part's slice profile is standardised against the healthy
    validation scans at the same position): ``{part: {"slice_auroc", "median_z"}}``, ``median_z`` the median
    robust z of the scan's counted slices (how far the real scan sits from the healthy synthetic ones)."""
    _, scored = _score_patient07(run_dir, data, work, max_voxels=500_000)
    slices = pd.read_csv(work / "scores" / "slice_scores.csv")
    counted = slices[slices["counted"].astype(bool)]
    return {
        part: {
            "slice_auroc": scored["slice"]["ms-patient07"][f"{part}{PROFILE}"]["auroc"],
            "median_z": float(counted[f"{part}{PROFILE}"].median()),
        }
        for part in ("residual", *parts)
    }


PART_SIGNS = {"pos": "positive", "neg": "negative"}


@contextlib.contextmanager
def maps_per_part(contrasts: Sequence[str]):
    """While open, the latent-norm method also returns each channel's positive and negative residual as maps
    (``<contrast>_pos``, ``<contrast>_neg``: the run's tolerance applied) and the channel mean of the positive
    ones (``all_pos``): which part of the residual tells the scans apart."""
    import torch
    from mri_anomaly.training.methods.base import BatchScores
    from mri_anomaly.training.methods.latent_norm import LatentNormMethod, signed_residual

    original_names, original_score = LatentNormMethod.map_names, LatentNormMethod.score
    names = [f"{c}_{s}" for c in contrasts for s in PART_SIGNS]

    @torch.no_grad()
    def score(self, batch):
        out = original_score(self, batch)
        x, target = self._images(batch)  # target: the slice the map is of (the centre one of a 2.5D stack)
        self.net.eval()
        x_hat, _ = self.net(x)
        maps = dict(out.maps)
        for k, contrast in enumerate(contrasts):
            for short, sign in PART_SIGNS.items():
                part = signed_residual(
                    target[:, k : k + 1], x_hat[:, k : k + 1], sign, self.residual_tolerance
                )
                maps[f"{contrast}_{short}"] = part
        maps["all_pos"] = sum(maps[f"{c}_pos"] for c in contrasts) / len(contrasts)
        return BatchScores(scores=out.scores, maps=maps)

    LatentNormMethod.map_names = (*original_names, *names, "all_pos")
    LatentNormMethod.score = score
    try:
        yield [*names, "all_pos"]
    finally:
        LatentNormMethod.map_names, LatentNormMethod.score = original_names, original_score


def part_aurocs(run_dir: Path, datalist: Path, work: Path) -> dict[str, dict]:
    """``{part: {"auroc", "healthy_median"}}`` of each part's ``_top200mm3`` on the test scans (call inside
    :func:`maps_per_part`, with ``run_dir`` calibrated inside it too: the scorer refuses maps without slice norms)."""
    from mri_anomaly.evaluation.metrics import auroc
    from mri_anomaly.scoring.runner import score_datalist

    if not (work / "scores.csv").is_file():
        shutil.rmtree(work, ignore_errors=True)
        score_datalist(run_dir, datalist, work, sections=("test",), save_maps=False, progress=False)
    table = test_table(work)
    y = table["label"].to_numpy(int)
    names = [c[: -len("_top200mm3")] for c in table.columns if c.endswith("_top200mm3") and ":" not in c]
    return {
        n: {
            "auroc": float(auroc(y, table[f"{n}_top200mm3"].to_numpy(float))),
            "healthy_median": float(np.median(table[f"{n}_top200mm3"].to_numpy(float)[y == 0])),
        }
        for n in names
    }


def parts_table(by_variant: dict[str, dict[str, dict]], cell: Callable[[dict], str], several: bool) -> str:
    """A ``--parts`` table: one row per variant (when ``several``) and seed, one ``cell`` per part."""
    names = list(next(iter(next(iter(by_variant.values())).values())))
    rows = [
        [*([variant] if several else []), seed, *(cell(v[n]) for n in names)]
        for variant, by_seed in by_variant.items() for seed, v in by_seed.items()
    ]  # fmt: skip
    return markdown_table([*(["variant"] if several else []), "seed", *(f"`{n}`" for n in names)], rows)


def parts_markdown(
    parts: dict[str, dict[str, dict]], mm: float | None, residual: str, several: bool
) -> list[str]:
    """The ``--parts`` table: each part's test AUROC (healthy median) per variant and seed."""
    if not parts:
        return []
    return [
        "",
        f"Where the signal is ({mm:g} mm): volume AUROC of each part's `_top200mm3` on the test scans, the healthy "
        "test scans' median in brackets. `residual`: the map as configured "
        f"(`{residual}`, the mean over channels); `<contrast>_pos` / `_neg`: one channel's residual above the "
        "reconstruction's maximum / below its minimum; `all_pos`: the channels' `_pos` averaged (the map "
        "`residual: positive` makes).",
        "",
        parts_table(parts, lambda v: f"{v['auroc']:.3f} ({v['healthy_median']:.3f})", several),
    ]


def real_parts_markdown(real_parts: dict[str, dict[str, dict]], mm: float | None, several: bool) -> list[str]:
    """The real case's ``--parts`` table: each part's slice AUROC inside MS patient07 (median z)."""
    if not real_parts:
        return []
    return [
        "",
        f"How far the real case sits from the healthy scans, part by part ({mm:g} mm): MS patient07's slice "
        f"AUROC inside the scan of each part's `{PROFILE}`, standardised per slice position against the healthy "
        "validation scans (the run calibrated with every part as a map), and in brackets the median robust z over "
        "the scan's counted slices: near 0 where the real scan's residual sits in the synthetic healthy range at "
        "that position.",
        "",
        parts_table(real_parts, lambda v: f"{v['slice_auroc']:.3f} ({v['median_z']:+.1f})", several),
    ]


def final_training_loss(run_dir: Path, rows: int = 10) -> float:
    """Mean logged training loss of the run's last ``rows`` log rows (the last 100 steps at ``log_every: 10``):
    a choice that needs no anomalies."""
    log = pd.read_csv(run_dir / "train_log.csv")
    return float(log["loss"].tail(rows).mean())


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME=KEY=VALUE;KEY=VALUE"`` -> ``(NAME, [KEY=VALUE, ...])``; ``"NAME"`` alone: no overrides."""
    name, _, overrides = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--variant needs a name before '=': {text!r}")
    return name, [o.strip() for o in overrides.split(";") if o.strip()]


def run_with_tolerance(
    run_dir: Path, out: Path, tolerance_mm: float, datalist: Path, residual: str | None = None
) -> Path:
    """A copy of ``run_dir`` whose stored config has ``model.residual_tolerance_mm`` (and ``model.residual``,
    when given) set, the weights unchanged, recalibrated on ``datalist``'s healthy validation scans: its slice
    norms and thresholds are those of the map it now makes, not of the one it was trained with (copied norms
    standardised the slice scores against another map's levels). Reused when ``out`` holds that copy already."""
    from mri_anomaly.training import Trainer

    made = {
        "source": str(run_dir.resolve()),
        "source_mtime": (run_dir / "checkpoint.pt").stat().st_mtime,
        "residual_tolerance_mm": float(tolerance_mm),
        "residual": residual,
        "datalist": str(datalist.resolve()),
    }
    marker = out / "recalibrated.json"
    if marker.is_file() and json.loads(marker.read_text()) == made and (out / "thresholds.json").is_file():
        return out

    def edit(config: dict) -> None:
        config["model"]["residual_tolerance_mm"] = float(tolerance_mm)
        if residual is not None:
            config["model"]["residual"] = residual

    config = run_with_config(run_dir, out, edit)
    # resuming a finished run trains no step and scores the validation scans again (``mri-anomaly train --resume``)
    Trainer(config, str(datalist), out, resume=True, progress=False).fit()
    marker.write_text(json.dumps(made))
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


def same_flair_test_scans(demo_datalist: Path, datalist: Path) -> None:
    """Raise unless ``datalist``'s test items are the demo's subjects, labels and (first contrast) FLAIR arrays."""
    import nibabel as nib
    from mri_anomaly.data import load_datalist

    demo_items, items = load_datalist(demo_datalist)["test"], load_datalist(datalist)["test"]

    def key(item: dict) -> tuple:
        return item["subject_id"], int(item["label"])

    if [key(i) for i in demo_items] != [key(i) for i in items]:
        raise SystemExit(f"{datalist}: its test subjects or labels are not the demo's ({demo_datalist})")
    for a, b in zip(demo_items, items):
        first = b["image"][0] if isinstance(b["image"], list) else b["image"]
        if not np.array_equal(nib.load(a["image"]).get_fdata(), nib.load(first).get_fdata()):
            raise SystemExit(f"{first}: not the demo's FLAIR image of {a['subject_id']} ({a['image']})")


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
        "--data", type=Path, default=None, help="cohort folder to train and score on (default DEMO/data)"
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=None,
        help="NAME=KEY=VALUE;KEY=VALUE: config overrides trained as one variant (repeatable)",
    )
    parser.add_argument(
        "--residuals",
        nargs="+",
        choices=("absolute", "positive", "negative"),
        default=None,
        help="model.residual settings to rescore with (default: the config's)",
    )
    parser.add_argument(
        "--real",
        type=Path,
        default=None,
        help="../shared/data: also score MS patient07 (FLAIR + T1) with the two-contrast run",
    )
    parser.add_argument(
        "--parts",
        type=float,
        default=None,
        metavar="MM",
        help="also score each channel's positive and negative residual apart, at this tolerance",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="work folder (default DEMO/residual_tolerance-<run>)"
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    from mri_anomaly.scoring.runner import score_datalist
    from mri_anomaly.training.config import load_config

    load_start, t0 = os.getloadavg()[0], time.time()
    demo = args.demo.resolve()
    work = (args.out or args.demo / f"residual_tolerance-{args.run}").resolve()
    demo_datalist = demo / "data" / "datalist.json"
    datalist = (args.data.resolve() / "datalist.json") if args.data else demo_datalist
    if datalist != demo_datalist:
        same_flair_test_scans(demo_datalist, datalist)
    baseline_dir = demo / "scores" / "intensity"
    baseline = test_table(baseline_dir)
    intensity = measure(baseline_dir, baseline, demo_datalist, BASELINE, work / "evaluation" / "intensity")
    variants = dict(args.variant or [("config", [])])
    residual = load_config(REPO / "configs" / f"{args.run}.yaml")["model"].get("residual", "absolute")
    results: dict[str, dict[str, dict[str, dict]]] = {}
    residuals = args.residuals or [residual]
    settings = [(r, mm) for r in residuals for mm in args.tolerances]

    def key(r: str, mm: float) -> str:
        return f"{mm:g}" if len(residuals) == 1 else f"{r}/{mm:g}"

    trained_by_variant: dict[str, dict[str, Path]] = {}
    for variant, overrides in variants.items():
        trained = trained_by_variant[variant] = trained_runs(
            demo,
            args.run,
            args.seeds,
            work / "trained" / variant,
            datalist,
            overrides,
            datalist == demo_datalist,
        )
        for seed, run_dir in trained.items():
            for r, mm in settings:
                name = f"{variant}-seed{seed}-{mm:g}mm-{r}"
                run = run_with_tolerance(run_dir, work / "runs" / name, mm, datalist, r)
                score_dir = work / "scores" / name
                if not (score_dir / "scores.csv").is_file():
                    score_datalist(
                        run,
                        datalist,
                        score_dir,
                        sections=("validation", "test"),
                        save_maps=True,
                        progress=False,
                    )
                v = measure(score_dir, baseline, datalist, COLUMN, work / "evaluation" / name)
                v["train_loss"] = final_training_loss(run_dir)
                if args.real and args.run.endswith("multicontrast"):
                    v["real"] = real_case(run, args.real, work / "real" / name)
                results.setdefault(variant, {}).setdefault(seed, {})[key(r, mm)] = v
                print(f"{variant} seed {seed}, {r} {mm:g} mm: AUROC {v['auroc']:.3f}", file=sys.stderr)
    parts: dict[str, dict[str, dict]] = {}
    real_parts: dict[str, dict[str, dict]] = {}
    if args.parts is not None:
        config = load_config(REPO / "configs" / f"{args.run}.yaml")
        contrasts = list(config["preprocessing"].get("contrasts") or ["image"])
        for variant, trained in trained_by_variant.items():
            for seed, run_dir in trained.items():
                name = f"{variant}-seed{seed}-{args.parts:g}mm-{residual}"
                with maps_per_part(contrasts) as part_names:
                    # its own copy, calibrated with the parts as maps: every part gets slice norms
                    run = run_with_tolerance(
                        run_dir, work / "runs" / f"{name}-parts", args.parts, datalist, residual
                    )
                    parts.setdefault(variant, {})[seed] = part_aurocs(run, datalist, work / "parts" / name)
                    if args.real and args.run.endswith("multicontrast"):
                        real_parts.setdefault(variant, {})[seed] = real_case_parts(
                            run, args.real, work / "real-parts" / name, part_names
                        )
    meta = run_meta("residual_tolerance.py", argv, load_start, t0, demo=str(args.demo))
    three_d, two = args.run.endswith("3d"), args.run.endswith("multicontrast")
    cohort = "the demo's cohort" if datalist == demo_datalist else f"the cohort `{args.data}`"
    seeds = ", ".join(next(iter(results.values())))
    reused = demo_seeds(trained_by_variant, work)
    from_demo = not any(variants.values()) and all(len(s) == len(args.seeds) for s in reused.values())
    origin = (
        f"The demo's `{args.run}` runs (seed 0 and the seeds of `detection.py --seeds`)"
        if from_demo
        else f"`configs/{args.run}.yaml` trained on {cohort} with seeds {seeds}"
        + (" (the demo does not train it)" if not any(variants.values()) and not any(reused.values()) else "")
        + "".join(
            f" (`{v}` seed{'s' if len(s) > 1 else ''} {', '.join(s)}: the demo's runs)"
            if len(variants) > 1
            else f" (seed{'s' if len(s) > 1 else ''} {', '.join(s)}: the demo's runs)"
            for v, s in reused.items()
            if s
        )  # fmt: skip
    )
    if any(variants.values()):
        origin += (
            ", once per variant ("
            + "; ".join(
                f"`{v}`: " + (", ".join(f"`{o}`" for o in overrides) or "the config as shipped")
                for v, overrides in variants.items()
            )
            + ")"
        )
    hows = {
        "positive": "each voxel's positive residual is taken against the reconstruction's maximum within that "
        "radius",
        "negative": "each voxel's negative residual is taken against the reconstruction's minimum within that "
        "radius",
        "absolute": "each voxel's residual is taken above the reconstruction's maximum and below its minimum "
        "within that radius",
    }
    how = "; ".join(f"`{r}`: {hows[r]}" for r in residuals) if len(residuals) > 1 else hows[residuals[0]]

    def ci(v: dict, key: str, signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        lo, hi = v[key + "_ci"]
        return f"{f.format(v[key])} [{f.format(lo)}, {f.format(hi)}]"

    several = len(results) > 1
    signs = len(residuals) > 1
    real = args.real is not None and args.run.endswith("multicontrast")
    lead = ["variant"] if several else []
    rows, means = [], []
    for variant, by_seed in results.items():
        for seed, by_key in by_seed.items():
            for r, mm in settings:
                v = by_key[key(r, mm)]
                rows.append([*([variant] if several else []), seed, *([f"`{r}`"] if signs else []), f"{mm:g}",
                             ci(v, "auroc"), ci(v, "vs_intensity", True), f"{v['voxel_ap']:.3f}",
                             f"{v['healthy_median']:.3f}", f"{v['spearman_intensity']:.2f}",
                             *([f"{v['real']['slice_auroc']:.3f}", f"{v['real']['voxel_ap']:.3f}"] if real else [])])  # fmt: skip
        for r, mm in settings:
            values = [by_key[key(r, mm)] for by_key in by_seed.values()]
            aurocs = [v["auroc"] for v in values]
            means.append([*([variant] if several else []), *([f"`{r}`"] if signs else []), f"{mm:g}",
                          f"{np.mean(aurocs):.3f} ± {np.std(aurocs, ddof=1) if len(aurocs) > 1 else 0:.3f}",
                          f"{min(aurocs):.3f}", f"{np.mean([v['voxel_ap'] for v in values]):.3f}",
                          f"{np.mean([v['spearman_intensity'] for v in values]):.2f}",
                          ", ".join(f"{v['train_loss']:.2f}" for v in values),
                          *([f"{np.mean([v['real']['slice_auroc'] for v in values]):.3f}"] if real else [])])  # fmt: skip
    residual_col = ["residual"] if signs else []
    real_cols = ["MS patient07 slice AUROC", "MS patient07 voxel AP"] if real else []
    header = [*lead, "seed", *residual_col, "tolerance (mm)", f"`{COLUMN}` AUROC", "− `intensity`", "voxel AP",
              "healthy median", "Spearman with `intensity`", *real_cols]  # fmt: skip
    mean_header = [*lead, *residual_col, "tolerance (mm)", "AUROC mean ± SD", "lowest seed", "voxel AP mean",
                   "Spearman mean", "training loss (last 100 steps) per seed",
                   *(["MS patient07 slice AUROC mean"] if real else [])]  # fmt: skip
    real_text = ""
    if real:
        first = next(iter(next(iter(results.values())).values()))
        base = next(iter(first.values()))["real"]
        real_text = (
            f"MS patient07 (`{args.real}`, the one real case with FLAIR and T1, never used for training or "
            f"choices): slice AUROC inside the scan of `residual{PROFILE}` (lesion vs lesion-free counted "
            "slices) and the `residual` map's voxel AP in the FLAIR's space; the raw FLAIR as the map reaches "
            f"voxel AP {base['intensity_voxel_ap']:.3f}, chance (the lesion fraction of the brain) "
            f"{base['chance_ap']:.4f}."
        )
    n = intensity["n"]
    kind = "2D, FLAIR + T1" if args.run.endswith("multicontrast") else ("3D" if three_d else "2D")
    md = "\n".join([
        f"# Latent-norm autoencoder ({kind}): the residual map's tolerance",
        "",
        f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Load: {meta['load']}  ",
        f"Date: {meta['date']}; {meta['seconds']:.0f} s  ",
        f"Scans: the {n - intensity['n_anomalous']} healthy and {intensity['n_anomalous']} anomalous test scans "
        f"of `{args.demo}`" + ("" if datalist == demo_datalist else
                               f" (in `{args.data}`: the same subjects and FLAIR arrays, checked)")
        + "; thresholds and voxel AP as `mri-anomaly evaluate` computes them.",
        "",
        f"{origin}, their trained weights unchanged, rescored with `model.residual_tolerance_mm`{' and `model.residual`' if len(residuals) > 1 else ''} set: {how} "
        f"{'in the volume' if three_d else 'in the slice'}{', the map the mean over the channels' if two else ''} (0: voxel by voxel, the map "
        "before the option). `− intensity`: paired AUROC difference with `intensity_top200mm3` on the same "
        "scans (95 % bootstrap CI). `healthy median`: the healthy test scans' median score. `Spearman with "
        "intensity`: rank correlation of all test scans' scores with `intensity_top200mm3`.",
        "",
        markdown_table(header, rows),
        "",
        *([real_text, ""] if real_text else []),
        f"`intensity` (the demo's run), evaluated here: AUROC {ci(intensity, 'auroc')}, voxel AP "
        f"{intensity['voxel_ap']:.3f}.",
        "",
        "Over seeds:",
        "",
        markdown_table(mean_header, means),
        *parts_markdown(parts, args.parts, residual, several),
        *real_parts_markdown(real_parts, args.parts, several),
        "",
    ])  # fmt: skip
    args.docs.mkdir(parents=True, exist_ok=True)
    name = DOC_NAMES[args.run]
    (args.docs / f"{name}.md").write_text(md)
    flat = results if several else next(iter(results.values()))
    (args.docs / f"{name}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "intensity": intensity,
                "results": flat,
                **({"parts": parts} if parts else {}),
                **({"real_parts": real_parts} if real_parts else {}),
            },
            indent=2,
        )
        + "\n"  # fmt: skip
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
