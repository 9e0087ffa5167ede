"""Ablations on the demo cohort: histogram standardisation, training augmentation and warm-up, on and off.

Trains the demo's 2D and 3D Glow ratio, latent-norm AE and normative baseline with the shipped configs and with one
option changed, on the same cohort, scores the test scans and the real cases of ``../shared/data``, and prints
one table per question:

* ``-hist``: ``preprocessing.intensity.standardize=histogram`` (Nyúl–Udupa landmarks fitted on the healthy
  training scans, ``mri_anomaly.data.histogram``);
* ``-aug``: ``train.augment=true`` (``mri_anomaly.data.augmentation``);
* ``-warmup``: the learning rate ramped linearly over the first 10 steps of each phase (the 2D Glow ratio's 100 and
  100, the 3D Glow ratio's 300 and 150; ``train.phases.<phase>.warmup_steps``; the loss it steadies:
  ``benchmarks/glow_warmup.py``).

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
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, markdown_table  # noqa: E402
from mri_anomaly.scoring.maps import MAP_QUANTILE, MAP_TOP_VOLUME  # noqa: E402
from real_data import default_data_dir, score_real_cases  # noqa: E402

REUSED_FILE = "ablation_reused.json"
SEED_STATE = "seed_state.json"  # mri_anomaly.pipeline.run_seed's state file in DEMO/seeds/<s>/
UNSEEDED = ("intensity", "normative", "normative-hist")  # no trained weights: the same scores at every seed
MAP_SUFFIXES = (MAP_QUANTILE[0], MAP_TOP_VOLUME[0])
HIST = ("preprocessing.intensity.standardize=histogram",)
AUG = ("train.augment=true",)
# the learning rate ramped over the first 10 steps of each of the Glow ratio's two phases
WARMUP = ("train.phases.general.warmup_steps=10", "train.phases.in.warmup_steps=10")


def ablation_runs():
    from mri_anomaly.pipeline import _GLOW2D_RATIO, DemoRun

    return (
        DemoRun("glow2d-ratio", "glow2d-slices.yaml", _GLOW2D_RATIO),
        DemoRun("glow2d-ratio-hist", "glow2d-slices.yaml", _GLOW2D_RATIO + HIST),
        DemoRun("glow2d-ratio-warmup", "glow2d-slices.yaml", _GLOW2D_RATIO + WARMUP),
        DemoRun("glow3d-ratio", "glow3d-ratio.yaml"),
        DemoRun("glow3d-ratio-warmup", "glow3d-ratio.yaml", WARMUP),
        DemoRun("latent-norm-ae-2d", "latent-norm-ae-2d.yaml"),
        DemoRun("latent-norm-ae-2d-hist", "latent-norm-ae-2d.yaml", HIST),
        DemoRun("latent-norm-ae-2d-aug", "latent-norm-ae-2d.yaml", AUG),
        DemoRun("intensity", "intensity.yaml"),
        DemoRun("normative", "normative.yaml"),
        DemoRun("normative-hist", "normative.yaml", HIST),
    )


VARIANT_OF = {
    "glow2d-ratio-hist": "glow2d-ratio",
    "glow2d-ratio-warmup": "glow2d-ratio",
    "glow3d-ratio-warmup": "glow3d-ratio",
    "latent-norm-ae-2d-hist": "latent-norm-ae-2d",
    "latent-norm-ae-2d-aug": "latent-norm-ae-2d",
    "normative-hist": "normative",
}


def _map_name(column: str) -> str | None:
    """The map a volume column is a statistic of (``residual`` of ``residual_q999``), None for other columns."""
    suffix = next((s for s in MAP_SUFFIXES if column.endswith(f"_{s}")), None)
    return None if suffix is None else column[: -len(suffix) - 1]


@functools.lru_cache(maxsize=4)
def _labels_lookup(datalist: Path) -> dict:
    """``datalist_lookup`` of the raw sections, read once per datalist: only labels are read here, and the images
    need not be where the datalist says."""
    from mri_anomaly.evaluation.score_tables import datalist_lookup

    return datalist_lookup(json.loads(datalist.read_text()))


def labelled_test_scores(folder: Path, datalist: Path, run: str):
    """``folder/scores/<run>/scores.csv``'s labelled test scans: ``subject_id``, ``label`` and the map columns; None
    when the table is absent.

    Raises:
        ValueError: a test scan appears twice.
    """
    from mri_anomaly.evaluation.levels import labelled_scans
    from mri_anomaly.evaluation.score_tables import attach_datalist, load_score_tables

    if not (folder / "scores" / run / "scores.csv").is_file():
        return None
    ss = load_score_tables(folder / "scores" / run, run)
    attach_datalist(ss, _labels_lookup(datalist))
    df = labelled_scans(ss.volumes[ss.volumes["section"] == "test"])
    if df["subject_id"].duplicated().any():
        raise ValueError(f"{folder / 'scores' / run / 'scores.csv'}: a test subject_id appears twice")
    return df[["subject_id", "label", *(c for c in ss.score_columns if _map_name(c) is not None)]]


def paired_test_scans(folder: Path, datalist: Path, variant: str, shipped: str):
    """The two runs' scores of the labelled test scans, one row per scan: ``subject_id``, ``label`` and
    ``<column>@a`` (variant) / ``<column>@b`` (shipped) for each map column both have; None when either run has no
    ``folder/scores/<run>/scores.csv``.

    Raises:
        ValueError: the runs scored different test scans, a scan appears twice or has two labels.
    """
    a, b = labelled_test_scores(folder, datalist, variant), labelled_test_scores(folder, datalist, shipped)
    if a is None or b is None:
        return None
    both = a.merge(b, on="subject_id", suffixes=("@a", "@b"))
    if len(both) != len(a) or len(both) != len(b):
        raise ValueError(
            f"{variant} and {shipped} scored different test scans ({len(a)}, {len(b)}) in {folder}"
        )
    if not (both["label@a"] == both["label@b"]).all():
        raise ValueError(f"{variant} and {shipped}: the same scan has two labels in {folder}")
    return both.drop(columns="label@b").rename(columns={"label@a": "label"})


def against_baseline_over_seeds(
    demo: Path,
    seeds: Sequence[int],
    runs: Sequence[str],
    baseline: str = "intensity",
    n_resamples: int = 1000,
) -> dict[str, dict]:
    """Each run's best map column against ``baseline``'s best, per seed and pooled: ``detection``'s
    ``best_column_over_seeds`` on the map columns (both columns chosen at seed 0, the baseline's seed-0 scores
    paired with every seed). Runs scored at fewer than two seeds are skipped.
    Returns ``{run: {"column", "baseline_column", **compare_over_seeds(...)}}``.
    """
    from detection import best_column_over_seeds

    datalist = demo / "data" / "datalist.json"

    def table(df) -> dict:
        return {"volume": df, "score_columns": [c for c in df.columns if c not in ("subject_id", "label")]}

    base = labelled_test_scores(demo, datalist, baseline)
    if base is None:
        return {}
    seed_tables: dict[int, dict[str, dict]] = {}
    for seed in (0, *seeds):
        for run in runs:
            df = labelled_test_scores(demo if seed == 0 else demo / "seeds" / str(seed), datalist, run)
            if df is not None:
                seed_tables.setdefault(seed, {})[run] = table(df)
    best = best_column_over_seeds(seed_tables, {baseline: table(base)}, n_resamples=n_resamples)
    return {
        run: {"column": b["column"], **b["vs_baselines"][baseline]}
        for run, b in best.items()
        if len(b["seeds"]) >= 2
    }


def _columns(both) -> list[str]:
    return [c[:-2] for c in both.columns if c.endswith("@a") and f"{c[:-2]}@b" in both.columns]


def variant_differences(demo: Path, variant_of: dict[str, str], n_resamples: int = 1000) -> dict[str, dict]:
    """Each variant's map columns against its shipped run's same column on the demo's test scans.

    Returns ``{"<variant>/<column>": {"auroc_difference", "auroc_difference_ci", "n", ...}}``: AUROC(variant) −
    AUROC(shipped), paired over the same scans, with a stratified bootstrap 95 % CI
    (``auroc_difference_with_ci``). Variants or shipped runs without scores are skipped.
    """
    import numpy as np
    from mri_anomaly.evaluation.bootstrap import auroc_difference_with_ci

    out: dict[str, dict] = {}
    for variant, shipped in variant_of.items():
        both = paired_test_scans(demo, demo / "data" / "datalist.json", variant, shipped)
        if both is None:
            continue
        for column in _columns(both):
            out[f"{variant}/{column}"] = auroc_difference_with_ci(
                both["label"].to_numpy(int),
                [(both[f"{column}@a"].to_numpy(np.float64), both[f"{column}@b"].to_numpy(np.float64))],
                n_resamples=n_resamples,
            )
    return out


def variant_differences_over_seeds(
    demo: Path, seeds: Sequence[int], variant_of: dict[str, str], n_resamples: int = 1000
) -> dict[str, dict]:
    """The same comparison at every training seed (seed 0: ``demo``; seed s: ``demo/seeds/<s>``), per seed and
    pooled over the seeds every pair has (``detection.compare_over_seeds``: the paired difference per seed, mean
    ± SD, the seed-averaged difference with a bootstrap CI over scans, and the verdict "holds" when the variant is
    ahead at every seed with the pooled CI above 0). Pairs found at fewer than two seeds are skipped."""
    from detection import compare_over_seeds

    datalist = demo / "data" / "datalist.json"
    out: dict[str, dict] = {}
    for variant, shipped in variant_of.items():
        tables = {}
        for seed in (0, *seeds):
            folder = demo if seed == 0 else demo / "seeds" / str(seed)
            both = paired_test_scans(folder, datalist, variant, shipped)
            if both is not None:
                tables[seed] = both
        if len(tables) < 2:
            continue
        for column in _columns(tables[min(tables)]):
            out[f"{variant}/{column}"] = {
                "shipped_run": shipped,
                **compare_over_seeds(tables, f"{column}@a", f"{column}@b", n_resamples=n_resamples),
            }
    return out


def reuse_shipped_runs(demo: Path, out: Path, runs, state_file: str | None = None) -> list[str]:
    """Copy a finished demo's runs that ``runs`` defines exactly as the demo does into the ablation folder ``out``.

    A run is reused when its name, config file and overrides equal :data:`~mri_anomaly.pipeline.DEMO_RUNS`' entry
    and the demo finished both its stages: ``runs/<name>``, ``scores/<name>`` and the two stages' state entries
    (``state_file``: the demo's ``demo_state.json``, default, or a seed's ``seed_state.json``) are copied, so
    ``run_demo`` / ``run_seed`` resume past them (same code, same cohort, same seed: the run it would train).
    Returns the names reused.
    """
    from mri_anomaly.pipeline import DEMO_RUNS, STATE_FILE

    state_file = state_file or STATE_FILE
    if not (demo / state_file).is_file():
        return []
    demo_state = json.loads((demo / state_file).read_text())
    out.mkdir(parents=True, exist_ok=True)
    state = json.loads((out / state_file).read_text()) if (out / state_file).is_file() else {}
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
    (out / state_file).write_text(json.dumps(state))
    return reused


def seeds_note(out: Path, seeds: Sequence[int]) -> str:
    """Where the runs of each extra seed came from, from ``out/ablation_reused.json``: taken trained from the
    demo's ``seeds/<s>/`` (made by ``detection.py --seeds``) or trained here."""
    record = json.loads((out / REUSED_FILE).read_text()) if (out / REUSED_FILE).is_file() else {}
    taken = record.get("seeds", {})
    parts = []
    for seed in seeds:
        names = taken.get(str(seed), [])
        if names:
            listed = ", ".join(f"`{n}`" for n in names)
            parts.append(f"seed {seed}: {listed} from the demo's `seeds/{seed}/`, the rest trained here")
        else:
            parts.append(f"seed {seed}: all trained here")
    return "Seeds: " + "; ".join(parts) + "."


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _signed(v) -> str:
    return "–" if v is None else f"{v:+.3f}".replace("-", "−")


def _pooled_cells(c: dict) -> list[str]:
    """``compare_over_seeds``' pooled difference with its CI, and its verdict, as two table cells."""
    ci = c["pooled"].get("difference_ci")
    pooled = f"{_signed(c['pooled']['difference'])} [{_signed(ci[0])}, {_signed(ci[1])}]" if ci else "–"
    return [pooled, "**holds**" if c["verdict"] == "holds" else "no"]


def seeds_lines(over_seeds: dict) -> list[str]:
    """The "over training seeds" section from ``variant_differences_over_seeds``."""
    rows = []
    for key, c in over_seeds.items():
        variant, column = key.split("/", 1)
        rows.append(
            [
                variant,
                f"`{c['shipped_run']}`",
                f"`{column}`",
                f"{c['mean']['auroc_b']:.3f} ± {c['sd']['auroc_b']:.3f}",
                f"{c['mean']['auroc_a']:.3f} ± {c['sd']['auroc_a']:.3f}",
                " / ".join(_signed(p["difference"]) for p in c["per_seed"]),
                *_pooled_cells(c),
            ]
        )
    seeds = sorted({p["seed"] for c in over_seeds.values() for p in c["per_seed"]})
    header = ["variant", "shipped run", "column", "shipped AUROC, mean ± SD", "variant AUROC, mean ± SD",
              "variant − shipped per seed", "pooled [95 % CI]", "variant ahead at every seed, pooled CI > 0"]  # fmt: skip
    return [
        f"## Over training seeds {', '.join(map(str, seeds))} (the runs that train; demo test scans)",
        "",
        "Each seed retrains the variant and its shipped run with the config's `seed`; the difference is paired on the "
        "same test scans per seed, and pooled: the seed-averaged difference with a bootstrap CI over scans "
        "(`detection.compare_over_seeds`, 1000 resamples). One run's difference is one draw of these.",
        "",
        markdown_table(header, rows),
    ]


def baseline_lines(against: dict) -> list[str]:
    """The "against the baseline over seeds" section from ``against_baseline_over_seeds``."""
    rows = []
    for run, c in against.items():
        rows.append(
            [
                run,
                f"`{c['column']}`",
                " / ".join(f"{p['auroc_a']:.3f}" for p in c["per_seed"]),
                f"{c['mean']['auroc_a']:.3f} ± {c['sd']['auroc_a']:.3f}",
                " / ".join(_signed(p["difference"]) for p in c["per_seed"]),
                *_pooled_cells(c),
            ]
        )
    first = next(iter(against.values()))
    base = f"`{first['baseline_column']}` ({first['mean']['auroc_b']:.3f})"
    header = ["run", "column (best at seed 0)", "AUROC per seed", "mean ± SD", f"− {base} per seed",
              "pooled [95 % CI]", "ahead at every seed, pooled CI > 0"]  # fmt: skip
    return [
        "## Against the `intensity` baseline over the same seeds",
        "",
        "Each run's best map column at seed 0 against `intensity`'s best (it has no training seed: its scores are "
        "paired with every seed), the detection benchmark's rule: ahead at every seed with the pooled CI above 0.",
        "",
        markdown_table(header, rows),
    ]


def real_seeds_lines(over: dict, cases: Sequence[str]) -> tuple[list[str], dict]:
    """The real cases over seeds from ``score_real_cases(..., seeds=)``'s ``over_seeds``: per run and case, the
    best slice column's AUROC and the best map's AP at each seed, as mean (min–max) over the seeds."""

    def per_seed_best(by_column: dict) -> list[float | None]:
        n = max((len(v) for v in by_column.values()), default=0)
        best = []
        for i in range(n):
            values = [v[i] for v in by_column.values() if i < len(v) and v[i] is not None]
            best.append(max(values) if values else None)
        return best

    def cell(values: list[float | None]) -> tuple[str, dict | None]:
        v = [x for x in values if x is not None]
        if not v:
            return "–", None
        return f"{sum(v) / len(v):.2f} ({min(v):.2f}–{max(v):.2f})", {
            "mean": sum(v) / len(v),
            "per_seed": values,
        }

    rows, data = [], {}
    for run, entry in over.items():
        cells = []
        for case in cases:
            s_text, s_data = cell(per_seed_best(entry["slice"].get(case, {})))
            a_text, a_data = cell(per_seed_best(entry["voxel"].get(case, {})))
            cells.append(f"{s_text} / {a_text}")
            data.setdefault(run, {})[case] = {"slice_auroc": s_data, "voxel_ap": a_data}
        rows.append([f"{run} (seeds {', '.join(map(str, entry['seeds']))})", *cells])
    return [
        "## Real cases over training seeds: slice AUROC / voxel AP, mean (min–max)",
        "",
        "Per seed the best slice column and the best map of the run on the case, as in the table above; then the "
        "mean and range over the seeds. One training run's per-case numbers move by up to 0.3 from seed to seed.",
        "",
        markdown_table(["run", *cases], rows),
    ], data


def tables(
    metrics: dict,
    real: dict | None,
    differences: dict | None = None,
    over_seeds: dict | None = None,
    against: dict | None = None,
) -> tuple[str, dict]:
    """Markdown tables and their data from the demo's metrics, the real-case scores, ``variant_differences``,
    ``variant_differences_over_seeds`` and ``against_baseline_over_seeds``."""
    demo_rows, data = [], {"demo": {}, "real": {}}
    for key, v in sorted(metrics["volume"].items()):
        run, column = key.split("/", 1)
        map_name = _map_name(column)
        if map_name is None:
            continue
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
    if over_seeds:
        lines += ["", *seeds_lines(over_seeds)]
        data["over_seeds"] = over_seeds
    if against:
        lines += ["", *baseline_lines(against)]
        data["against_intensity_over_seeds"] = against
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
        if real.get("over_seeds"):
            real_lines, data["real_over_seeds"] = real_seeds_lines(real["over_seeds"], cases)
            lines += ["", *real_lines]
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
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[],
        help="extra training seeds (e.g. 1 2): the runs that train are retrained with config seed=<s> in "
        "OUT/seeds/<s>/ and each variant is compared with its shipped run over seeds 0 and these",
    )
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)

    from mri_anomaly.pipeline import STATE_FILE, run_demo, run_seed

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
    elif state.is_file():
        # an ablation folder made before runs were added to the ablation: the runs it has resume, the new ones train
        current = json.loads(state.read_text())
        names = [r.name for r in runs]
        if set(current["settings"].get("runs", [])) < set(names):
            current["settings"]["runs"] = names
            current.pop("evaluate", None)
            state.write_text(json.dumps(current, indent=2))
    if args.cohort is not None and args.reuse_shipped:
        reused = reuse_shipped_runs(args.cohort.parent, args.out, runs)  # the runs not in the state yet
        before = (
            json.loads((args.out / REUSED_FILE).read_text()) if (args.out / REUSED_FILE).is_file() else {}
        )
        reused = list(before.get("runs", [])) + [r for r in reused if r not in before.get("runs", [])]
        (args.out / REUSED_FILE).write_text(json.dumps({"demo": str(args.cohort.parent), "runs": reused}))
    reused_note = ""
    if (args.out / REUSED_FILE).is_file():
        reused = json.loads((args.out / REUSED_FILE).read_text())
        reused_note = f" Taken trained and scored from the demo `{reused['demo']}`: " + (
            ", ".join(f"`{r}`" for r in reused["runs"]) or "none"
        )
        reused_note += "."
    run_demo(args.out, runs=runs, progress=False)
    seeded = [r for r in runs if r.name not in UNSEEDED]
    for seed in args.seeds:
        if args.reuse_shipped and args.cohort is not None:
            taken = reuse_shipped_runs(
                args.cohort.parent / "seeds" / str(seed), args.out / "seeds" / str(seed), seeded, SEED_STATE
            )
            if taken:
                print(f"seed {seed}: reused from the demo: {', '.join(taken)}", file=sys.stderr)
                record = json.loads((args.out / REUSED_FILE).read_text())
                record.setdefault("seeds", {}).setdefault(str(seed), []).extend(taken)
                (args.out / REUSED_FILE).write_text(json.dumps(record))
        run_seed(args.out, seed, runs=seeded, progress=False)
    if args.seeds:
        reused_note += " " + seeds_note(args.out, args.seeds)
    metrics = json.loads((args.out / "report" / "metrics.json").read_text())
    real = None
    if args.data.is_dir():
        real = score_real_cases(
            args.out, args.data, args.out / "real", [r.name for r in runs], 500_000, seeds=args.seeds
        )
    over_seeds = variant_differences_over_seeds(args.out, args.seeds, VARIANT_OF) if args.seeds else None
    against = (
        against_baseline_over_seeds(args.out, args.seeds, [r.name for r in seeded]) if args.seeds else None
    )
    body, data = tables(metrics, real, variant_differences(args.out, VARIANT_OF), over_seeds, against)
    command = "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = "\n".join(
        [
            "# Ablations: histogram standardisation, training augmentation and warm-up",
            "",
            f"Command: `{command}`  ",
            f"Machine: {cpu_model()}, {os.cpu_count()} CPUs  ",
            f"Load: 1-minute load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end  ",
            f"Date: {now}; {time.time() - t0:.0f} s (runs already trained are reused)  ",
            "Runs: the shipped configs (`glow2d-ratio` as in the demo); `-hist`: "
            "`preprocessing.intensity.standardize=histogram`; `-aug`: `train.augment=true`; `-warmup`: "
            "`train.phases.general.warmup_steps=10`, `train.phases.in.warmup_steps=10`. Same cohort, same seed."
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
