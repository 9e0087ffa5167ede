"""The demo on a finer grid: is the 4 mm grid what hides the faint lesions inside the healthy intensity range?

``ceilings.md`` finds the volume and slice targets held back by the lesions whose voxels, on the demo's 4 mm
grid, stay inside the intensity range of the scan's own healthy tissue, and ``lesion_conspicuity.md`` traces that
to partial volume: a few-millimetre MS lesion fills part of one 4 mm voxel and lifts it by that fraction of its
contrast. This script makes the demo cohort again on a ``--spacing`` mm grid with the demo's seed: the same
subjects, sections, labels and lesion kinds, but lesions drawn on that grid, so not the same lesions (an MS subject
gets the pattern whose volume on the grid fits its size stratum, and a focal lesion's draws, its brightness sign
among them, follow the grid; the document counts both). It trains and scores there, with the demo's pipeline
(``run_demo``, ``run_seed``), the demo's best learned run, the latent-norm autoencoder (``--seeds``, each on one
thread), and both baselines, each with its shipped config and only the grid changed (``preprocessing.spacing``
and ``spatial_size``; every setting in mm, the residual tolerance, the rim and the 200 mm³ of the scores, stays),
and reports it beside the same runs of the shipped 4 mm demo (``--demo``, its seeds from ``detection.py --seeds``):

* the test scans: each run's volume AUROC [95 % CI] (its ``detection.md`` column and its other volume
  statistic), the autoencoder's paired difference with each baseline [95 % CI]; per scan class of ``ceilings.py``
  (the lesion only in the 8 mm rim, within the scan's healthy range, beyond it) the share of scans and each
  run's AUROC; the slice AUROC of each map's profile on all lesion slices and per class; the voxel AP; and, since
  the profile's 200 mm³ are more voxels on the finer grid, the finer grid's seed-0 runs rescored with a profile of
  as many voxels as at 4 mm (``same_voxels_profile``; ``slice_statistic.rescore_demo``);
* the real FLAIR cases of ``../shared/data`` (never used for training or choosing): each case's lesion slices
  within the healthy range at that grid, and each run's slice AUROC inside the scan and voxel AP.

Usage::

    python benchmarks/grid_spacing.py --demo demo-out [--spacing 2] [--seeds 0 1 2] [--out DIR]

Writes ``docs/benchmarks/grid_spacing.md`` and ``.json`` with the command, machine, load and date. On 2 CPU cores
the 2 mm cohort, three autoencoders and both baselines take about an hour (the demo's 4 mm runs are read, not
retrained).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    demo_benchmark_parser,
    markdown_table,
    meta_lines,
    reading_lines,
    run_meta,
    write_doc,
)
from ceilings import CLASSES, class_table, counted_test_classes, demo_config, real_case_ceilings  # noqa: E402
from denoising_ae import KIND_NAMES, KINDS, map_measures, paired_with, real_measures  # noqa: E402
from detection import seed_folder  # noqa: E402
from real_data import FLAIR_CASES, real_cases  # noqa: E402
from residual_tolerance import test_table, voxel_ap  # noqa: E402

AE = "latent-norm-ae-2d"
# run: (map, the volume column detection.md reads for it, its other volume statistic)
RUNS: dict[str, tuple[str, str, str]] = {
    AE: ("residual", "residual_top200mm3", "residual_q999"),
    "intensity": ("intensity", "intensity_top200mm3", "intensity_q999"),
    "normative": ("abs_z", "abs_z_q999", "abs_z_top200mm3"),
}
BASELINES = ("intensity", "normative")
DEMO_SPACING = 4.0


def grid_overrides(
    spacing: float, base_spacing: float, base_size: Sequence[int], divisible_by: int
) -> tuple[str, str]:
    """Config overrides that put a config's grid (``base_size`` voxels of ``base_spacing`` mm) on ``spacing`` mm
    over the same field of view.

    Raises:
        ValueError: the field of view is not a whole number of ``spacing`` voxels divisible by ``divisible_by``."""
    size = [b * base_spacing / spacing for b in base_size]
    if any(abs(s - round(s)) > 1e-6 or round(s) % divisible_by for s in size):
        raise ValueError(
            f"{spacing} mm does not divide the demo's {[b * base_spacing for b in base_size]} mm field of view into "
            f"a whole number of voxels divisible by {divisible_by} (got {size})"
        )
    return (
        f"preprocessing.spacing=[{spacing},{spacing},{spacing}]",
        "preprocessing.spatial_size=[" + ",".join(str(round(s)) for s in size) + "]",
    )


def grid_runs(spacing: float) -> list:
    """The demo's autoencoder and baselines (:data:`~mri_anomaly.pipeline.DEMO_RUNS`) with the grid of ``spacing``."""
    from mri_anomaly.pipeline import DEMO_RUNS, DemoRun, configs_dir
    from mri_anomaly.training.config import load_config

    by_name = {r.name: r for r in DEMO_RUNS}
    runs = []
    for name in RUNS:
        r = by_name[name]
        pre = load_config(configs_dir() / r.config, list(r.overrides))["preprocessing"]
        if len(set(pre["spacing"])) != 1:
            raise ValueError(f"{r.config}: an anisotropic grid {pre['spacing']}")
        grid = grid_overrides(spacing, pre["spacing"][0], pre["spatial_size"], pre["divisible_by"])
        runs.append(DemoRun(name, r.config, (*r.overrides, *grid), r.description, r.cost))
    return runs


def make_grid_demo(out: Path, spacing: float, seeds: Sequence[int]) -> Path:
    """The demo cohort (the demo's seed) at ``spacing`` mm in ``out/data``, :func:`grid_runs` trained and scored
    into ``out`` by the demo's pipeline, and the autoencoder again for each of ``seeds`` other than 0
    (``out/seeds/<s>``, one thread each). Resumes what is there; returns ``out``."""
    from mri_anomaly.pipeline import STATE_FILE, run_demo, run_seed

    runs = grid_runs(spacing)
    state = out / STATE_FILE
    cohort = (json.loads(state.read_text()).get("data") or {}) if state.is_file() else {}
    if cohort.get("done") and cohort.get("spacing_mm") != spacing:
        raise SystemExit(f"{out} holds a cohort at {cohort.get('spacing_mm')} mm, not {spacing} mm")
    run_demo(out, runs=runs, n_bootstrap=200, progress=False, spacing=spacing)
    for seed in (s for s in seeds if s != 0):
        # two lanes for one run: one process of one thread, as the demo's runs train
        run_seed(out, seed, runs=[runs[0]], progress=False, lanes=2)
    return out


def cohort_lesions(coarse: Path, fine: Path) -> list[dict]:
    """Per lesion variant of the two cohorts' anomalous subjects (``data/subjects.csv``): their number and median
    lesion volume (cm³, counted on each grid) on each, and how many MS subjects got the same pattern."""
    a = pd.read_csv(coarse / "data" / "subjects.csv")
    b = pd.read_csv(fine / "data" / "subjects.csv")
    if list(a["subject_id"]) != list(b["subject_id"]) or list(a["lesion_kind"].fillna("")) != list(
        b["lesion_kind"].fillna("")
    ):
        raise SystemExit(f"{coarse} and {fine}: not the same subjects and lesion kinds")
    rows = []
    for variant in KINDS:
        ca, cb = a[a["lesion_variant"] == variant], b[b["lesion_variant"] == variant]
        row = {
            "variant": variant,
            "n": [len(ca), len(cb)],
            "median_cm3": [float(ca["lesion_volume_cm3"].median()), float(cb["lesion_volume_cm3"].median())],
        }
        if variant == "ms":
            same = a["ms_source"].notna() & (a["ms_source"] == b["ms_source"])
            row["same_pattern"] = int(same.sum())
        rows.append(row)
    return rows


def stage_seconds(demo: Path) -> dict[str, float]:
    """Wall-clock seconds of the demo's cohort and of the autoencoder's training and scoring (seed 0), as its
    ``demo_state.json`` recorded them (in the demo's lanes, beside the other runs)."""
    from mri_anomaly.pipeline import STATE_FILE

    state = json.loads((demo / STATE_FILE).read_text())
    stages = {"cohort": "data", "autoencoder training": f"train:{AE}", "autoencoder scoring": f"score:{AE}"}
    return {k: float(state[v]["seconds"]) for k, v in stages.items() if v in state}


def run_folders(demo: Path, seeds: Sequence[int]) -> dict[str, dict[str, Path]]:
    """``{run: {seed: folder holding runs/<run> and scores/<run>}}`` (``detection.seed_folder``): the autoencoder at
    each of ``seeds``, each baseline at seed 0.

    Raises:
        SystemExit: naming every run of those the demo has not trained."""
    folders = {run: {str(s): seed_folder(demo, s) for s in (seeds if run == AE else [0])} for run in RUNS}
    missing = [
        f"{run} (seed {s})"
        for run, per_seed in folders.items()
        for s, folder in per_seed.items()
        if not (folder / "runs" / run / "checkpoint.pt").is_file()
    ]
    if missing:
        raise SystemExit(f"{demo}: no run of {', '.join(missing)}")
    return folders


def volume_auroc(score_dir: Path, column: str) -> dict:
    """Volume AUROC [95 % CI] of ``column`` on the test scans of ``score_dir``."""
    from mri_anomaly.evaluation.bootstrap import auroc_with_ci

    table = test_table(score_dir)
    r = auroc_with_ci(table["label"].to_numpy(int), table[column].to_numpy(float))
    return {"auroc": float(r["auroc"]), "ci": [float(c) for c in r["auroc_ci"]]}


def measure_grid(
    demo: Path,
    classes: tuple[pd.DataFrame, pd.DataFrame],
    seeds: Sequence[int],
    data: Path,
    work: Path,
    max_voxels: int,
) -> dict:
    """Every number of one grid's demo (see the module docstring); the autoencoder per seed, the baselines once.
    ``classes``: its ``(slices, scans)`` of ``ceilings.counted_test_classes``."""
    config = demo_config(demo)
    slice_classes, scan_classes = classes
    datalist = demo / "data" / "datalist.json"
    cases = [c for c in real_cases(data) if c["subject_id"] in FLAIR_CASES]
    real_datalist = work / "real_datalist.json"
    real_datalist.parent.mkdir(parents=True, exist_ok=True)
    real_datalist.write_text(json.dumps({"test": cases}, indent=2))
    out: dict = {
        "spacing_mm": float(config["preprocessing"]["spacing"][0]),
        "spatial_size": list(config["preprocessing"]["spatial_size"]),
        "scan_classes": class_table(scan_classes)[-1],
        "slice_classes": class_table(slice_classes)[-1],
        "real_ceilings": real_case_ceilings(data, config, FLAIR_CASES) if cases else [],
        "seconds": stage_seconds(demo),
        "runs": {},
    }
    folders = run_folders(demo, seeds)
    for run, (map_name, column, other) in RUNS.items():
        per_seed = {}
        for seed, folder in folders[run].items():
            run_dir, score_dir = folder / "runs" / run, folder / "scores" / run
            tag = f"{run}-seed{seed}"
            v = {
                column: volume_auroc(score_dir, column),
                other: volume_auroc(score_dir, other),
                "voxel_ap": voxel_ap(score_dir, datalist, work / "evaluation" / tag),
            }
            v.update(
                map_measures(demo, score_dir, run, run_dir, map_name, column, slice_classes, scan_classes)
            )
            if run == AE:
                for b in BASELINES:
                    base_dir = folders[b]["0"] / "scores" / b
                    difference, ci = paired_with(score_dir, base_dir, column, RUNS[b][1])
                    v[f"vs_{b}"] = {"difference": difference, "ci": ci}
            v["real"] = real_measures(
                run_dir, cases, real_datalist, work / "real" / tag, max_voxels, map_name
            )
            per_seed[seed] = v
            print(f"{out['spacing_mm']:g} mm {tag}: volume {v[column]['auroc']:.3f}", file=sys.stderr)
        out["runs"][run] = per_seed
    return out


def same_voxels_profile(spacing: float, base_spacing: float = DEMO_SPACING) -> str:
    """The ``top<V>mm3`` slice statistic that averages on ``spacing`` mm as many voxels as the package's
    (:attr:`~mri_anomaly.training.methods.base.AnomalyMethod.slice_statistic`) does on the demo's grid."""
    from mri_anomaly.scoring.brain import top_statistic_voxels
    from mri_anomaly.training.methods.base import AnomalyMethod

    n = top_statistic_voxels(AnomalyMethod.slice_statistic, base_spacing**3)
    return f"top{n * spacing**3:g}mm3"


def profile_rescored(
    demo: Path, statistic: str, slice_classes: pd.DataFrame, work: Path, data: Path, max_voxels: int
) -> dict:
    """Slice AUROCs (all lesion slices and per class of ``slice_classes``) of each run's map profile
    ``<map>_slice_<statistic>`` on the demo's test slices, and inside each real FLAIR case of ``data``: its seed-0
    runs recalibrated and rescored with that statistic into ``work`` (``slice_statistic.rescore_demo``)."""
    from ceilings import class_aurocs
    from detection import score_dir_tables
    from slice_statistic import rescore_demo, slice_statistic

    rescore_demo(demo, work, [0], statistic, log=lambda msg: print(msg, file=sys.stderr))
    out = {}
    for run, (map_name, _, _) in RUNS.items():
        tables = score_dir_tables(demo, work / "scores" / run, run, work / "runs" / run)
        column = f"{map_name}_slice_{statistic}"
        out[run] = class_aurocs(tables["slice"], slice_classes, [column])[column]
    cases = [c for c in real_cases(data) if c["subject_id"] in FLAIR_CASES]
    real_datalist = work / "real_datalist.json"
    real_datalist.write_text(json.dumps({"test": cases}, indent=2))
    real = {}
    with slice_statistic(statistic):
        for run, (map_name, _, _) in RUNS.items():
            scored = real_measures(
                work / "runs" / run, cases, real_datalist, work / "real" / run, max_voxels, map_name
            )
            real[run] = {case: v["slice"] for case, v in scored.items()}
    return {"statistic": statistic, "runs": out, "real": real}


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _seeds_cell(per_seed: Mapping[str, Mapping], get) -> str:
    """One value, or the mean over seeds with each seed's value in brackets."""
    values = [get(v) for v in per_seed.values()]
    if len(values) == 1:
        return _f(values[0])
    return f"{_f(float(np.mean(values)))} ({', '.join(_f(v) for v in values)})"


def _ci(d: Mapping) -> str:
    return f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def to_markdown(result: Mapping) -> str:
    grids = result["grids"]
    lines = [
        "# The demo on a finer grid: the autoencoder and both baselines at 4 mm and at "
        f"{grids[-1]['spacing_mm']:g} mm",
        "",
        *meta_lines(result["meta"]),
        "Demos: "
        + ", ".join(f"`{g['demo']}` ({g['spacing_mm']:g} mm, {g['spatial_size']} voxels)" for g in grids)
        + f"; the autoencoder's seeds {', '.join(result['seeds'])}, each baseline once.  ",
        "",
        "Each cell of a learned run: the mean over seeds, then each seed in brackets. Volume AUROC on the demo's test "
        "scans; scan and slice classes as in `ceilings.py` (the lesion only in the 8 mm rim, within the scan's "
        "healthy intensity range, beyond it) at each grid; slice AUROC of each map's profile; voxel AP of the map.",
        "",
        "## Demo test set",
        "",
    ]
    rows = []
    for g in grids:
        for run, (map_name, column, other) in RUNS.items():
            per_seed = g["runs"][run]
            rows.append(
                [
                    f"{g['spacing_mm']:g} mm",
                    run,
                    f"`{column}`",
                    _seeds_cell(per_seed, lambda v, c=column: v[c]["auroc"]),
                    _seeds_cell(per_seed, lambda v, c=other: v[c]["auroc"]) + f" (`{other}`)",
                    *[_seeds_cell(per_seed, lambda v, c=c: v["volume_classes"].get(c)) for c in CLASSES],
                    *[_seeds_cell(per_seed, lambda v, k=k: v["kinds"].get(k)) for k in KINDS],
                    _seeds_cell(per_seed, lambda v: v["slice_classes"]["all"]),
                    _seeds_cell(per_seed, lambda v: v["slice_classes"].get(CLASSES[1])),
                    _seeds_cell(per_seed, lambda v: v["slice_classes"].get(CLASSES[2])),
                    _seeds_cell(per_seed, lambda v: v["voxel_ap"]),
                ]
            )
    lines.append(
        markdown_table(
            [
                "grid",
                "run",
                "volume column",
                "volume AUROC",
                "other volume statistic",
                *[f"scans: {c}" for c in CLASSES],
                *[KIND_NAMES.get(k, k) for k in KINDS],
                "slice AUROC",
                "slices: within healthy range",
                "slices: beyond healthy range",
                "voxel AP",
            ],
            rows,
        )  # fmt: skip
    )
    if result.get("fine_profile"):
        fp, fine_mm = result["fine_profile"], f"{grids[-1]['spacing_mm']:g} mm"
        real_names = sorted({case for per_run in fp.get("real", {}).values() for case in per_run})
        lines += [
            "",
            f"The slice profile is the mean of the slice's highest 200 mm³: 3 voxels at 4 mm, more at {fine_mm}. The "
            f"{fine_mm} runs of seed 0 recalibrated and rescored with `{fp['statistic']}` (as many voxels as the "
            f"profile at 4 mm), slice AUROC on the demo's lesion slices, all and per class, and inside each real "
            f"FLAIR scan (the package's profile: the table below):",
            "",
        ]
        rows = [
            [fine_mm, run, f"`{RUNS[run][0]}_slice_{fp['statistic']}`", _f(v.get("all")),
             *[_f(v.get(c)) for c in CLASSES], *[_f(fp.get("real", {}).get(run, {}).get(case)) for case in real_names]]
            for run, v in fp["runs"].items()
        ]  # fmt: skip
        header = ["grid", "run", "profile", "slice AUROC", *[f"slices: {c}" for c in CLASSES], *real_names]
        lines.append(markdown_table(header, rows))
    lines += [
        "",
        "The autoencoder's paired difference with each baseline's column on the same scans, per seed [95 % CI]:",
        "",
    ]
    rows = []
    for g in grids:
        per_seed = g["runs"][AE]
        rows.append(
            [
                f"{g['spacing_mm']:g} mm",
                *["; ".join(_ci(v[f"vs_{b}"]) for v in per_seed.values()) for b in BASELINES],
            ]
        )
    lines.append(markdown_table(["grid", *[f"− `{b}`" for b in BASELINES]], rows))
    lines += [
        "",
        "Classes at each grid (all lesion kinds and sizes; `ceilings.md` has them per kind and size):",
        "",
    ]
    rows = []
    for g in grids:
        for level in ("scan_classes", "slice_classes"):
            c = g[level]
            rows.append(
                [f"{g['spacing_mm']:g} mm", "scans" if level == "scan_classes" else "lesion slices", c["n"],
                 *[f"{100 * c[f'share_{k}']:.0f} %" for k in CLASSES], _f(c["median_lesion_voxels"], 0),
                 _f(c["ceiling_scored_part"]), _f(c["ceiling_beyond_range"])]
            )  # fmt: skip
    lines.append(
        markdown_table(
            [
                "grid",
                "counted",
                "n",
                *CLASSES,
                "median lesion voxels",
                "ceiling: every lesion in the scored part",
                "ceiling: beyond the healthy range only",
            ],
            rows,
        )  # fmt: skip
    )
    fine = f"{grids[-1]['spacing_mm']:g} mm"
    lines += [
        "",
        f"The anomalous test subjects' lesions on each grid (volume counted on the grid; 4 mm / {fine}):",
        "",
    ]
    rows = [
        [f"`{r['variant']}`" if r["variant"] not in KIND_NAMES else KIND_NAMES[r["variant"]],
         f"{r['n'][0]} / {r['n'][1]}", f"{_f(r['median_cm3'][0], 2)} / {_f(r['median_cm3'][1], 2)}",
         str(r["same_pattern"]) if "same_pattern" in r else "–"]
        for r in result["cohort"]
    ]  # fmt: skip
    lines.append(
        markdown_table(["lesions", "subjects", "median lesion volume (cm³)", "same MS pattern on both"], rows)
    )
    lines += [
        "",
        "Wall-clock seconds each demo recorded (`demo_state.json`; its runs in two lanes of one thread):",
        "",
    ]
    stages = list(grids[0].get("seconds", {}))
    rows = [[f"{g['spacing_mm']:g} mm", *[_f(g.get("seconds", {}).get(k), 0) for k in stages]] for g in grids]
    lines.append(markdown_table(["grid", *stages], rows))
    lines += [
        "",
        "## Real FLAIR cases",
        "",
        "Each case's lesion slices through each grid's preprocessing (share within the scan's healthy range, the "
        "slice ceiling with only those beyond it found), then each run's slice AUROC of its profile inside the scan "
        "/ its map's voxel AP inside the brain.",
        "",
    ]
    cases = [r["subject_id"] for r in grids[0]["real_ceilings"]]
    rows = []
    for g in grids:
        by_case = {r["subject_id"]: r for r in g["real_ceilings"]}
        rows.append(
            [f"{g['spacing_mm']:g} mm", "lesion slices: within range, ceiling beyond only",
             *[f"{by_case[c]['lesion_slices']}: {100 * by_case[c][f'share_{CLASSES[1]}']:.0f} %, "
               f"{_f(by_case[c]['ceiling_beyond_range'])}" for c in cases]]
        )  # fmt: skip
        for run in RUNS:
            per_seed = g["runs"][run]
            rows.append(
                [f"{g['spacing_mm']:g} mm", run,
                 *[_seeds_cell(per_seed, lambda v, c=c: v["real"][c]["slice"]) + " / "
                   + _seeds_cell(per_seed, lambda v, c=c: v["real"][c]["voxel_ap"]) for c in cases]]
            )  # fmt: skip
    lines.append(markdown_table(["grid", "run", *cases], rows))
    lines.append("")
    lines += reading_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__, real_flag="--real")
    p.add_argument("--spacing", type=float, default=2.0, help="the finer grid in mm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the autoencoder's training seeds")
    p.add_argument("--out", type=Path, default=None, help="work folder (default DEMO/grid_spacing)")
    p.add_argument("--max-voxels", type=int, default=500_000)
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    demo = args.demo.resolve()
    work = (args.out or demo / "grid_spacing").resolve()
    fine = make_grid_demo(work / "demo-out", args.spacing, args.seeds)
    classes = {d: counted_test_classes(d, demo_config(d)) for d in (demo, fine)}
    grids = []
    for d, name in ((demo, "4mm"), (fine, f"{args.spacing:g}mm")):
        g = measure_grid(d, classes[d], args.seeds, args.real, work / "measures" / name, args.max_voxels)
        g["demo"] = str(d)
        grids.append(g)
    if grids[0]["spacing_mm"] != DEMO_SPACING:
        raise SystemExit(f"{demo}: a demo at {grids[0]['spacing_mm']} mm, not the shipped {DEMO_SPACING} mm")
    statistic = same_voxels_profile(args.spacing)
    fine_profile = profile_rescored(
        fine, statistic, classes[fine][0], work / "profile", args.real, args.max_voxels
    )
    result = {
        "meta": run_meta("grid_spacing.py", argv, load_start, t0, demo=str(args.demo)),  # after all the work
        "seeds": [str(s) for s in args.seeds],
        "grids": grids,
        "cohort": cohort_lesions(demo, fine),
        "fine_profile": fine_profile,
        "reading": args.reading.read_text().strip() if args.reading else "",
    }
    write_doc(args.docs, "grid_spacing", to_markdown(result), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
