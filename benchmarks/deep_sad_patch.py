"""Deep SVDD / Deep SAD on slices: one embedding per slice (``deep-sad``) vs one per 16 mm cell (``deep-sad-patch``).

Reads two detection benchmarks (``detection.json`` and ``real_data.json`` of ``benchmarks/detection.py``): the one
committed at ``--before`` (the demo's ``deep-svdd-2d`` / ``deep-sad-2d`` were the image-level method) and the one in
``--after`` (a folder, or a git commit: by default 3db3b0f, whose ``docs/benchmarks`` have the patch method and, like
6df562d's, only the ``<map>_q999`` map scores). Both were made by
``make demo`` in a fresh clone and ``detection.py --seeds 1 2`` on it, on the same cohort (same seed and cohort code:
the baselines' rows below must agree exactly, which checks it), so the test scans, the baselines and the real cases
are the same; only the two runs' method differs.

With ``--demo DIR`` it also measures, on that demo: the share of Deep SAD's patch loss that its labelled anomalies
carry (why Deep SAD ≈ Deep SVDD patch-wise), and the patch runs' saved ``patch_dist`` maps by depth below the brain's
edge on the healthy validation scans against the lesions' voxels of the anomalous test scans (why the map needs the
rim). For the second, DIR must hold maps written without a rim: the fresh-clone demo of b8b4c19 (its configs had no
``score.map_erosion_mm``; same weights as today's, training is deterministic).

Usage::

    python benchmarks/deep_sad_patch.py [--before 6df562d] [--after 3db3b0f] [--demo DEMO_OF_B8B4C19]

Writes ``docs/benchmarks/deep_sad_patch.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS_DIR, markdown_table, run_meta  # noqa: E402
from cohort_anatomy import FLAIR_CASES, _auroc_ci, _load, summarise  # noqa: E402
from detection import _f  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = ("deep-svdd-2d", "deep-sad-2d")
BASELINES = ("intensity", "normative")
STRATA = ("kind:focal", "kind:ms", "kind:tumour", "size:small", "size:medium", "size:large")


def _seeds(detection: dict, run: str) -> str:
    entry = detection.get("seeds", {}).get("best_column", {}).get(run)
    if not entry:
        return "–"
    values = entry["auroc"]
    return (
        f"`{entry['column']}`: "
        + ", ".join(f"{v:.3f}" for v in values)
        + f" ({np.mean(values):.3f} ± {np.std(values, ddof=1):.3f})"
    )


def _rho(detection: dict, run: str) -> str:
    rows = [r for r in detection["summary"]["brain_fraction_rho"] if r["run"] == run]
    return ", ".join(f"`{r['column']}` {r['rho']:+.3f}" for r in rows) or "–"


def _ruff(detection: dict) -> dict:
    ruff = detection.get("seeds", {}).get("ruff", {}).get("held_out", {})
    if not ruff:
        return {}
    return {
        "column": detection["seeds"]["ruff"]["column"],
        "per_seed": [round(s["difference"], 3) for s in ruff["per_seed"]],
        "mean": ruff["mean"]["difference"],
        "sd": ruff["sd"]["difference"],
        "pooled_ci": ruff["pooled"]["difference_ci"],
        "verdict": ruff["verdict"],
    }


DEPTH_BINS_MM = (0.0, 4.0, 8.0, 12.0, 16.0, 24.0, float("inf"))


def _depth_bin(lo: float, hi: float) -> str:
    return f"> {lo:g} mm" if hi == float("inf") else f"{lo:g}–{hi:g} mm"


def map_depth_profile(demo: Path, run: str, map_name: str = "patch_dist") -> dict:
    """The run's saved map by depth below the brain's edge (image > 0; depth = Euclidean distance in mm to the
    nearest non-brain voxel): percentiles 50 / 99 / 99.9 over the healthy validation scans' voxels, and the median
    over the lesion voxels of the anomalous test scans, per depth bin. Maps as written (the input grid)."""
    import nibabel as nib
    from mri_anomaly.data import load_datalist
    from scipy import ndimage

    data = load_datalist(demo / "data" / "datalist.json")
    maps = demo / "scores" / run / "maps"
    bins = list(zip(DEPTH_BINS_MM[:-1], DEPTH_BINS_MM[1:], strict=True))
    healthy: list[list[np.ndarray]] = [[] for _ in bins]
    lesion: list[list[np.ndarray]] = [[] for _ in bins]

    def read(item: dict, section: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        stem = Path(item["image"]).name.removesuffix(".nii.gz")
        path = maps / section / f"{stem}_{map_name}.nii.gz"
        if not path.is_file():
            return None
        image = nib.load(item["image"])
        brain = np.asarray(image.dataobj) > 0
        depth = ndimage.distance_transform_edt(brain, sampling=image.header.get_zooms()[:3])
        return np.asarray(nib.load(path).dataobj, dtype=np.float64), brain, depth

    for item in data["validation"]:
        got = read(item, "validation")
        if got is not None:
            values, brain, depth = got
            for k, (lo, hi) in enumerate(bins):
                healthy[k].append(values[brain & (depth > lo) & (depth <= hi)])
    n_lesion = 0
    for item in data["test"]:
        if int(item.get("label") or 0) != 1 or not item.get("mask"):
            continue
        got = read(item, "test")
        if got is not None:
            values, brain, depth = got
            mask = np.asarray(nib.load(item["mask"]).dataobj) > 0
            n_lesion += 1
            for k, (lo, hi) in enumerate(bins):
                lesion[k].append(values[mask & brain & (depth > lo) & (depth <= hi)])
    rows = []
    for k, (lo, hi) in enumerate(bins):
        h = np.concatenate(healthy[k]) if healthy[k] else np.zeros(0)
        les = np.concatenate(lesion[k]) if lesion[k] else np.zeros(0)
        rows.append({
            "depth": _depth_bin(lo, hi),
            "healthy_voxels": int(h.size),
            "healthy_p50": float(np.percentile(h, 50)) if h.size else None,
            "healthy_p99": float(np.percentile(h, 99)) if h.size else None,
            "healthy_p999": float(np.percentile(h, 99.9)) if h.size else None,
            "lesion_voxels": int(les.size),
            "lesion_p50": float(np.percentile(les, 50)) if les.size else None,
        })  # fmt: skip
    return {
        "run": run,
        "map": map_name,
        "n_healthy": len(healthy[0]),
        "n_lesion_scans": n_lesion,
        "rows": rows,
    }


def labelled_share(demo: Path, config_path: Path, n_volumes: int = 40, seed: int = 0) -> dict:
    """How much of Deep SAD's training loss the labelled anomalies carry: the share of ``"train"`` slices that get a
    synthetic lesion (about γ_l; the image-level method's share of the loss) and, for the patch method, the share of
    the cells' total weight that sits on labelled cells (those the lesion touches, weighted as in the loss). Draws
    the items as the loader does (``phase_sample_transform``) over the slices of the first ``n_volumes`` training
    scans."""
    import torch
    from mri_anomaly.data import load_datalist
    from mri_anomaly.training import build_method, load_config
    from mri_anomaly.training.loaders import build_dataset
    from mri_anomaly.training.methods.deep_sad import labelled_cell_weights

    config = load_config(config_path)
    data = load_datalist(demo / "data" / "datalist.json")
    dataset = build_dataset(config, data["training"][:n_volumes])
    method = build_method(config)
    transform = method.phase_sample_transform("train")
    torch.manual_seed(seed)
    floor = 1.0 / method.net.encoder.size_divisor  # as in the loss: a lesion's cell counts at least this much
    labelled = {"brain_fraction": 0.0, "one_sample": 0.0}
    total = {"brain_fraction": 0.0, "one_sample": 0.0}
    n_labelled = 0
    for i in range(len(dataset)):
        item = transform(dataset[i])
        x = torch.as_tensor(item["image"]).unsqueeze(0).float()
        weight = method.net.cell_weights(x)
        touched = torch.zeros_like(weight, dtype=torch.bool)
        if item["semi_target"] == -1:
            n_labelled += 1
            touched = method.net.cell_weights(torch.as_tensor(item["lesion_mask"]).unsqueeze(0).float()) > 0
        # b8b4c19..0167721: the lesion's cells at their brain fraction (at least the floor); now: labelled_cell_weights
        versions = {
            "brain_fraction": torch.where(touched, weight.clamp_min(floor), weight),
            "one_sample": labelled_cell_weights(weight, touched, floor),
        }
        for name, w in versions.items():
            labelled[name] += float(w[touched].sum())
            total[name] += float(w.sum())
    return {
        "config": str(config_path),
        "gamma_l": method.gamma_l,
        "slices": len(dataset),
        "labelled_slices": n_labelled,
        "labelled_slice_share": n_labelled / max(len(dataset), 1),
        "labelled_cell_weight_share_brain_fraction": labelled["brain_fraction"]
        / max(total["brain_fraction"], 1e-12),
        "labelled_cell_weight_share": labelled["one_sample"] / max(total["one_sample"], 1e-12),
    }


def depth_markdown(profile: dict) -> str:
    rows = [[r["depth"], r["healthy_voxels"], _f(r["healthy_p50"]), _f(r["healthy_p99"]), _f(r["healthy_p999"]),
             r["lesion_voxels"], _f(r["lesion_p50"])] for r in profile["rows"]]  # fmt: skip
    return markdown_table(
        ["depth below the brain's edge", "healthy voxels", "healthy median", "healthy 99th pct", "healthy 99.9th pct",
         "lesion voxels", "lesion median"],
        rows,
    )  # fmt: skip


def check_same_test_set(before: dict, after: dict) -> list[str]:
    """The baselines' best volume AUROC must agree exactly (same cohort, same test scans); the mismatches."""
    bad = []
    for run in BASELINES:
        b, a = before["summary"]["best"][run], after["summary"]["best"][run]
        if (b["column"], b["volume_auroc"], b["n"]) != (a["column"], a["volume_auroc"], a["n"]):
            bad.append(
                f"{run}: {b['column']} {b['volume_auroc']} (n {b['n']}) vs {a['column']} {a['volume_auroc']} (n {a['n']})"
            )
    return bad


def tables(before: dict, after: dict, real_before: dict, real_after: dict) -> tuple[str, dict]:
    versions = {
        "image (one embedding per slice)": (before, real_before),
        "patch (one per 16 mm cell)": (after, real_after),
    }
    demo_rows, strata_rows, real_rows, data = [], [], [], {}
    for run in RUNS:
        for name, (detection, real) in versions.items():
            best = detection["summary"]["best"][run]
            base = {b: detection["summary"]["best"][b]["volume_auroc"] for b in BASELINES}
            demo_rows.append([run, name, f"`{best['column']}`", _auroc_ci(best), _seeds(detection, run),
                              _f(best["slice_auroc"]), _f(best.get("voxel_ap")), _rho(detection, run),
                              f"{best['volume_auroc'] - base['intensity']:+.3f} / {best['volume_auroc'] - base['normative']:+.3f}"])  # fmt: skip
            strata = detection["summary"]["strata"][run]
            strata_rows.append(
                [run, name, f"`{strata['column']}`"] + [_f(strata[s]["auroc"]) for s in STRATA]
            )
            summary = summarise(detection, real)[run]
            real_rows.append([run, name] + [_f(summary["real_slice"][c]) for c in FLAIR_CASES]
                             + [_f(summary["real_voxel_ap"][c]) for c in FLAIR_CASES])  # fmt: skip
            data.setdefault(run, {})[name] = {
                "best": best,
                "seeds": detection.get("seeds", {}).get("best_column", {}).get(run),
                "strata": strata,
                "real_slice": summary["real_slice"],
                "real_voxel_ap": summary["real_voxel_ap"],
            }
    for name, (detection, _) in versions.items():
        best = detection["summary"]["best"]
        strata = detection["summary"]["strata"]
        for b in BASELINES:
            strata_rows.append(
                [b, name, f"`{strata[b]['column']}`"] + [_f(strata[b][s]["auroc"]) for s in STRATA]
            )
        data.setdefault("baselines", {})[name] = {b: best[b]["volume_auroc"] for b in BASELINES}
    ruff_rows = []
    for name, (detection, _) in versions.items():
        r = _ruff(detection)
        data.setdefault("ruff", {})[name] = r
        if r:
            ruff_rows.append([name, f"`{r['column']}`", ", ".join(f"{v:+.3f}" for v in r["per_seed"]),
                              f"{r['mean']:+.3f} ± {r['sd']:.3f}", f"[{r['pooled_ci'][0]:+.3f}, {r['pooled_ci'][1]:+.3f}]",
                              r["verdict"]])  # fmt: skip
    n, n_anomalous = (after["summary"]["best"]["intensity"].get(k, 0) for k in ("n", "n_anomalous"))
    md = "\n".join([
        f"## The demo (same test scans: {n - n_anomalous} healthy, {n_anomalous} anomalous)",
        "",
        "Best column = the run's highest volume AUROC at seed 0, with its 95 % bootstrap CI; the same column over "
        "training seeds 0–2; its slice AUROC and voxel AP; Spearman ρ of the slice columns with the slice's brain "
        "fraction on healthy test slices (bound |ρ| ≤ 0.2); the difference to the baselines' best columns.",
        "",
        markdown_table(["run", "embedding", "best column", "volume AUROC", "over seeds 0, 1, 2 (mean ± SD)",
                        "slice AUROC", "voxel AP", "brain-fraction ρ", "− intensity / − normative"], demo_rows),  # fmt: skip
        "",
        "## Volume AUROC per lesion kind and size (best column, seed 0)",
        "",
        markdown_table(["run", "embedding", "column", *STRATA], strata_rows),
        "",
        "## Ruff et al.: Deep SAD − Deep SVDD on the lesion kinds never labelled (MS, tumour), volume AUROC",
        "",
        markdown_table(["embedding", "column", "per seed", "mean ± SD", "pooled 95 % CI", "verdict"], ruff_rows),
        "",
        "## Real FLAIR cases (`../shared/data`): slice AUROC at the demo-chosen column, then the best map's voxel AP",
        "",
        markdown_table(["run", "embedding", *FLAIR_CASES, *[f"AP {c}" for c in FLAIR_CASES]], real_rows),
        "",
    ])  # fmt: skip
    return md, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="6df562d", help="git commit of the image-level benchmark")
    parser.add_argument("--after", default="3db3b0f", help="folder, or git commit, of the patch benchmark")
    parser.add_argument("--demo", type=Path, help="the demo of --after: adds the patch map's depth profile")
    parser.add_argument("--docs", type=Path, default=DOCS_DIR)
    args = parser.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    before, real_before = _load(args.before, from_git=True)
    after, real_after = _load(args.after, from_git=not Path(args.after).is_dir())
    mismatches = check_same_test_set(before, after)
    if mismatches:
        print(
            "the two benchmarks are not on the same test set:\n  " + "\n  ".join(mismatches), file=sys.stderr
        )
        return 1
    body, data = tables(before, after, real_before, real_after)
    if args.demo is not None:
        profiles = [map_depth_profile(args.demo, run) for run in RUNS]
        data["map_depth"] = profiles
        share = labelled_share(args.demo, REPO / "configs" / "deep-sad-2d.yaml")
        r = _ruff(_load("0167721", from_git=True)[0])
        unweighted_ruff = f"{r['mean']:+.3f} ± {r['sd']:.3f}, pooled CI [{r['pooled_ci'][0]:+.3f}, {r['pooled_ci'][1]:+.3f}]"
        data["labelled_share"] = share
        body += "\n" + "\n".join([
            "## The labelled anomalies' share of the patch loss",
            "",
            f"`configs/deep-sad-2d.yaml` (γ_l = {share['gamma_l']}), its `\"train\"` items drawn as the loader draws "
            f"them over the slices of the demo's first 40 training scans: {share['labelled_slices']} of "
            f"{share['slices']} slices get a synthetic lesion ({100 * share['labelled_slice_share']:.1f} %: the "
            "labelled share of the image-level loss, one term per slice). Weighted by brain fraction alone (the "
            f"patch method of b8b4c19 to 0167721: Ruff's difference {unweighted_ruff} in the detection benchmark "
            "committed at 0167721) the cells the lesions touch carried "
            f"**{100 * share['labelled_cell_weight_share_brain_fraction']:.2f} %** of the loss's weight (a lesion "
            "touches a few of a slice's 120 cells), about a tenth of Ruff et al.'s setting, and Deep SAD trained nearly "
            "the same model as Deep SVDD. Since then a lesion's cells together weigh as much as their slice "
            f"(`labelled_cell_weights`): **{100 * share['labelled_cell_weight_share']:.2f} %**.",
            "",
        ])  # fmt: skip
        body += "\n" + "\n".join(
            [
                "## Why the patch map needs the rim: its values by depth below the brain's edge",
                "",
                f"The `patch_dist` maps saved by the runs of `{args.demo}` (input grid, 4 mm; written without a rim): "
                "the healthy validation scans' voxels and the lesion voxels of the anomalous test scans, by Euclidean "
                "depth below the brain's edge. A cell on the edge holds background, and its distance is high in every "
                "scan; with `score.map_erosion_mm: 0` the map's 99.9th percentile was that edge (`patch_dist_q999` "
                "volume AUROC 0.513 for Deep SVDD at seed 0, 0.880 with the 8 mm rim every map config uses).",
                "",
            ]
            + [
                f"**{p['run']}** ({p['n_healthy']} healthy scans, {p['n_lesion_scans']} anomalous):\n\n"
                + depth_markdown(p)
                + "\n"
                for p in profiles
            ]
        )
    meta = run_meta("deep_sad_patch.py", argv, load_start, t0, before=args.before, after=str(args.after))
    md = "\n".join([
        "# Deep SVDD / Deep SAD on slices: one embedding per slice vs one per 16 mm cell",
        "",
        f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Date: {meta['date']}  ",
        f"Image: the detection benchmark committed at `{args.before}` (`method: deep-sad`, channels [16, 32, 64], "
        "one 32-d embedding per slice). Patch: the one in `--after` (`method: deep-sad-patch`, channels [32, 64], a "
        "32-d embedding per 4 × 4-voxel cell, losses weighted by the cell's brain fraction, the slice score their "
        "brain-weighted mean, the map `patch_dist`; as committed with 3a8254d: the fresh-clone demo of dd9dc72 "
        "with its Deep SAD runs, seeds 0–2, retrained at 3a8254d). Same cohort, test scans, steps, γ_l and seeds; "
        "the baselines agree exactly between the two (checked).",
        "",
        body,
    ])  # fmt: skip
    (args.docs / "deep_sad_patch.md").write_text(md)
    (args.docs / "deep_sad_patch.json").write_text(
        json.dumps({"meta": meta, **data}, indent=1, default=float)
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
