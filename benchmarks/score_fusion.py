"""Runs' scores fused: does one run make up for another where it fails?

``ceilings.md`` reads the demo's misses as runs failing in different places: the autoencoder's residual ranks the
scans whose lesion leaves the scan's healthy intensity range (0.97) and misses the faint and dark lesions within
it, where the ``normative`` z-map and the 3D Glow find the dark focal lesions (0.78–0.81) and rank the bright
ones worse. A screening user would combine them. This script measures whether that helps, from the demo's score
tables alone (nothing is trained or rescored):

* each run's volume column is its best one at the demo's seed (``detection.py``'s rule, the column of its
  tables), for the learned runs at every seed of ``--seeds`` (``detection.py --seeds``), for the unseeded
  baselines the demo's own at every seed;
* each column is standardised per seed against the demo's healthy validation scans (the scans ``evaluate``
  sets thresholds on, never the test scans): ``z = (s − median) / (1.4826 · MAD)``, so a score 3 is equally
  rare among healthy scans whatever the run;
* a fused score of a set of runs is the **max** of their z (a scan is flagged when any run flags it, the
  screening rule) or their **mean**; every pair of runs is fused, and the five learned runs together.

Reported on the demo's test scans, for each fused score and each run alone: volume AUROC per seed and its mean;
the paired difference with ``intensity`` and with the two baselines fused by the same rule (the bar a fused
learned score has to clear: thresholding and the z-map are combined as easily), seed-averaged with a bootstrap
CI over scans (``detection.compare_over_seeds``); the AUROC on each scan class of ``ceilings.py`` (lesion within
the scan's healthy range, with its MS and dark focal scans apart, and beyond it) and on each lesion kind; each
run's z-score distribution (healthy tail, share of each class above it). The same for the slices: each run's best
slice column, already a robust z per slice position (what ``score`` writes), fused the same way, slice AUROC and
paired differences with a bootstrap over scans.

Usage::

    python benchmarks/score_fusion.py --demo demo-out [--seeds 1 2] [--reading reading.md]

Writes ``docs/benchmarks/score_fusion.md`` and ``.json`` with the command, machine, load and date.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    demo_benchmark_parser,
    demo_seeds,
    markdown_table,
    meta_lines,
    reading_lines,
    run_meta,
    write_doc,
)
from ceilings import CLASSES, counted_test_classes, demo_config, volume_class_aurocs  # noqa: E402
from denoising_ae import KIND_NAMES, KINDS, kind_aurocs  # noqa: E402
from detection import best_column_over_seeds, compare_over_seeds, load_seed_tables, seed_folder  # noqa: E402
from real_data import FLAIR_CASES, real_cases, score_run, slice_auroc_within, spread  # noqa: E402

LEARNED = ("glow2d-ratio", "glow3d-ratio", "deep-svdd-2d", "deep-sad-2d", "latent-norm-ae-2d")
BASELINES = ("intensity", "normative")
RULES = ("max", "mean")
MAD_TO_SD = 1.4826
SLICE_KEY = ("subject_id", "slice", "slice_label")
SCAN_CLASSES = (CLASSES[1], f"{CLASSES[1]}:ms", f"{CLASSES[1]}:focal_opposite", CLASSES[2])
NAMES = {
    "glow2d-ratio": "2D Glow",
    "glow3d-ratio": "3D Glow",
    "deep-svdd-2d": "Deep SVDD",
    "deep-sad-2d": "Deep SAD",
    "latent-norm-ae-2d": "AE",
    "intensity": "`intensity`",
    "normative": "`normative`",
}


def robust_z(scores: np.ndarray, healthy: np.ndarray) -> np.ndarray:
    """``(scores − median(healthy)) / (1.4826 · MAD(healthy))``; a non-finite score stays most anomalous (+inf).

    Raises:
        ValueError: ``healthy`` has no spread (every healthy scan scores the same): no z-score exists."""
    healthy = np.asarray(healthy, dtype=np.float64)
    healthy = healthy[np.isfinite(healthy)]
    center = float(np.median(healthy))
    scale = MAD_TO_SD * float(np.median(np.abs(healthy - center)))
    if not scale > 0:
        raise ValueError("the healthy scans' scores have no spread (MAD 0): they cannot standardise a score")
    z = (np.asarray(scores, dtype=np.float64) - center) / scale
    return np.where(np.isfinite(z), z, np.inf)


def fuse(z: Sequence[np.ndarray], rule: str) -> np.ndarray:
    """The fused score of ``z`` (each (N,), standardised): their element-wise ``"max"`` or ``"mean"``."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    stack = np.vstack([np.asarray(v, dtype=np.float64) for v in z])
    return stack.max(axis=0) if rule == "max" else stack.mean(axis=0)


def combinations(runs: Sequence[str]) -> list[tuple[str, ...]]:
    """Every run alone, every pair, and the learned runs (of :data:`LEARNED` among ``runs``) together."""
    learned = tuple(r for r in runs if r in LEARNED)
    out = [(r,) for r in runs] + list(itertools.combinations(runs, 2))
    if len(learned) > 2:
        out.append(learned)
    return out


def demo_tables(demo: Path, seeds: Sequence[int]) -> dict[str, dict]:
    """The demo's score tables, read once (:func:`detection.load_seed_tables`): ``test`` and ``validation``
    ``{seed: {run: tables}}`` of the learned runs, ``baselines`` and ``baselines_validation`` ``{run: tables}`` of
    the (unseeded) baselines, the demo's own.

    Raises:
        SystemExit: a run's scores are missing at some seed (named, all at once)."""
    out = {
        "test": load_seed_tables(demo, seeds, LEARNED),
        "validation": load_seed_tables(demo, seeds, LEARNED, section="validation"),
        "baselines": load_seed_tables(demo, [0], BASELINES).get(0, {}),
        "baselines_validation": load_seed_tables(demo, [0], BASELINES, section="validation").get(0, {}),
    }
    missing = [f"seed {s}: {r}" for s in seeds for r in LEARNED if r not in out["test"].get(s, {})]
    missing += [f"{r} (the demo's)" for r in BASELINES if r not in out["baselines"]]
    if missing:
        raise SystemExit(f"{demo}: no scores for " + ", ".join(missing) + " (run detection.py --seeds first)")
    return out


def standardised_tables(
    loaded: Mapping[str, dict], seeds: Sequence[int]
) -> tuple[dict[int, pd.DataFrame], dict[str, str]]:
    """``({seed: test table}, {run: column})``: per seed the test scans (``subject_id``, ``label``,
    ``lesion_variant``) with each run's column standardised against that seed's healthy validation scans
    (:func:`robust_z`), a column named after its run; the baselines' (unseeded) tables are the demo's own.
    ``loaded``: :func:`demo_tables`."""
    runs = (*LEARNED, *BASELINES)
    test, validation = loaded["test"], loaded["validation"]
    baselines, baselines_val = loaded["baselines"], loaded["baselines_validation"]
    best = best_column_over_seeds({0: {**test[0], **baselines}}, n_resamples=0)
    columns = {r: best[r]["column"] for r in runs}
    out = {}
    for s in seeds:
        tables = {**test[s], **baselines}
        vals = {**validation[s], **baselines_val}
        frame = None
        for r in runs:
            t = tables[r]["volume"].set_index("subject_id")
            healthy = vals[r]["volume"]
            healthy = healthy.loc[healthy["label"] == 0, columns[r]].to_numpy(np.float64)
            z = pd.Series(robust_z(t[columns[r]].to_numpy(np.float64), healthy), index=t.index, name=r)
            if frame is None:
                frame = t[["label", "lesion_variant"]].join(z)
            else:
                frame = frame.join(z, how="inner")
        out[s] = frame.reset_index()
    return out, columns


def _fused_frames(
    tables: Mapping[int, pd.DataFrame], combo: tuple[str, ...], rule: str, keep: Sequence[str]
) -> dict[int, pd.DataFrame]:
    """Per seed the ``keep`` columns of ``tables`` with ``fused`` (``combo`` by ``rule``; a run alone: its own
    column), ``intensity`` and ``baselines`` (the baselines fused by ``rule``, by max for a run alone)."""
    frames = {}
    for s, t in tables.items():
        f = t[list(keep)].copy()
        f["fused"] = t[combo[0]] if len(combo) == 1 else fuse([t[r] for r in combo], rule)
        f["intensity"] = t["intensity"]
        f["baselines"] = fuse([t[r] for r in BASELINES], "max" if rule == "alone" else rule)
        frames[s] = f
    return frames


def _against_references(
    frames: Mapping[int, pd.DataFrame], combo: tuple[str, ...], n_resamples: int, **level: Any
) -> dict[str, dict]:
    """``{"vs_intensity", "vs_baselines"}``: :func:`detection.compare_over_seeds` of ``fused`` against each
    (``level``: its ``key``/``label``/``groups`` for slices), pooled difference, CI, per seed and verdict; a
    reference that is the combination itself is left out."""
    out = {}
    for name in ("intensity", "baselines"):
        if (name == "intensity" and combo == ("intensity",)) or (name == "baselines" and combo == BASELINES):
            continue  # itself
        c = compare_over_seeds(frames, "fused", name, n_resamples=n_resamples, **level)
        out[f"vs_{name}"] = {
            "difference": c["pooled"]["difference"],
            "ci": c["pooled"]["difference_ci"],
            "per_seed": {p["seed"]: p["difference"] for p in c["per_seed"]},
            "verdict": c["verdict"],
        }
    return out


def slice_tables(
    loaded: Mapping[str, dict], seeds: Sequence[int]
) -> tuple[dict[int, pd.DataFrame], dict[str, str]]:
    """``({seed: counted test slices}, {run: slice column})``: per seed ``subject_id``, ``slice``, ``slice_label``
    and each run's best slice column at the demo's seed (a slice profile or a whole-slice score), a column named
    after its run. The slice scores are already robust z-scores per slice position against the healthy validation
    scans (what ``score`` writes), so they are fused as they are; the baselines' are the demo's own at every seed.
    ``loaded``: :func:`demo_tables`."""
    from mri_anomaly.evaluation.metrics import auroc

    test, baselines = loaded["test"], loaded["baselines"]
    first = {**test[0], **baselines}
    columns = {}
    for r, t in first.items():
        y = t["slice"]["slice_label"].to_numpy(int)
        values = {c: auroc(y, t["slice"][c].to_numpy(np.float64)) for c in t["slice_columns"]}
        columns[r] = max(values, key=lambda c: values[c])
    out = {}
    for s in seeds:
        frame, n = None, None
        for r in (*LEARNED, *BASELINES):
            t = (test[s] if r in LEARNED else baselines)[r]["slice"]
            n = len(t) if n is None else n  # every run has the first run's slices, and only those
            part = t[[*SLICE_KEY, columns[r]]].rename(columns={columns[r]: r})
            frame = part if frame is None else frame.merge(part, on=list(SLICE_KEY))
            if len(t) != n or len(frame) != n:
                raise RuntimeError(f"seed {s}: {r}'s counted test slices differ from the other runs'")
        out[s] = frame
    return out, columns


def _fingerprint(score_dir: Path) -> str | None:
    meta = score_dir / "score_meta.json"
    return json.loads(meta.read_text()).get("run_fingerprint") if meta.is_file() else None


def real_slice_tables(
    demo: Path, seeds: Sequence[int], columns: Mapping[str, str], real: Path, work: Path, max_voxels: int
) -> dict[int, pd.DataFrame]:
    """``{seed: counted slices of the real FLAIR cases}`` (``subject_id``, ``slice``, ``slice_label``, a column
    per run: its slice column ``columns[run]``), each run's scores read from ``work`` in ``real_data.py --out``'s
    layout (``scores/<run>``, ``seeds/<s>/<run>``) where they are of the same trained run as the demo's own scores
    (``run_fingerprint``), else scored there first (:func:`real_data.score_run`)."""
    cases = [c for c in real_cases(real) if c["subject_id"] in FLAIR_CASES]
    datalist = work / "score_fusion_datalist.json"  # written when a run is scored here, beside real_data.py's
    out = {}
    for s in seeds:
        frame = None
        for r in (*LEARNED, *BASELINES):
            seeded = s != 0 and r in LEARNED
            folder = work / "seeds" / str(s) / r if seeded else work / "scores" / r
            demo_scores = seed_folder(demo, s if seeded else 0) / "scores" / r
            if _fingerprint(folder) is None or _fingerprint(folder) != _fingerprint(demo_scores):
                work.mkdir(parents=True, exist_ok=True)
                datalist.write_text(json.dumps({"test": cases}, indent=2))
                score_run(demo_scores.parent.parent / "runs" / r, cases, datalist, folder, max_voxels)
            t = pd.read_csv(folder / "slice_scores.csv", dtype={"subject_id": str})
            t = t[(t["counted"] == 1) & t["slice_label"].isin([0, 1]) & t["subject_id"].isin(FLAIR_CASES)]
            part = t[[*SLICE_KEY, columns[r]]].rename(columns={columns[r]: r})
            frame = part if frame is None else frame.merge(part, on=list(SLICE_KEY))
        out[s] = frame
    return out


def real_fused(real: Mapping[int, pd.DataFrame], combos: Sequence[tuple[str, ...]]) -> list[dict]:
    """Per combination and rule, ``{"runs", "rule", "cases": {case: [slice AUROC inside the scan, per seed]}}``
    (:func:`real_data.slice_auroc_within`)."""
    out = []
    for combo in combos:
        for rule in RULES if len(combo) > 1 else ("alone",):
            cases: dict[str, list[float | None]] = {}
            for t in real.values():
                fused = t[combo[0]] if len(combo) == 1 else fuse([t[r] for r in combo], rule)
                frame = t[list(SLICE_KEY)].assign(fused=fused)
                for case, part in frame.groupby("subject_id"):
                    cases.setdefault(str(case), []).append(slice_auroc_within(part, "fused")[0])
            out.append({"runs": list(combo), "rule": rule, "cases": cases})
    return out


def fused_measures(
    tables: Mapping[int, pd.DataFrame],
    scans: pd.DataFrame,
    combos: Sequence[tuple[str, ...]],
    n_resamples: int = 1000,
    slices: Mapping[int, pd.DataFrame] | None = None,
) -> list[dict]:
    """One entry per combination and rule: per-seed volume AUROC, its mean, the paired differences with
    ``intensity`` and with the baselines fused by the same rule (:func:`detection.compare_over_seeds`), and the
    mean over seeds of the AUROC per scan class (``scans``: :func:`ceilings.counted_test_classes`) and lesion kind;
    with ``slices`` (:func:`slice_tables`), the same AUROC and differences of the runs' slice profiles fused
    (``"slice"``; the bootstrap resamples whole scans)."""
    from mri_anomaly.evaluation.metrics import auroc

    out = []
    for combo in combos:
        for rule in RULES if len(combo) > 1 else ("alone",):
            frames = _fused_frames(tables, combo, rule, ("subject_id", "label", "lesion_variant"))
            per_seed = {
                s: float(auroc(f["label"].to_numpy(int), f["fused"].to_numpy())) for s, f in frames.items()
            }
            classes, kinds = {}, {}
            for f in frames.values():
                for k, v in volume_class_aurocs(f, scans, "fused").items():
                    classes.setdefault(k, []).append(v)
                for k, v in kind_aurocs(f, "fused").items():
                    kinds.setdefault(k, []).append(v)
            entry = {
                "runs": list(combo),
                "rule": rule,
                "auroc": per_seed,
                "mean": float(np.mean(list(per_seed.values()))),
                "classes": {k: float(np.mean(v)) for k, v in classes.items()},
                "kinds": {k: float(np.mean(v)) for k, v in kinds.items()},
                **_against_references(frames, combo, n_resamples),
            }
            if slices is not None:
                frames = _fused_frames(slices, combo, rule, SLICE_KEY)
                per_seed = {
                    s: float(auroc(f["slice_label"].to_numpy(int), f["fused"].to_numpy()))
                    for s, f in frames.items()
                }
                entry["slice"] = {
                    "auroc": per_seed,
                    "mean": float(np.mean(list(per_seed.values()))),
                    **_against_references(
                        frames,
                        combo,
                        n_resamples,
                        key=("subject_id", "slice"),
                        label="slice_label",
                        groups="subject_id",
                    ),
                }
            out.append(entry)
    return out


def z_summary(
    tables: Mapping[int, pd.DataFrame], scans: pd.DataFrame, runs: Sequence[str]
) -> dict[str, dict]:
    """``{run: {...}}``, each the mean over seeds of: the healthy test scans' 90th percentile and maximum of the
    run's z-score, and the share of the within-range and of the beyond-range anomalous scans
    (``scans``' ``class``) above that 90th percentile. A partner whose healthy tail reaches the other run's
    lesions pushes them down under ``max``; one that lifts few within-range scans above it adds little."""
    rows: dict[str, dict[str, list[float]]] = {}
    for t in tables.values():
        t = t.merge(scans[["subject_id", "class"]], on="subject_id", how="left")
        healthy = t[t["label"] == 0]
        for r in runs:
            q90 = float(np.quantile(healthy[r], 0.9))
            entry = rows.setdefault(r, {})
            entry.setdefault("healthy_q90", []).append(q90)
            entry.setdefault("healthy_max", []).append(float(healthy[r].max()))
            for name, c in (("within_above_q90", CLASSES[1]), ("beyond_above_q90", CLASSES[2])):
                z = t.loc[(t["label"] == 1) & (t["class"] == c), r].to_numpy(np.float64)
                entry.setdefault(name, []).append(float(np.mean(z > q90)) if len(z) else float("nan"))
    return {r: {k: float(np.mean(v)) for k, v in e.items()} for r, e in rows.items()}


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _diff(entry: Mapping | None) -> str:
    if not entry:
        return "–"
    ci = entry.get("ci")
    tail = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
    return f"{entry['difference']:+.3f}{tail}"


def _name(entry: Mapping) -> str:
    names = [NAMES.get(r, r) for r in entry["runs"]]
    return names[0] if entry["rule"] == "alone" else f"{entry['rule']}({', '.join(names)})"


def winners(fused: Sequence[Mapping], level: str = "volume") -> list[Mapping]:
    """The fused scores (two runs or more) whose difference with ``intensity`` and with the baselines fused both
    hold (every seed above 0, the pooled CI above 0), at the ``"volume"`` or ``"slice"`` level."""
    out = []
    for e in fused:
        measures = e if level == "volume" else e.get(level, {})
        if e["rule"] != "alone" and all(
            measures.get(f"vs_{name}", {}).get("verdict") == "holds" for name in ("intensity", "baselines")
        ):
            out.append(e)
    return out


def to_markdown(result: Mapping) -> str:
    seeds = result["seeds"]
    cols = result["columns"]
    lines = [
        "# Runs' scores fused: volumes, slices and the real cases",
        "",
        *meta_lines(result["meta"]),
        f"Demo: `{result['meta']['demo']}`, seeds {', '.join(map(str, seeds))}; {result['n_test']} test scans "
        f"({result['n_anomalous']} anomalous), each run standardised against the demo's {result['n_validation']} "
        "healthy validation scans.",
        "",
        "Columns (each run's best volume column at the demo's seed): "
        + ", ".join(f"{NAMES.get(r, r)} `{c}`" for r, c in cols.items())
        + ". `max(...)`: the highest of the runs' z-scores; `mean(...)`: their mean. "
        "`− baselines fused`: the paired difference with `intensity` and `normative` fused by the same rule (for a run "
        "alone, by `max`). Differences are seed-averaged, their 95 % CI a bootstrap over scans "
        "(`detection.compare_over_seeds`); `holds` means every seed's difference is above 0 and the CI too.",
        "",
    ]
    header = [
        "score",
        "volume AUROC, mean (per seed)",
        "− `intensity` [95 % CI]",
        "− baselines fused [95 % CI]",
        "within range",
        "within range: MS",
        "within range: dark focal",
        "beyond range",
        *[KIND_NAMES.get(k, k) for k in KINDS],
    ]
    rows = []
    for e in result["fused"]:
        per_seed = ", ".join(_f(e["auroc"][s]) for s in seeds)
        verdicts = []
        for name in ("intensity", "baselines"):
            v = e.get(f"vs_{name}")
            verdicts.append(
                "–" if v is None else _diff(v) + (" **holds**" if v["verdict"] == "holds" else "")
            )
        rows.append(
            [
                _name(e),
                f"{_f(e['mean'])} ({per_seed})",
                *verdicts,
                *[_f(e["classes"].get(c)) for c in SCAN_CLASSES],
                *[_f(e["kinds"].get(k)) for k in KINDS],
            ]
        )
    lines += [markdown_table(header, rows), ""]
    with_slices = [e for e in result["fused"] if "slice" in e]
    if with_slices:
        slice_cols = result.get("slice_columns", {})
        lines += [
            "Slices: the runs' slice scores (robust z-scores per slice position against the healthy validation "
            "scans, as `score` writes them) fused the same way, on the counted slices of the test scans; each run's "
            "best slice column at the demo's seed: "
            + ", ".join(f"{NAMES.get(r, r)} `{c}`" for r, c in slice_cols.items())
            + ". The CIs resample whole scans.",
            "",
            markdown_table(
                [
                    "score",
                    "slice AUROC, mean (per seed)",
                    "− `intensity` [95 % CI]",
                    "− baselines fused [95 % CI]",
                ],
                [
                    [
                        _name(e),
                        f"{_f(e['slice']['mean'])} ({', '.join(_f(e['slice']['auroc'][s]) for s in seeds)})",
                        *[
                            "–"
                            if (v := e["slice"].get(f"vs_{name}")) is None
                            else _diff(v) + (" **holds**" if v["verdict"] == "holds" else "")
                            for name in ("intensity", "baselines")
                        ],
                    ]
                    for e in with_slices
                ],
            ),
            "",
        ]
    lines += [
        "Each run's z-score on the test scans, mean over seeds: the healthy scans' 90th percentile and maximum, and "
        "the share of the anomalous scans within and beyond the healthy range above that 90th percentile.",
        "",
        markdown_table(
            [
                "run",
                "healthy 90th percentile",
                "healthy maximum",
                "within range above it",
                "beyond range above it",
            ],
            [
                [
                    NAMES.get(r, r),
                    _f(e["healthy_q90"], 2),
                    _f(e["healthy_max"], 2),
                    f"{e['within_above_q90']:.0%}",
                    f"{e['beyond_above_q90']:.0%}",
                ]
                for r, e in result["z"].items()
            ],
        ),
        "",
    ]
    if result.get("real"):
        lines += [
            "Real FLAIR cases (`real_data.py`'s cases, never used for training or choosing): the same slice "
            "columns scored on each case, fused the same way; slice AUROC inside each scan (its lesion slices "
            "against its lesion-free counted slices), mean over seeds (lowest–highest).",
            "",
            markdown_table(
                ["score", *FLAIR_CASES],
                [
                    [_name(e), *[spread(e["cases"].get(case, []), 3) for case in FLAIR_CASES]]
                    for e in result["real"]["fused"]
                ],
            ),
            "",
        ]
    best = max((e for e in result["fused"] if e["rule"] != "alone"), key=lambda e: e["mean"])
    lines += [
        f"Highest mean over seeds of a fused score: {_name(best)}, {_f(best['mean'])} "
        f"(− `intensity` {_diff(best.get('vs_intensity'))}, − baselines fused {_diff(best.get('vs_baselines'))}). "
        "Fused scores that beat both `intensity` and the baselines fused at every seed with a CI above 0: "
        f"{', '.join(_name(e) for e in winners(result['fused'])) or 'none'}"
        + (
            f"; on slices: {', '.join(_name(e) for e in winners(result['fused'], 'slice')) or 'none'}."
            if with_slices
            else "."
        ),
        "",
    ]
    return "\n".join(lines + reading_lines(result))


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__, seeds=True, real_flag="--real")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of each CI")
    p.add_argument(
        "--real-out",
        type=Path,
        default=None,
        help="the real cases' score folders (real_data.py --out's layout; default DEMO/score_fusion_real); "
        "a run's folder of another model is scored anew",
    )
    p.add_argument(
        "--max-voxels", type=int, default=500_000, help="brain voxels per real case for voxel metrics"
    )
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    demo = args.demo.resolve()
    seeds = demo_seeds(args)
    loaded = demo_tables(demo, seeds)
    tables, columns = standardised_tables(loaded, seeds)
    _, scans = counted_test_classes(demo, demo_config(demo))
    slices, slice_columns = slice_tables(loaded, seeds)
    combos = combinations((*LEARNED, *BASELINES))
    fused = fused_measures(tables, scans, combos, args.bootstrap, slices)
    real = None
    if args.real.is_dir():
        work = (args.real_out or demo / "score_fusion_real").resolve()
        real_tables = real_slice_tables(demo, seeds, slice_columns, args.real, work, args.max_voxels)
        real = {"folder": str(work), "fused": real_fused(real_tables, combos)}
    validation = loaded["baselines_validation"]["intensity"]["volume"]
    first = tables[seeds[0]]
    result = {
        "meta": run_meta("score_fusion.py", argv, load_start, t0, demo=str(args.demo)),
        "seeds": seeds,
        "columns": columns,
        "slice_columns": slice_columns,
        "n_test": int(len(first)),
        "n_anomalous": int(first["label"].sum()),
        "n_validation": int((validation["label"] == 0).sum()),
        "fused": fused,
        "z": z_summary(tables, scans, (*LEARNED, *BASELINES)),
        "real": real,
        "reading": args.reading.read_text().strip() if args.reading else "",
    }
    write_doc(args.docs, "score_fusion", to_markdown(result), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
