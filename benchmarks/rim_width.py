"""How thick should the rim be that map scores leave out? The demo's map runs rescored at several widths.

Every map counts inside the brain minus a rim of ``score.map_erosion_mm`` (shipped: 8 mm), because reconstructions
and likelihoods are worst at the brain's edge on healthy and lesioned scans alike; lesions inside the rim are missed
by construction. This script takes the trained map runs of a finished ``mri-anomaly demo`` (no retraining: the
erosion only acts when scoring), sets ``score.map_erosion_mm`` to each width in a copy of each run, recalibrates the
copy on the demo's healthy validation scans (slice norms and thresholds, as at the end of training: the slice
profiles read the same region as the maps), scores the demo's test scans and the real cases of ``../shared/data``
with it, and reports per width:

* volume AUROC of each run's ``<map>_q999`` and ``<map>_top200mm3`` columns (95 % bootstrap CI), and on lesions
  < 1 cm^3;
* slice AUROC of each map's slice profile (``<map>_slice_top200mm3``) on the demo's test slices;
* voxel AP of each map on the demo's test scans (``evaluate``) and on each real lesion case;
* on each real FLAIR case, the slice AUROC inside the scan of each profile and the ceilings of ``ceilings.py``
  (the share of lesion slices with their lesion only in the rim, and the AUROC of a score that found every lesion
  in the scored part).

Usage::

    python benchmarks/rim_width.py --demo demo-out [--mm 0 4 8] [--data ../shared/data]

Writes ``docs/benchmarks/rim_width.md`` and ``.json`` (``--docs`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import recalibrate_run, run_meta, run_with_config  # noqa: E402
from ceilings import REAL_FLAIR, demo_config, real_case_ceilings  # noqa: E402
from mri_anomaly.scoring.maps import MAP_QUANTILE, MAP_TOP_VOLUME  # noqa: E402
from mri_anomaly.training.methods.base import AnomalyMethod  # noqa: E402
from real_data import default_data_dir, real_cases, score_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAP_RUNS = (
    "glow2d-ratio",
    "glow3d-ratio",
    "deep-svdd-2d",
    "deep-sad-2d",
    "latent-norm-ae-2d",
    "intensity",
    "normative",
)
MAP_COLUMNS = tuple(f"_{suffix}" for suffix, _ in (MAP_QUANTILE, MAP_TOP_VOLUME))  # the runs' map columns
PROFILE_SUFFIX = f"_slice_{AnomalyMethod.slice_statistic}"  # the maps' slice profiles


def run_with_rim(src: Path, dst: Path, mm: float, datalist: Path | None = None) -> Path:
    """A copy of run ``src`` at ``dst`` whose checkpoint's config scores maps inside the brain minus ``mm``
    (:func:`_common.run_with_config`), recalibrated on ``datalist``'s validation section when given (the slice
    norms of the profiles, which read the same region, and the thresholds)."""

    def edit(config: dict) -> None:
        config.setdefault("score", {})["map_erosion_mm"] = float(mm)

    run_with_config(src, dst, edit)
    if datalist is not None:
        recalibrate_run(dst, datalist)
    return dst


def _with_rim(config: dict, mm: float) -> dict:
    import copy

    out = copy.deepcopy(config)
    out.setdefault("score", {})["map_erosion_mm"] = float(mm)
    return out


def measure(demo: Path, data: Path | None, out: Path, widths: list[float], runs: list[str]) -> dict:
    from mri_anomaly.evaluation.evaluate import evaluate
    from mri_anomaly.scoring.runner import score_datalist

    datalist = demo / "data" / "datalist.json"
    cases = real_cases(data) if data is not None else []
    real_list = out / "real_datalist.json"
    if cases:
        out.mkdir(parents=True, exist_ok=True)
        real_list.write_text(json.dumps({"test": cases}, indent=2))
    result: dict = {
        "widths": widths,
        "runs": runs,
        "demo": {},
        "real": {},
        "real_slice": {},
        "real_ceilings": {},
    }
    for mm in widths:
        t = time.time()
        key = f"{mm:g}"
        base = out / f"rim{key}"
        score_dirs = []
        if data is not None:
            result["real_ceilings"][key] = real_case_ceilings(
                data, _with_rim(demo_config(demo), mm), REAL_FLAIR
            )
        for run in runs:
            run_dir = run_with_rim(demo / "runs" / run, base / "runs" / run, mm, datalist)
            score_dir = base / "scores" / run
            shutil.rmtree(score_dir, ignore_errors=True)
            score_datalist(run_dir, datalist, score_dir, sections=("test",), progress=False)
            score_dirs.append(score_dir)
            if cases:
                scored = score_run(run_dir, cases, real_list, base / "real" / run, max_voxels=500_000)
                result["real"].setdefault(key, {})[run] = scored["voxel"]
                result["real_slice"].setdefault(key, {})[run] = {
                    sid: {c: v["auroc"] for c, v in cols.items() if c.endswith(PROFILE_SUFFIX)}
                    for sid, cols in scored["slice"].items()
                    if sid in REAL_FLAIR
                }
        metrics = evaluate(score_dirs, datalist, base / "eval", names=runs, report=False, n_bootstrap=1000,
                           n_bootstrap_voxel=0, log=lambda _m: None)  # fmt: skip
        entry: dict = {}
        for run in runs:
            for col, v in metrics["volume"].items():
                if col.startswith(f"{run}/") and col.endswith(MAP_COLUMNS):
                    small = metrics["strata"].get(col, {}).get("size:small", {})
                    entry[col] = {
                        "auroc": v["auroc"],
                        "auroc_ci": v.get("auroc_ci"),
                        "auroc_small": small.get("auroc"),
                    }
            for col, v in metrics["voxel"].items():
                if col.startswith(f"{run}/"):
                    entry.setdefault("voxel", {})[col] = v["ap"]
            for col, v in metrics["slice"].items():
                if col.startswith(f"{run}/") and col.endswith(PROFILE_SUFFIX):
                    entry.setdefault("slice", {})[col] = v["auroc"]
        result["demo"][key] = entry
        print(f"[rim-width] {key} mm: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    return result


def to_markdown(result: dict, command: str) -> str:
    widths = [f"{w:g}" for w in result["widths"]]
    meta = result["meta"]
    lines = ["# Rim width of the map scores: 0, 4 or 8 mm", "",
             f"Command: `{command}`  ", f"Machine: {meta['machine']}  ", f"Load: {meta['load']}  ",
             f"Date: {meta['date']}  ", f"Demo: `{meta['demo']}` (the runs as trained, recalibrated on its validation scans at each width; only `score.map_erosion_mm` changes)", "",
             "## Demo test set: volume AUROC of `<map>_q999` and `<map>_top200mm3` [95 % CI] (lesions < 1 cm³)", ""]  # fmt: skip
    cols = sorted({c for e in result["demo"].values() for c in e if c not in ("voxel", "slice")})
    lines.append("| column | " + " | ".join(f"{w} mm" for w in widths) + " |")
    lines.append("|---|" + "---|" * len(widths))
    for c in cols:
        cells = []
        for w in widths:
            v = result["demo"][w].get(c)
            ci = v.get("auroc_ci") or [None, None]
            cells.append(
                f"{v['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({v['auroc_small']:.3f})" if v else "–"
            )
        lines.append(f"| `{c}` | " + " | ".join(cells) + " |")
    scols = sorted({c for e in result["demo"].values() for c in e.get("slice", {})})
    if scols:
        lines += [
            "",
            "## Demo test set: slice AUROC of each map's slice profile (recalibrated at each width)",
            "",
        ]
        lines.append("| profile | " + " | ".join(f"{w} mm" for w in widths) + " |")
        lines.append("|---|" + "---|" * len(widths))
        for c in scols:
            vals = [result["demo"][w].get("slice", {}).get(c) for w in widths]
            lines.append(f"| `{c}` | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines += ["", "## Demo test set: voxel AP of each map", ""]
    vcols = sorted({c for e in result["demo"].values() for c in e.get("voxel", {})})
    lines.append("| map | " + " | ".join(f"{w} mm" for w in widths) + " |")
    lines.append("|---|" + "---|" * len(widths))
    for c in vcols:
        lines.append(
            f"| `{c}` | "
            + " | ".join(f"{result['demo'][w]['voxel'].get(c, float('nan')):.3f}" for w in widths)
            + " |"
        )
    lines += _real_slice_markdown(result, widths)
    if result["real"]:
        lines += [
            "",
            "## Real cases: voxel AP of each map inside the brain (`benchmarks/real_data.py`'s measure)",
            "",
        ]
        sids = sorted({sid for by_run in result["real"].values() for maps in by_run.values() for sid in maps})
        for sid in sids:
            lines += [
                f"**{sid}**",
                "",
                "| map | " + " | ".join(f"{w} mm" for w in widths) + " |",
                "|---|" + "---|" * len(widths),
            ]
            mrows = sorted(
                {
                    (r, m)
                    for by_run in result["real"].values()
                    for r, maps in by_run.items()
                    for m in maps.get(sid, {})
                }
            )
            for r, m in mrows:
                vals = []
                for w in widths:
                    v = result["real"].get(w, {}).get(r, {}).get(sid, {}).get(m)
                    vals.append(f"{v['ap']:.3f}" if v else "–")
                lines.append(f"| {r} `{m}` | " + " | ".join(vals) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _real_slice_markdown(result: dict, widths: list[str]) -> list[str]:
    """The real FLAIR cases' ceilings and slice AUROCs inside each scan, per width."""
    lines: list[str] = []
    ceilings = result.get("real_ceilings") or {}
    if ceilings:
        lines += ["", "## Real FLAIR cases: what each rim leaves to find (`ceilings.py`'s measure)", "",
                  "Per width: the share of the scan's counted lesion slices with their lesion only in the rim, and "
                  "the slice AUROC inside the scan of a score that found every lesion in the scored part (the rim-only "
                  "slices at chance).", "",
                  "| case | " + " | ".join(f"{w} mm: rim only, ceiling" for w in widths) + " |",
                  "|---|" + "---|" * len(widths)]  # fmt: skip
        by_case: dict[str, dict[str, dict]] = {}
        for w in widths:
            for row in ceilings.get(w, []):
                by_case.setdefault(row["subject_id"], {})[w] = row
        for sid, rows in by_case.items():
            cells = [
                f"{100 * rows[w]['share_rim only']:.0f} %, {rows[w]['ceiling_scored_part']:.3f}"
                if w in rows
                else "–"
                for w in widths
            ]
            lines.append(f"| {sid} | " + " | ".join(cells) + " |")
    real_slice = result.get("real_slice") or {}
    if real_slice:
        lines += ["", "## Real FLAIR cases: slice AUROC inside each scan of each slice profile", "",
                  "Lesion slices against the lesion-free counted slices of the same scan (`real_data.py`'s measure); "
                  "each run recalibrated at each width.", ""]  # fmt: skip
        sids = sorted({sid for by_run in real_slice.values() for cases in by_run.values() for sid in cases})
        cols = sorted(
            {
                (run, c)
                for by_run in real_slice.values()
                for run, cases in by_run.items()
                for cs in cases.values()
                for c in cs
            }
        )
        lines += [
            "| profile | " + " | ".join(f"{sid} ({w} mm)" for sid in sids for w in widths) + " |",
            "|---|" + "---|" * (len(sids) * len(widths)),
        ]
        for run, c in cols:
            vals = [real_slice.get(w, {}).get(run, {}).get(sid, {}).get(c) for sid in sids for w in widths]
            lines.append(
                f"| {run} `{c}` | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--demo", default=str(REPO / "demo-out"), help="a finished `mri-anomaly demo --out` folder"
    )
    parser.add_argument("--mm", type=float, nargs="+", default=[0.0, 4.0, 8.0], help="rim widths in mm")
    parser.add_argument("--data", default=str(default_data_dir()), help="the real cases (skipped if absent)")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "mri-anomaly-rim-width"))
    parser.add_argument("--docs", default=str(REPO / "docs" / "benchmarks"))
    args = parser.parse_args(argv)
    demo, data = Path(args.demo), Path(args.data)
    runs = [r for r in MAP_RUNS if (demo / "runs" / r / "checkpoint.pt").is_file()]
    if not runs:
        print(
            f"no trained map runs under {demo / 'runs'}; run `mri-anomaly demo --out {demo}` first",
            file=sys.stderr,
        )
        return 2
    load_start, t0 = os.getloadavg()[0], time.time()
    result = measure(demo, data if data.is_dir() else None, Path(args.out), list(args.mm), runs)
    result["meta"] = run_meta("rim_width.py", argv, load_start, t0, demo=str(demo))
    md = to_markdown(result, result["meta"]["command"])
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "rim_width.json").write_text(json.dumps(result, indent=2))
    (docs / "rim_width.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
