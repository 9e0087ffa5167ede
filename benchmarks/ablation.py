"""Ablations on the demo cohort: histogram standardisation and training augmentation, on and off.

Trains the demo's 2D Glow ratio, latent-norm AE and normative baseline with the shipped configs and with one
option changed, on the same cohort, scores the test scans and the real cases of ``../shared/data``, and prints
one table per question:

* ``-hist``: ``preprocessing.intensity.standardize=histogram`` (Nyúl–Udupa landmarks fitted on the healthy
  training scans, ``mri_anomaly.data.histogram``);
* ``-aug``: ``train.augment=true`` (``mri_anomaly.data.augmentation``).

Demo rows: volume AUROC of each run's map score (``<map>_q999``) with its 95 % bootstrap CI, and the voxel AP of
the map (from the demo's ``report/metrics.json``). Real rows: slice AUROC inside each scan of the run's slice
score and the voxel AP of its map (``benchmarks/real_data.py``).

Usage::

    python benchmarks/ablation.py --out ablation-out [--cohort DEMO_OUT/data] [--data ../shared/data]

``--cohort`` reuses a finished demo's cohort (its ``data/`` folder) instead of making one; the runs resume, so a
second call only rebuilds the tables. Writes ``docs/benchmarks/ablation.md`` and ``.json`` with the command,
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
from real_data import default_data_dir, score_real_cases  # noqa: E402

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


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def tables(metrics: dict, real: dict | None) -> tuple[str, dict]:
    """Markdown tables and their data from the demo's metrics and the real-case scores."""
    demo_rows, data = [], {"demo": {}, "real": {}}
    for key, v in sorted(metrics["volume"].items()):
        run, column = key.split("/", 1)
        if not column.endswith("_q999"):
            continue
        map_name = column[: -len("_q999")]
        ap = (metrics.get("voxel") or {}).get(f"{run}/{map_name}", {}).get("ap")
        ci = v.get("auroc_ci") or [None, None]
        demo_rows.append(f"| {run} | `{column}` | {_f(v['auroc'])} [{_f(ci[0])}, {_f(ci[1])}] | {_f(ap)} |")
        data["demo"][key] = {"auroc": v["auroc"], "auroc_ci": ci, "voxel_ap": ap}
    first = next(iter(metrics["volume"].values()), {})
    n, n_anomalous = first.get("n", 0), first.get("n_anomalous", 0)
    lines = [
        f"## Demo test scans ({n - n_anomalous} healthy, {n_anomalous} anomalous)",
        "",
        "| run | map score | volume AUROC [95 % CI] | voxel AP |",
        "|---|---|---|---|",
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
    run_demo(args.out, runs=runs, progress=False)
    metrics = json.loads((args.out / "report" / "metrics.json").read_text())
    real = None
    if args.data.is_dir():
        real = score_real_cases(args.out, args.data, args.out / "real", [r.name for r in runs], 500_000)
    body, data = tables(metrics, real)
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
            "`preprocessing.intensity.standardize=histogram`; `-aug`: `train.augment=true`. Same cohort, same seed.",
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
