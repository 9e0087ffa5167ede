"""Detection benchmark: every demo method beside the `intensity` and `normative` baselines, on one test set.

Reads a finished ``mri-anomaly demo`` folder (or makes one: ``--demo`` pointing to a folder without a demo
runs it there, which takes the demo's time) and writes one table set:

* volume AUROC and AP with 95 % bootstrap CIs, slice AUROC, voxel AP and best Dice of every score column
  (from the demo's ``report/metrics.json``, recomputed by ``evaluate`` when absent);
* volume AUROC per lesion kind and per lesion-volume stratum (< 1, 1-10, > 10 cm^3) of each run's best column;
* each learned run against both baselines (paired bootstrap CI of the AUROC difference);
* the brain-fraction control: Spearman rho of every ``slice_scores.csv`` column with the slice's brain
  fraction on counted slices of healthy test scans (bound: |rho| <= 0.2), and the brain fraction's own
  slice AUROC;
* the real cases of ``../shared/data`` scored by the demo models (``benchmarks/real_data.py``): slice AUROC
  inside each scan, voxel AP next to chance and the raw-intensity map.

Usage::

    python benchmarks/detection.py --demo demo-out [--data ../shared/data] [--docs docs/benchmarks]

Writes ``docs/benchmarks/detection.md`` and ``detection.json`` with the command, machine, load and date, and the
per-case tables of the real cases as ``real_data.md``/``.json`` (the layout of ``benchmarks/real_data.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model  # noqa: E402
from real_data import real_cases, score_real_cases  # noqa: E402
from real_data import to_markdown as real_data_markdown  # noqa: E402

RHO_BOUND = 0.2


def _f(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _ci(entry: dict, key: str) -> str:
    if not entry or entry.get(key) is None:
        return "–"
    ci = entry.get(f"{key}_ci")
    text = _f(entry[key])
    if ci and ci[0] is not None:
        text += f" [{_f(ci[0])}, {_f(ci[1])}]"
    return text


def _match_slice(run: str, column: str, level: dict) -> dict:
    """The slice (or voxel) entry of the slice score / map a volume column is made from."""
    from mri_anomaly.evaluation.report import _match

    key = _match(f"{run}/{column}", [k for k in level if k.startswith(f"{run}/")], f"{run}/")
    return level.get(key or "", {})


def ensure_demo(demo: Path) -> float:
    """Run (or finish) the demo in ``demo``; returns the seconds it took (0 when it was complete)."""
    from mri_anomaly.pipeline import run_demo

    state = demo / "demo_state.json"
    if state.is_file() and json.loads(state.read_text()).get("evaluate", {}).get("done"):
        return 0.0
    t = time.time()
    run_demo(demo, progress=False)
    return time.time() - t


def split_sensitivity(demo: Path, n_splits: int = 40, seed: int = 0) -> list[dict]:
    """How much the brain-fraction ρ of each slice column depends on *which* healthy scans calibrate the norms.

    The healthy validation and test scans are pooled; ``n_splits`` times they are split at random into a
    calibration part (the size of the validation section) and an evaluation part; the slice norms are refitted
    on the calibration part (:func:`~mri_anomaly.scoring.slice_norms.fit_slice_norms`, as at training) and ρ is
    measured on the evaluation part's counted slices. The raw slice scores are recovered from the standardised
    ones and the run's stored norms. Returns one entry per (run, column): the demo's own split's ρ, and the mean,
    SD and share within the bound over the random splits.
    """
    import pandas as pd
    from mri_anomaly.scoring.slice_norms import fit_slice_norms, standardise_slice_scores
    from scipy.stats import spearmanr

    subjects = pd.read_csv(demo / "data" / "subjects.csv", dtype={"subject_id": str})
    healthy_ids = set(subjects.loc[(subjects["label"] == 0) & subjects["section"].isin(["validation", "test"]),
                                   "subject_id"])  # fmt: skip
    rng = np.random.default_rng(seed)
    out = []
    for run_dir in sorted((demo / "runs").iterdir()):
        thresholds = run_dir / "thresholds.json"
        table = demo / "scores" / run_dir.name / "slice_scores.csv"
        if not thresholds.is_file() or not table.is_file():
            continue
        norms = json.loads(thresholds.read_text()).get("slice_norms")
        if not norms:
            continue
        slices = pd.read_csv(table, dtype={"subject_id": str})
        slices = slices[slices["subject_id"].isin(healthy_ids)].sort_values(["subject_id", "slice"])
        f_center = np.asarray(norms["brain_fraction_center"], dtype=np.float64)
        for column, fitted in norms["columns"].items():
            center, scale, slope = (
                np.asarray(fitted[k], dtype=np.float64) for k in ("center", "scale", "slope")
            )
            volumes = {}
            for sid, g in slices.groupby("subject_id"):
                k, f = g["slice"].to_numpy(), g["brain_fraction"].to_numpy(dtype=np.float64)
                raw = (
                    g[column].to_numpy(dtype=np.float64) * scale[k] + center[k] + slope[k] * (f - f_center[k])
                )
                volumes[sid] = (g["section"].iloc[0], raw, f, g["counted"].to_numpy().astype(bool))

            def rho(calibrate: list[str], evaluate: list[str]) -> float:
                fitted_norms = fit_slice_norms(
                    [{column: volumes[i][1]} for i in calibrate],
                    [volumes[i][2] for i in calibrate],
                    counted=[volumes[i][3] for i in calibrate],
                )
                z, f = [], []
                for i in evaluate:
                    zi = standardise_slice_scores({column: volumes[i][1]}, fitted_norms, volumes[i][2])[
                        column
                    ]
                    z.append(zi.numpy()[volumes[i][3]])
                    f.append(volumes[i][2][volumes[i][3]])
                return float(spearmanr(np.concatenate(z), np.concatenate(f))[0])

            ids = sorted(volumes)
            validation = [i for i in ids if volumes[i][0] == "validation"]
            test = [i for i in ids if volumes[i][0] == "test"]
            if not validation or not test:
                continue
            draws = []
            for _ in range(n_splits):
                order = list(rng.permutation(ids))
                draws.append(rho(order[: len(validation)], order[len(validation) :]))
            draws = np.asarray(draws)
            out.append(
                {
                    "run": run_dir.name,
                    "column": column,
                    "rho_this_split": rho(validation, test),
                    "mean": float(draws.mean()),
                    "sd": float(draws.std(ddof=1)),
                    "within_bound": float(np.mean(np.abs(draws) <= RHO_BOUND)),
                    "n_splits": n_splits,
                    "n_calibration": len(validation),
                    "n_evaluation": len(test),
                }
            )
    return out


def summarise(metrics: dict) -> dict:
    """The benchmark's tables from ``metrics.json``."""
    from mri_anomaly.evaluation.controls import best_volume_columns

    runs = metrics["runs"]
    volume, slc, vox = metrics["volume"], metrics["slice"], metrics["voxel"]
    methods = {name: r.get("method") for name, r in runs.items()}
    columns = []
    for key, entry in volume.items():
        run, column = key.split("/", 1)
        s = _match_slice(run, column, slc)
        v = _match_slice(run, column, vox)
        columns.append(
            {
                "run": run,
                "method": methods.get(run),
                "column": column,
                "volume_auroc": entry.get("auroc"),
                "volume_auroc_ci": entry.get("auroc_ci"),
                "volume_ap": entry.get("ap"),
                "volume_ap_ci": entry.get("ap_ci"),
                "slice_auroc": s.get("auroc"),
                "slice_auroc_ci": s.get("auroc_ci"),
                "voxel_ap": v.get("ap"),
                "voxel_best_dice": v.get("best_dice"),
                "n": entry.get("n"),
                "n_anomalous": entry.get("n_anomalous"),
            }
        )
    by_key = {(c["run"], c["column"]): c for c in columns}
    best = {
        run: by_key[(run, column)] for run, (column, _) in best_volume_columns(volume, several=True).items()
    }
    rho = []
    for run, entry in metrics.get("brain_fraction", {}).items():
        for column, value in entry.get("rho", {}).items():
            rho.append(
                {
                    "run": run,
                    "column": column,
                    "rho": value,
                    "rho_ci": entry.get("rho_ci", {}).get(column),
                    "n_slices": entry.get("n_slices"),
                    "within_bound": value is not None and np.isfinite(value) and abs(value) <= RHO_BOUND,
                }
            )
    control = next(({"key": k, **e} for k, e in slc.items() if e.get("control")), None)
    strata = {}
    for run, c in best.items():
        entry = metrics.get("strata", {}).get(f"{run}/{c['column']}", {})
        strata[run] = {
            "column": c["column"],
            **{
                k: {
                    "auroc": e.get("auroc"),
                    "auroc_ci": e.get("auroc_ci"),
                    "n_anomalous": e.get("n_anomalous"),
                }
                for k, e in entry.items()
            },
        }
    return {
        "columns": columns,
        "best": best,
        "strata": strata,
        "baselines": metrics.get("baselines", {}),
        "brain_fraction_rho": rho,
        "brain_fraction_control": control,
    }


def to_markdown(result: dict) -> str:
    s = result["summary"]
    meta = result["meta"]
    lines = [
        "# Detection benchmark: methods beside the baselines",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Load: {meta['load']}  ",
        f"Date: {meta['date']}  ",
        f"Demo: `{meta['demo']}` ({meta['n_test']} test scans: {meta['n_healthy']} healthy, "
        f"{meta['n_anomalous']} anomalous; {meta['n_calibration']} healthy validation scans). CIs: 95 % "
        "bootstrap (volume: stratified by label; slice: resampling scans).",
        "",
        "## Every method's best column, against the baselines",
        "",
        "Best column = highest volume AUROC of the run. Difference = AUROC(learned) − AUROC(baseline's best "
        "column) on the same scans, paired bootstrap 95 % CI; a CI containing 0 does not separate them.",
        "",
        "| run | best column | volume AUROC | volume AP | slice AUROC | voxel AP | vs intensity | vs normative | beats both |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, c in s["best"].items():
        vs = s["baselines"].get(run, {}).get("vs", {})
        cells = []
        for base in ("intensity", "normative"):
            v = vs.get(base)
            cells.append(
                "baseline"
                if run == base
                else (
                    "–"
                    if v is None
                    else f"{v['difference']:+.3f} [{_f(v['difference_ci'][0])}, {_f(v['difference_ci'][1])}]"
                )
            )
        verdict = (
            "baseline"
            if c["method"] in ("intensity", "normative")
            else ("yes" if s["baselines"].get(run, {}).get("beats_all_baselines") else "**no**")
        )
        lines.append(
            f"| {run} | `{c['column']}` | {_ci(c, 'volume_auroc')} | {_ci(c, 'volume_ap')} | "
            f"{_ci(c, 'slice_auroc')} | {_f(c['voxel_ap'])} | {cells[0]} | {cells[1]} | {verdict} |"
        )
    strata_names = sorted(
        {k for e in s["strata"].values() for k in e if ":" in k},
        key=lambda k: (not k.startswith("kind"), {"size:small": 0, "size:medium": 1}.get(k, 2), k),
    )
    if strata_names:
        counts = {
            k: next((e[k]["n_anomalous"] for e in s["strata"].values() if k in e), 0) for k in strata_names
        }
        lines += [
            "",
            "## Volume AUROC per lesion kind and per lesion volume (best column of each run)",
            "",
            "Anomalous scans of one stratum against all healthy test scans; anomalous scans per stratum in brackets. "
            "Sizes: small < 1 cm³, medium 1–10 cm³, large > 10 cm³.",
            "",
            "| run | column | " + " | ".join(f"{k} ({counts[k]})" for k in strata_names) + " |",
            "|---|---|" + "---|" * len(strata_names),
        ]
        for run, e in s["strata"].items():
            lines.append(
                f"| {run} | `{e['column']}` | "
                + " | ".join(_ci(e.get(k, {}), "auroc") for k in strata_names)
                + " |"
            )
    lines += [
        "",
        f"## Brain-fraction control (bound |ρ| ≤ {RHO_BOUND})",
        "",
        "Spearman ρ of every `slice_scores.csv` column with the slice's brain fraction, on the counted slices of "
        "healthy test scans.",
    ]
    control = s["brain_fraction_control"]
    if control:
        lines.append(
            f"The brain fraction as a slice score of its own reaches slice AUROC {_ci(control, 'auroc')}."
        )
    worst = max(
        (abs(r["rho"]) for r in s["brain_fraction_rho"] if r["rho"] is not None and np.isfinite(r["rho"])),
        default=None,
    )
    n_out = sum(not r["within_bound"] for r in s["brain_fraction_rho"])
    lines += [
        f"Largest |ρ|: {_f(worst)}; columns outside the bound: {n_out} of {len(s['brain_fraction_rho'])}.",
        "",
        "The CI resamples whole healthy scans (a scan's size shifts all its slices together, so the slices are not "
        "independent samples).",
        "",
        "| run | slice column | ρ [95 % CI] | healthy slices |",
        "|---|---|---|---|",
    ]
    for r in s["brain_fraction_rho"]:
        ci = r.get("rho_ci")
        ci_text = f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else ""
        lines.append(
            f"| {r['run']} | `{r['column']}` | {_f(r['rho'])}{ci_text}{'' if r['within_bound'] else ' **(outside)**'} | {r['n_slices']} |"
        )
    split = result.get("split_sensitivity") or []
    if split:
        lines += [
            "",
            "### How much ρ depends on which healthy scans calibrate the norms",
            "",
            f"The healthy validation and test scans pooled and split at random {split[0]['n_splits']} times into "
            f"{split[0]['n_calibration']} for the norms and {split[0]['n_evaluation']} to measure ρ on "
            "(`split_sensitivity`): the demo's own split, and the mean and SD over the random splits. An SD near the "
            "bound means the row above is one draw of a quantity that subject sampling moves by that much.",
            "",
            "| run | slice column | ρ (this split) | mean over splits | SD | splits within the bound |",
            "|---|---|---|---|---|---|",
        ]
        for r in split:
            lines.append(
                f"| {r['run']} | `{r['column']}` | {_f(r['rho_this_split'])} | {_f(r['mean'])} | {_f(r['sd'])} | "
                f"{r['within_bound']:.0%} |"
            )
    lines += [
        "",
        "## Every column",
        "",
        "| run | column | volume AUROC | volume AP | slice AUROC | voxel AP | voxel best Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in s["columns"]:
        lines.append(
            f"| {c['run']} | `{c['column']}` | {_ci(c, 'volume_auroc')} | {_ci(c, 'volume_ap')} | "
            f"{_ci(c, 'slice_auroc')} | {_f(c['voxel_ap'])} | {_f(c['voxel_best_dice'])} |"
        )
    real = result.get("real")
    if real:
        lines += [
            "",
            "## Real cases (`../shared/data`), scored by the demo-trained models",
            "",
            "Slice AUROC inside each scan (lesion vs lesion-free counted slices of the same scan): the best slice "
            "column of each run per case, and the raw-intensity voxel AP next to chance (lesion fraction of the brain) "
            "and each run's best map. Full tables: `docs/benchmarks/real_data.md` (same numbers, same models).",
            "",
            "| case | " + " | ".join(real["runs"]) + " | chance AP | raw intensity AP | best map AP (run) |",
            "|---|" + "---|" * (len(real["runs"]) + 3),
        ]
        for sid in real["cases"]:
            if sid not in real["baseline_intensity"]:
                continue
            cells = []
            for run in real["runs"]:
                entries = real["slice"].get(run, {}).get(sid, {})
                vals = [(e["auroc"], col) for col, e in entries.items() if e.get("auroc") is not None]
                cells.append(f"{_f(max(vals)[0])}" if vals else "–")
            base = real["baseline_intensity"][sid]
            maps = [
                (v["ap"], f"{run} {m}")
                for run in real["runs"]
                for m, v in real["voxel"].get(run, {}).get(sid, {}).items()
            ]
            best_map = max(maps) if maps else None
            lines.append(
                f"| {sid} | "
                + " | ".join(cells)
                + f" | {_f(base['prevalence'], 4)} | {_f(base['ap'])} | "
                + (f"{_f(best_map[0])} ({best_map[1]})" if best_map else "–")
                + " |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--demo",
        default=str(REPO / "demo-out"),
        help="a `mri-anomaly demo --out` folder (the demo is run there first if it is not finished)",
    )
    default_data = Path(os.environ.get("MRI_ANOMALY_SHARED_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument(
        "--data", default=str(default_data), help="the real cases (../shared/data); skipped if absent"
    )
    parser.add_argument(
        "--real-out",
        default=str(Path(tempfile.gettempdir()) / "mri-anomaly-detection-real"),
        help="scores and maps of the real cases go here",
    )
    parser.add_argument(
        "--docs", default=str(REPO / "docs" / "benchmarks"), help="where detection.md/json go"
    )
    parser.add_argument(
        "--max-voxels", type=int, default=500_000, help="brain voxels per real case for voxel metrics"
    )
    args = parser.parse_args(argv)

    from mri_anomaly.evaluation.evaluate import evaluate
    from mri_anomaly.pipeline import DEMO_RUNS

    demo = Path(args.demo)
    load_start = os.getloadavg()[0]
    t0 = time.time()
    demo_seconds = ensure_demo(demo)
    metrics_path = demo / "report" / "metrics.json"
    if not metrics_path.is_file():
        names = [r.name for r in DEMO_RUNS]
        evaluate(
            [demo / "scores" / n for n in names],
            demo / "data" / "datalist.json",
            demo / "report",
            names=names,
            report=True,
        )
    metrics = json.loads(metrics_path.read_text())
    summary = summarise(metrics)
    split = split_sensitivity(demo)
    real = None
    data = Path(args.data)
    if data.is_dir():
        runs = [r.name for r in DEMO_RUNS if (demo / "runs" / r.name / "checkpoint.pt").is_file()]
        real = score_real_cases(demo, data, Path(args.real_out), runs, args.max_voxels)
    else:
        print(f"note: {data} not found: the real cases are left out", file=sys.stderr)
    any_run = next(iter(metrics["runs"].values()))
    command = "python benchmarks/detection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "meta": {
            "command": command.strip(),
            "demo": str(demo),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
            "load": f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
            "seconds": round(time.time() - t0, 1),
            "demo_seconds": round(demo_seconds, 1),
            "n_test": any_run.get("n_labelled"),
            "n_anomalous": any_run.get("n_anomalous"),
            "n_healthy": (any_run.get("n_labelled") or 0) - (any_run.get("n_anomalous") or 0),
            "n_calibration": any_run.get("n_calibration"),
            "cases": [c["subject_id"] for c in real_cases(data)] if data.is_dir() else [],
        },
        "summary": summary,
        "split_sensitivity": split,
        "real": real,
    }
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "detection.json").write_text(json.dumps(result, indent=2, default=float))
    (docs / "detection.md").write_text(to_markdown(result))
    if real is not None:  # the per-case tables of the same models, in the real-data benchmark's layout
        real["machine"] = result["meta"]["machine"] + f", load average at end {os.getloadavg()[0]:.1f}"
        (docs / "real_data.json").write_text(json.dumps(real, indent=2))
        (docs / "real_data.md").write_text(
            real_data_markdown(
                real, real_cases(data), argparse.Namespace(demo=str(demo), command=command.strip())
            )
        )
    print(to_markdown(result))
    print(f"wrote {docs / 'detection.md'} and {docs / 'detection.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
