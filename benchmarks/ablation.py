"""Ablations on the demo cohort: histogram standardisation and training augmentation, on and off.

Trains the demo's 2D Glow ratio, latent-norm AE and normative baseline with the shipped configs and with one
option changed, on the same cohort, scores the test scans and the real cases of ``../shared/data``, and prints
one table per question:

* ``-hist``: ``preprocessing.intensity.standardize=histogram`` (Nyúl–Udupa landmarks fitted on the healthy
  training scans, ``mri_anomaly.data.histogram``);
* ``-aug``: ``train.augment=true`` (``mri_anomaly.data.augmentation``).

Demo rows: volume AUROC of each run's two map scores (``<map>_q999`` and ``<map>_top200mm3``, the columns the runs
choose between, ``mri_anomaly.scoring.maps``) with their 95 % bootstrap CIs, each variant's paired AUROC difference
from the shipped run's same column on the same test scans (``variant_differences``), and the voxel AP of the map
(from the demo's ``report/metrics.json``). Real rows: slice AUROC inside each scan of the run's slice
score and the voxel AP of its map (``benchmarks/real_data.py``).

Usage::

    python benchmarks/ablation.py --out ablation-out [--cohort DEMO_OUT/data [--reuse-shipped]] [--data ../shared/data]

``--cohort`` reuses a finished demo's cohort (its ``data/`` folder) instead of making one, and with
``--reuse-shipped`` its trained and scored runs where the ablation defines them as the demo does; the runs resume,
so a second call only rebuilds the tables. Writes ``docs/benchmarks/ablation.md`` and ``.json`` with the command,
machine, load and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model  # noqa: E402
from mri_anomaly.scoring.maps import MAP_QUANTILE, MAP_TOP_VOLUME  # noqa: E402
from real_data import default_data_dir, score_real_cases  # noqa: E402

REUSED_FILE = "ablation_reused.json"
MAP_SUFFIXES = (MAP_QUANTILE[0], MAP_TOP_VOLUME[0])
HIST = ("preprocessing.intensity.standardize=histogram",)
AUG = ("train.augment=true",)


def ablation_runs():
    from mri_anomaly.pipeline import _GLOW2D_RATIO, DemoRun

    return (
        DemoRun("glow2d-ratio", "glow2d-slices.yaml", _GLOW2D_RATIO),
        DemoRun("glow2d-ratio-hist", "glow2d-slices.yaml", _GLOW2D_RATIO + HIST),
        DemoRun("latent-norm-ae-2d", "latent-norm-ae-2d.yaml"),
        DemoRun("latent-norm-ae-2d-hist", "latent-norm-ae-2d.yaml", HIST),
        DemoRun("latent-norm-ae-2d-aug", "latent-norm-ae-2d.yaml", AUG),
        DemoRun("intensity", "intensity.yaml"),
        DemoRun("normative", "normative.yaml"),
        DemoRun("normative-hist", "normative.yaml", HIST),
    )


VARIANT_OF = {
    "glow2d-ratio-hist": "glow2d-ratio",
    "latent-norm-ae-2d-hist": "latent-norm-ae-2d",
    "latent-norm-ae-2d-aug": "latent-norm-ae-2d",
    "normative-hist": "normative",
}


def variant_differences(demo: Path, variant_of: dict[str, str], n_resamples: int = 1000) -> dict[str, dict]:
    """Each variant's map columns against its shipped run's same column on the demo's test scans.

    Returns ``{"<variant>/<column>": {"auroc_difference", "auroc_difference_ci", "n", ...}}``: AUROC(variant) −
    AUROC(shipped), paired over the same scans, with a stratified bootstrap 95 % CI
    (``auroc_difference_with_ci``). Variants or shipped runs without scores are skipped.
    """
    import numpy as np
    from mri_anomaly.evaluation.bootstrap import auroc_difference_with_ci
    from mri_anomaly.evaluation.levels import labelled_scans
    from mri_anomaly.evaluation.score_tables import attach_datalist, datalist_lookup, load_score_tables

    # the raw sections: only labels are read here, and the images need not be where the datalist says
    lookup = datalist_lookup(json.loads((demo / "data" / "datalist.json").read_text()))

    def test_scans(run: str):
        ss = load_score_tables(demo / "scores" / run, run)
        attach_datalist(ss, lookup)
        df = labelled_scans(ss.volumes[ss.volumes["section"] == "test"])
        if df["subject_id"].duplicated().any():
            raise ValueError(f"{demo / 'scores' / run / 'scores.csv'}: a test subject_id appears twice")
        return df, ss.score_columns

    out: dict[str, dict] = {}
    for variant, shipped in variant_of.items():
        if not all((demo / "scores" / r / "scores.csv").is_file() for r in (variant, shipped)):
            continue
        (a, columns_a), (b, columns_b) = test_scans(variant), test_scans(shipped)
        both = a.merge(b, on="subject_id", suffixes=("@a", "@b"))
        if len(both) != len(a) or len(both) != len(b):
            raise ValueError(f"{variant} and {shipped} scored different test scans ({len(a)}, {len(b)})")
        if not (both["label@a"] == both["label@b"]).all():
            raise ValueError(f"{variant} and {shipped}: the same scan has two labels")
        for column in columns_a:
            if column not in columns_b or not any(column.endswith(f"_{s}") for s in MAP_SUFFIXES):
                continue
            out[f"{variant}/{column}"] = auroc_difference_with_ci(
                both["label@a"].to_numpy(int),
                [(both[f"{column}@a"].to_numpy(np.float64), both[f"{column}@b"].to_numpy(np.float64))],
                n_resamples=n_resamples,
            )
    return out


def reuse_shipped_runs(demo: Path, out: Path, runs) -> list[str]:
    """Copy a finished demo's runs that ``runs`` defines exactly as the demo does into the ablation folder ``out``.

    A run is reused when its name, config file and overrides equal :data:`~mri_anomaly.pipeline.DEMO_RUNS`' entry
    and the demo finished both its stages: ``runs/<name>``, ``scores/<name>`` and the two stages' state entries
    are copied, so ``run_demo`` resumes past them (same code, same cohort, same seed: the run it would train).
    Returns the names reused.
    """
    from mri_anomaly.pipeline import DEMO_RUNS, STATE_FILE

    demo_state = json.loads((demo / STATE_FILE).read_text())
    state = json.loads((out / STATE_FILE).read_text())
    shipped = {(r.name, r.config, tuple(r.overrides)) for r in DEMO_RUNS}
    reused = []
    for r in runs:
        stages = [f"train:{r.name}", f"score:{r.name}"]
        if (r.name, r.config, tuple(r.overrides)) not in shipped:
            continue
        if not all(demo_state.get(k, {}).get("done") for k in stages) or any(k in state for k in stages):
            continue
        for folder in ("runs", "scores"):
            shutil.copytree(demo / folder / r.name, out / folder / r.name)
        state.update({k: demo_state[k] for k in stages})
        reused.append(r.name)
    (out / STATE_FILE).write_text(json.dumps(state))
    return reused


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _signed(v) -> str:
    return "–" if v is None else f"{v:+.3f}".replace("-", "−")


def tables(metrics: dict, real: dict | None, differences: dict | None = None) -> tuple[str, dict]:
    """Markdown tables and their data from the demo's metrics, the real-case scores and ``variant_differences``."""
    demo_rows, data = [], {"demo": {}, "real": {}}
    for key, v in sorted(metrics["volume"].items()):
        run, column = key.split("/", 1)
        suffix = next((s for s in MAP_SUFFIXES if column.endswith(f"_{s}")), None)
        if suffix is None:
            continue
        map_name = column[: -len(suffix) - 1]
        ap = (metrics.get("voxel") or {}).get(f"{run}/{map_name}", {}).get("ap")
        ci = v.get("auroc_ci") or [None, None]
        d = (differences or {}).get(key)
        vs = "–"
        if d is not None:
            dci = d.get("auroc_difference_ci") or [None, None]
            vs = f"{_signed(d['auroc_difference'])} [{_signed(dci[0])}, {_signed(dci[1])}]"
        demo_rows.append(
            f"| {run} | `{column}` | {_f(v['auroc'])} [{_f(ci[0])}, {_f(ci[1])}] | {vs} | {_f(ap)} |"
        )
        data["demo"][key] = {"auroc": v["auroc"], "auroc_ci": ci, "voxel_ap": ap}
        if d is not None:
            data["demo"][key]["vs_shipped"] = {
                "shipped_run": VARIANT_OF.get(run),
                "auroc_difference": d["auroc_difference"],
                "auroc_difference_ci": d.get("auroc_difference_ci"),
            }
    first = next(iter(metrics["volume"].values()), {})
    n, n_anomalous = first.get("n", 0), first.get("n_anomalous", 0)
    lines = [
        f"## Demo test scans ({n - n_anomalous} healthy, {n_anomalous} anomalous)",
        "",
        "| run | map score | volume AUROC [95 % CI] | vs the shipped run, same column (paired 95 % CI) | voxel AP |",
        "|---|---|---|---|---|",
        *demo_rows,
    ]
    if real:
        cases = [c for c in real["cases"] if any(c in (real["voxel"].get(r) or {}) for r in real["runs"])]
        lines += [
            "",
            "## Real cases: slice AUROC inside the scan / voxel AP of the map",
            "",
            "| run | " + " | ".join(cases) + " |",
            "|---|" + "---|" * len(cases),
        ]
        for run in real["runs"]:
            cells = []
            for case in cases:
                sl = (real["slice"].get(run) or {}).get(case) or {}
                vx = (real["voxel"].get(run) or {}).get(case) or {}
                s = max(
                    (e["auroc"] for e in sl.values() if isinstance(e, dict) and e.get("auroc") is not None),
                    default=None,
                )
                a = max(
                    (e["ap"] for e in vx.values() if isinstance(e, dict) and e.get("ap") is not None),
                    default=None,
                )
                cells.append(f"{_f(s)} / {_f(a)}")
                data["real"].setdefault(run, {})[case] = {"slice_auroc": s, "voxel_ap": a}
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Slice AUROC: the best slice column of the run; voxel AP: its best map (chance is the lesion's share of "
            "the brain, see `real_data.md`).",
        ]
    return "\n".join(lines), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the ablation's demo folder (runs resume)")
    parser.add_argument("--cohort", type=Path, help="a finished demo's data/ folder to reuse")
    parser.add_argument(
        "--reuse-shipped",
        action="store_true",
        help="with --cohort: take the demo's own trained and scored runs where the ablation's are the same",
    )
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)

    from mri_anomaly.pipeline import STATE_FILE, run_demo

    runs = ablation_runs()
    load_start = os.getloadavg()
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    state = args.out / STATE_FILE
    if args.cohort is not None and not state.is_file():
        shutil.copytree(args.cohort, args.out / "data", dirs_exist_ok=True)
        cohort_state = json.loads((args.cohort.parent / STATE_FILE).read_text())["data"]
        settings = {"seed": 0, "smoke": False, "runs": [r.name for r in runs]}
        state.write_text(json.dumps({"settings": settings, "data": cohort_state}))
        if args.reuse_shipped:
            reused = reuse_shipped_runs(args.cohort.parent, args.out, runs)
            (args.out / REUSED_FILE).write_text(json.dumps({"demo": str(args.cohort.parent), "runs": reused}))
    reused_note = ""
    if (args.out / REUSED_FILE).is_file():
        reused = json.loads((args.out / REUSED_FILE).read_text())
        reused_note = f" Taken trained and scored from the demo `{reused['demo']}`: " + (
            ", ".join(f"`{r}`" for r in reused["runs"]) or "none"
        )
        reused_note += "."
    run_demo(args.out, runs=runs, progress=False)
    metrics = json.loads((args.out / "report" / "metrics.json").read_text())
    real = None
    if args.data.is_dir():
        real = score_real_cases(args.out, args.data, args.out / "real", [r.name for r in runs], 500_000)
    body, data = tables(metrics, real, variant_differences(args.out, VARIANT_OF))
    command = "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = "\n".join(
        [
            "# Ablations: histogram standardisation and training augmentation",
            "",
            f"Command: `{command}`  ",
            f"Machine: {cpu_model()}, {os.cpu_count()} CPUs  ",
            f"Load: 1-minute load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end  ",
            f"Date: {now}; {time.time() - t0:.0f} s (runs already trained are reused)  ",
            "Runs: the shipped configs (`glow2d-ratio` as in the demo); `-hist`: "
            "`preprocessing.intensity.standardize=histogram`; `-aug`: `train.augment=true`. Same cohort, same seed."
            + reused_note,
            "",
            body,
            "",
        ]
    )
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "ablation.md").write_text(md)
    (args.docs / "ablation.json").write_text(
        json.dumps({"command": command, "date": now, **data}, indent=2) + "\n"
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
