"""Does a per-voxel healthy norm lift the maps? Each saved map calibrated against the healthy validation maps
at the same grid position.

The slice scores are standardised per slice position (``mri_anomaly.scoring.slice_norms``); the maps themselves
are not. A learned map's healthy range follows the tissue edges (``lesion_conspicuity.md``), and a faint lesion
in deep white matter moves its map less than healthy places differ (``deep_sad_transfer.md``: Deep SVDD's MS
lesion cells sit nearer its centre than healthy cells). A norm per voxel would take out what is typical *there*,
as the ``normative`` baseline does for the image itself. This script measures it on a finished demo's saved maps
(``score.save_maps``), with no retraining: for every map run (and its seeded copies ``DEMO/seeds/<s>``), the
healthy validation maps give each voxel of the image grid a median ``m`` and a scale
``s = max(1.4826 MAD, f x the median scale)`` (``f`` in ``--floors``, default 0.1, 0.5, 1) over the scans whose scored region holds that voxel (positions
held by fewer than ``--min-scans`` scans take the pooled median and scale). Each test map is then scored, as the
runs score it, by the mean of its ``top_voxels`` highest voxels in its region (the run's brain minus its rim):

- ``raw``: the map itself (equals the run's ``<map>_top200mm3``; the doc reports the largest difference),
- ``minus_median``: ``map - m``,
- ``z@<f>``: ``(map - m) / s`` (a floor of 1 divides only where a voxel varies more than the median one).

Usage::

    python benchmarks/voxel_norms.py --demo demo-out [--floors 0.1 0.5 1] [--docs docs/benchmarks]

Writes ``docs/benchmarks/voxel_norms.md`` and ``.json`` with the command, machine, load and date.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import demo_test_items, markdown_table, run_meta, seed_runs  # noqa: E402
from mri_anomaly.evaluation.bootstrap import auroc_with_ci  # noqa: E402
from mri_anomaly.scoring.maps import MAP_TOP_VOLUME, erosion_voxels, map_region, top_voxels  # noqa: E402
from mri_anomaly.scoring.slice_norms import MAD_TO_SD  # noqa: E402

MAP_RUNS = {
    "intensity": ("intensity",),
    "normative": ("abs_z",),
    "glow2d-ratio": ("nll", "llr"),
    "glow3d-ratio": ("nll", "llr"),
    "deep-svdd-2d": ("patch_dist",),
    "deep-sad-2d": ("patch_dist",),
    "latent-norm-ae-2d": ("residual",),
}
FLOORS = (0.1, 0.5, 1.0)
KINDS = ("focal", "ms", "tumour")


def voxel_norms(
    maps: np.ndarray, regions: np.ndarray, min_scans: int = 10, floor_fractions: Sequence[float] = (0.1,)
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-voxel robust centre and scales of healthy ``maps`` (N, *grid) over the scans whose ``regions``
    (N, *grid) bool hold the voxel.

    Returns ``(center, scales)``, each array of shape ``grid``: the median, and per floor fraction ``f``
    ``max(1.4826 MAD, f x`` the median of the positive MADs``)``; positions held by fewer than ``min_scans``
    scans take the median of all held values and the median scale.
    """
    held = np.where(regions, maps, np.nan).astype(np.float64)
    count = regions.sum(axis=0)
    enough = count >= min_scans
    center = np.full(maps.shape[1:], np.nan)
    mad = np.full(maps.shape[1:], np.nan)
    center[enough] = np.nanmedian(held[:, enough], axis=0)
    mad[enough] = MAD_TO_SD * np.nanmedian(np.abs(held[:, enough] - center[enough]), axis=0)
    positive = mad[enough & (mad > 0)]
    pooled_center = float(np.nanmedian(held)) if regions.any() else 0.0
    scales = []
    for f in floor_fractions:
        floor = f * float(np.median(positive)) if positive.size else 1.0
        scale = np.maximum(mad, max(floor, 1e-12))
        pooled_scale = float(np.median(scale[enough])) if enough.any() else 1.0
        scales.append(np.where(enough, scale, pooled_scale))
    return np.where(enough, center, pooled_center), scales


def top_mean(volume_map: np.ndarray, region: np.ndarray, k: int) -> float:
    """Mean of the ``k`` highest values of ``volume_map`` inside ``region`` (all of them when fewer)."""
    values = np.sort(volume_map[region].astype(np.float64))
    return float(values[-k:].mean()) if values.size else float("nan")


def z_column(floor_fraction: float) -> str:
    return f"z@{floor_fraction:g}"


def calibrated_scores(
    maps: np.ndarray, regions: np.ndarray, center: np.ndarray, scales: Mapping[str, np.ndarray], k: int
) -> dict[str, np.ndarray]:
    """``{column: (N,) scores}`` of each map (N, *grid) in its region: ``raw``, ``minus_median`` and one z
    column per entry of ``scales`` (``{column: scale}``)."""
    out = {c: np.empty(len(maps)) for c in ("raw", "minus_median", *scales)}
    for i, (m, r) in enumerate(zip(maps, regions, strict=True)):
        out["raw"][i] = top_mean(m, r, k)
        out["minus_median"][i] = top_mean(m - center, r, k)
        for column, scale in scales.items():
            out[column][i] = top_mean((m - center) / scale, r, k)
    return out


def load_section(score_dir: Path, section: str, name: str, erosion, image_cache: dict) -> tuple:
    """Maps (N, *grid), regions (N, *grid) bool, labels (N,) and the run's scores.csv rows of ``section``."""
    with open(score_dir / "scores.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["section"] == section]
    maps, regions = [], []
    for r in rows:
        maps.append(
            nib.load(score_dir / "maps" / section / f"{r['subject_id']}_{name}.nii.gz").get_fdata(
                dtype=np.float32
            )
        )
        key = (r["image"], tuple(erosion))
        if key not in image_cache:
            image = torch.from_numpy(nib.load(r["image"]).get_fdata(dtype=np.float32))
            image = image[None] if image.ndim == 3 else image.movedim(-1, 0)
            image_cache[key] = map_region(image, erosion)[0].numpy()
        regions.append(image_cache[key])
    return np.stack(maps), np.stack(regions), np.array([int(r["label"]) for r in rows]), rows


def kind_aurocs(labels: np.ndarray, kinds: list[str], scores: np.ndarray) -> dict[str, float]:
    """``{kind: AUROC}`` of each lesion kind's anomalous scans against all healthy scans."""
    out = {}
    for kind in KINDS:
        keep = (labels == 0) | np.array([k == kind for k in kinds])
        if 0 < labels[keep].sum() < keep.sum():
            out[kind] = float(auroc_with_ci(labels[keep], scores[keep], n_resamples=0)["auroc"])
    return out


def measure(demo: Path, min_scans: int, n_resamples: int, floors: Sequence[float] = FLOORS) -> list[dict]:
    results, image_cache = [], {}
    kind_of = {str(it["subject_id"]): it["lesion_kind"] for it in demo_test_items(demo)}
    for run, names in MAP_RUNS.items():
        for seed, run_dir in seed_runs(demo, run).items():
            score_dir = run_dir.parents[1] / "scores" / run  # DEMO[/seeds/<s>]/scores/<run>
            if not (score_dir / "maps").is_dir():
                continue
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            erosion, k = erosion_voxels(config), top_voxels(config)
            for name in names:
                v_maps, v_regions, _, _ = load_section(score_dir, "validation", name, erosion, image_cache)
                t_maps, t_regions, labels, rows = load_section(score_dir, "test", name, erosion, image_cache)
                center, scales = voxel_norms(v_maps, v_regions, min_scans, floors)
                columns = {z_column(f): scale for f, scale in zip(floors, scales, strict=True)}
                scores = calibrated_scores(t_maps, t_regions, center, columns, k)
                logged = np.array([float(r[f"{name}_{MAP_TOP_VOLUME[0]}"]) for r in rows])
                entry = {
                    "run": run,
                    "seed": seed,
                    "map": name,
                    "n_validation": len(v_maps),
                    "raw_vs_logged_max_abs": float(np.max(np.abs(scores["raw"] - logged))),
                }
                kinds = [kind_of[r["subject_id"]] for r in rows]
                for c in scores:
                    entry[c] = auroc_with_ci(labels, scores[c], n_resamples=n_resamples)
                    entry[c]["kinds"] = kind_aurocs(labels, kinds, scores[c])
                    if c != "raw":
                        entry[f"{c}_vs_raw"] = auroc_with_ci(
                            labels, scores[c], n_resamples=n_resamples, paired_with=scores["raw"]
                        )
                results.append(entry)
                print(
                    f"{run} seed {seed} {name}: " + ", ".join(f"{c} {entry[c]['auroc']:.3f}" for c in scores),
                    file=sys.stderr,
                )
    return results


def _ci(d: dict, key: str) -> str:
    low, high = d[f"{key}_ci"]
    return (
        f"{d[key]:+.3f} [{low:+.3f}, {high:+.3f}]"
        if "difference" in key
        else f"{d[key]:.3f} [{low:.3f}, {high:.3f}]"
    )


def _calibrated_columns(results: list[dict]) -> list[str]:
    return [c for c in results[0] if f"{c}_vs_raw" in results[0]]


def to_markdown(results: list[dict]) -> str:
    columns = _calibrated_columns(results)
    rows = [
        [r["run"], r["seed"], f"`{r['map']}`", _ci(r["raw"], "auroc")]
        + [f"{r[c]['auroc']:.3f}, {_ci(r[f'{c}_vs_raw'], 'auroc_difference')}" for c in columns]
        for r in results
    ]
    header = ["run", "seed", "map", "raw", *(f"{c.replace('_', ' ')}, − raw" for c in columns)]
    return markdown_table(header, rows)


def kinds_markdown(results: list[dict]) -> str:
    """Per lesion kind, mean over seeds: raw -> z (and -> minus median) volume AUROC of every run and map."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["run"], r["map"]), []).append(r)
    columns = _calibrated_columns(results)
    rows = []
    for (run, name), entries in groups.items():
        cells = []
        for kind in KINDS:
            if any(kind not in e["raw"]["kinds"] for e in entries):
                cells.append("–")
                continue
            mean = {c: np.mean([e[c]["kinds"][kind] for e in entries]) for c in ("raw", *columns)}
            cells.append(f"{mean['raw']:.3f} → " + " / ".join(f"{mean[c]:.3f}" for c in columns))
        rows.append([run, f"`{name}`", len(entries), *cells])
    names = " / ".join(c.replace("_", " ") for c in columns)
    return markdown_table(["run", "map", "seeds", *(f"{k}: raw → {names}" for k in KINDS)], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo", type=Path, required=True, help="a finished demo folder (with seeds/ if any)"
    )
    parser.add_argument(
        "--min-scans", type=int, default=10, help="healthy scans a voxel needs for its own norm"
    )
    parser.add_argument(
        "--floors",
        type=float,
        nargs="+",
        default=list(FLOORS),
        help="z columns: the scale's floor as a fraction of the median voxel scale, one column each",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap replicates of the CIs")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)

    load_start, t0 = os.getloadavg()[0], time.time()
    results = measure(args.demo, args.min_scans, args.resamples, args.floors)
    meta = run_meta("voxel_norms.py", argv, load_start, t0, demo=str(args.demo))
    first = results[0]
    worst = max(r["raw_vs_logged_max_abs"] for r in results)
    md = "\n".join(
        [
            "# Per-voxel healthy norms for the maps",
            "",
            f"Command: `{meta['command']}`  ",
            f"Machine: {meta['machine']}  ",
            f"Load: {meta['load']}  ",
            f"Date: {meta['date']}; {meta['seconds']:.0f} s  ",
            f"Demo: `{args.demo}`; norms from its {first['n_validation']} healthy validation scans, scored on its "
            f"{first['raw']['n']} test scans ({first['raw']['n_anomalous']} anomalous); seeds: the demo's run (0) "
            "and its seeded copies.",
            "",
            "Volume AUROC [95 % CI] of the mean of each map's highest 200 mm³ in its scored region: the map "
            "(`raw`, the runs' `<map>_top200mm3`), the map minus each voxel's healthy median (`minus median`), and "
            "its robust z against the healthy maps at that voxel (`z@f`: 1.4826 MAD, floored at f × the median "
            f"scale, f in {', '.join(f'{f:g}' for f in args.floors)}; voxels in fewer than "
            f"{args.min_scans} healthy regions take the pooled norm). Each calibrated column: AUROC, and its paired "
            "difference from `raw` on the same scans [95 % CI]. `intensity` with `z` is a per-voxel norm of the "
            "image, as the `normative` "
            "baseline's map is (that one: |z| against the healthy training scans on the model grid, its spread "
            "floored at 0.05). The floor 0.1 (the slice norms' own) was set first; 0.5 and 1 were added after "
            "0.1 was seen to cost the patch maps, so a run's best z column is a choice made on this test set.",
            f"Largest |`raw` − the run's logged `<map>_top200mm3`| over all scans: {worst:.2g}.",
            "",
            to_markdown(results),
            "",
            "## Per lesion kind (each kind's anomalous scans against all healthy test scans; mean over seeds)",
            "",
            kinds_markdown(results),
            "",
        ]
    )
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "voxel_norms.md").write_text(md)
    (args.docs / "voxel_norms.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
