"""Detection benchmark: every demo method beside the `intensity` and `normative` baselines, on one test set.

Reads a finished ``mri-anomaly demo`` folder (or makes one: ``--demo`` pointing to a folder without a demo
runs it there, which takes the demo's time) and writes one table set:

* volume AUROC and AP with 95 % bootstrap CIs, slice AUROC, voxel AP and best Dice of every score column
  (from the demo's ``report/metrics.json``, recomputed by ``evaluate`` when absent);
* volume AUROC per lesion kind, per lesion-volume stratum (< 1, 1-10, > 10 cm^3) and per variant of a kind (focal
  lesions brighter or darker than tissue) of each run's best column;
* each learned run against both baselines (paired bootstrap CI of the AUROC difference);
* the brain-fraction control: Spearman rho of every ``slice_scores.csv`` column with the slice's brain
  fraction on counted slices of healthy test scans (bound: |rho| <= 0.2), and the brain fraction's own
  slice AUROC;
* the real cases of ``../shared/data`` scored by the demo models (``benchmarks/real_data.py``): slice AUROC
  inside each scan, voxel AP next to chance and the raw-intensity map;
* the issue's targets ("Methods that detect"), each measured, met or missed by how much, with the benchmark that
  measures a miss's cause (section "The issue's targets", :func:`targets`);
* with ``--seeds 1 2``: the findings over training seeds (section "Seeds"). ``--seed-runs`` (default
  every learned demo run, ``pipeline.SEED_RUNS``) are retrained and scored with config ``seed=<s>`` on the
  demo's cohort in ``DEMO/seeds/<s>/runs|scores/<run>`` (resumable; seed 0 is the demo itself): Schirrmeister et
  al. (``llr`` and ``final_scale`` against ``nll_bpd``, volume and slice AUROC of both Glow runs) and Ruff et al.
  (Deep SAD against Deep SVDD on the lesion kinds never labelled), per seed with paired bootstrap CIs, mean ± SD
  over seeds and a pooled seed-averaged difference.

Usage::

    python benchmarks/detection.py --demo demo-out [--data ../shared/data] [--docs docs/benchmarks] [--seeds 1 2]
    python benchmarks/detection.py --from-json docs/benchmarks/detection.json   # rewrite the document only

Writes ``docs/benchmarks/detection.md`` and ``detection.json`` with the command, machine, load and date, and the
per-case tables of the real cases as ``real_data.md``/``.json`` (the layout of ``benchmarks/real_data.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
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
from real_data import FLAIR_CASES, default_data_dir, real_cases, score_real_cases  # noqa: E402
from real_data import to_markdown as real_data_markdown  # noqa: E402

RHO_BOUND = 0.2


def _baseline_verdict(entry: dict) -> str:
    """A learned run against both baselines, as ``controls.baseline_comparison`` judged it (paired CIs)."""
    verdict = entry.get("verdict") or ("yes" if entry.get("beats_all_baselines") else "no")
    return "**no**" if verdict == "no" else verdict


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


# ------------------------------------------------------------------------------------------------- seeds
FLOW_SCORES = ("llr", "final_scale", "nll_bpd")
"""Schirrmeister et al.: the likelihood ratio and the final-scale score against the raw NLL (bits per dim)."""
SCHIRRMEISTER_RUNS = ("glow2d-ratio", "glow3d-ratio")
RUFF_RUNS = ("deep-sad-2d", "deep-svdd-2d")
SEED_STRATA = ("lesion_kind", "lesion_variant", "size_stratum")  # subjects.csv columns the seed tables carry
RUFF_COLUMN = "deep_sad_dist_mean"
RUFF_MARGIN = 0.05
"""Ruff et al.: Deep SAD beats Deep SVDD by at least this volume AUROC on the lesion kinds never labelled."""


def seed_folder(demo: Path, seed: int) -> Path:
    """The folder holding ``runs/`` and ``scores/`` of a seed: the demo itself for seed 0."""
    return demo if seed == 0 else demo / "seeds" / str(seed)


def flow_columns(columns) -> dict[str, str]:
    """``{score: volume column}`` of a Glow run: the ``_top5_mean`` aggregate of a 2D run (mean of the 5 most
    anomalous slices), the column itself for a 3D run."""
    columns = set(columns)
    return {s: f"{s}_top5_mean" if f"{s}_top5_mean" in columns else s for s in FLOW_SCORES}


def load_seed_tables(demo: Path, seeds, runs, section: str = "test") -> dict[int, dict[str, dict]]:
    """``{seed: {run: {"volume", "slice", "slice_columns", "score_columns", "config"}}}`` of the runs whose scores
    exist (:func:`score_dir_tables` of each)."""
    out: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        folder = seed_folder(demo, seed)
        for run in runs:
            if (folder / "scores" / run / "scores.csv").is_file():
                out.setdefault(seed, {})[run] = score_dir_tables(
                    demo, folder / "scores" / run, run, folder / "runs" / run, section
                )
    return out


@functools.lru_cache(maxsize=8)
def _demo_labels(demo: Path) -> tuple[dict, object]:
    """The demo's datalist lookup and its ``subjects.csv`` strata (:data:`SEED_STRATA`), read once per demo: every
    score folder of a demo is labelled from them."""
    import pandas as pd
    from mri_anomaly.evaluation.score_tables import datalist_lookup

    lookup = datalist_lookup(demo / "data" / "datalist.json")
    subjects = pd.read_csv(demo / "data" / "subjects.csv", dtype={"subject_id": str})
    return lookup, subjects[[c for c in ("subject_id", *SEED_STRATA) if c in subjects]]


def score_dir_tables(demo: Path, score_dir: Path, run: str, run_dir: Path, section: str = "test") -> dict:
    """``{"volume", "slice", "slice_columns", "score_columns", "config"}`` of one score folder of the demo's scans.

    ``volume``: the labelled scans of ``section`` (label from the demo's datalist, :data:`SEED_STRATA` from its
    ``subjects.csv``);
    ``slice``: their counted slices with a 0/1 ``slice_label`` (as ``evaluate`` counts them), or None;
    ``config``: the run's resolved ``config.yaml`` (``{}`` when ``run_dir`` has none).
    """
    from mri_anomaly.evaluation.levels import labelled_scans, section_slices
    from mri_anomaly.evaluation.score_tables import attach_datalist, load_score_tables
    from mri_anomaly.training.config import config_from_yaml

    lookup, kinds = _demo_labels(demo)
    ss = load_score_tables(score_dir, run)
    attach_datalist(ss, lookup)
    df = ss.volumes
    volume = labelled_scans(df[df["section"] == section]).merge(kinds, on="subject_id", how="left")
    slices = None
    if ss.slices is not None:
        slices = section_slices(ss.slices, df, section)
        slices = slices[slices["slice_label"].isin([0, 1])] if "slice_label" in slices else None
    config_path = run_dir / "config.yaml"
    return {
        "volume": volume,
        "slice": slices,
        "slice_columns": ss.slice_columns,
        "score_columns": ss.score_columns,
        "config": config_from_yaml(config_path.read_text()) if config_path.is_file() else {},
    }


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def compare_over_seeds(
    tables: dict,
    a: str,
    b: str,
    key=("subject_id",),
    label: str = "label",
    groups: str | None = None,
    margin: float = 0.0,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """AUROC(a) − AUROC(b) on the same samples, per seed and pooled over seeds.

    Args:
        tables: ``{seed: DataFrame}`` with the ``key`` columns, ``label`` (0/1) and the score columns ``a`` and
            ``b`` (higher = more anomalous).
        groups: cluster column, one of ``key`` (``subject_id`` for slices): the bootstrap resamples whole scans;
            None: stratified by label (one row per scan).
        margin: the difference a claim needs (0: just > 0).

    Returns:
        ``per_seed``: per seed the two AUROCs, the difference and its paired bootstrap 95 % CI; ``mean``/``sd``
        over seeds of the AUROCs and the difference; ``pooled``: the seed-averaged difference on the samples
        every seed has, with a bootstrap CI resampling those samples (the same resample for every seed);
        ``verdict``: "holds" when every seed's difference is > 0, the pooled CI lies above 0 and the mean
        difference is >= ``margin``, else "does not hold"; ``reasons``: what failed.
    """
    from mri_anomaly.evaluation.bootstrap import auroc_difference_with_ci
    from mri_anomaly.evaluation.metrics import auroc

    key = list(key)
    per_seed = []
    for s, df in tables.items():
        y = df[label].to_numpy(dtype=int)
        d = auroc_difference_with_ci(
            y,
            [(df[a].to_numpy(np.float64), df[b].to_numpy(np.float64))],
            n_resamples=n_resamples,
            seed=seed,
            groups=None if groups is None else df[groups].astype(str).to_numpy(),
        )
        per_seed.append(
            {
                "seed": s,
                "auroc_a": auroc(y, df[a].to_numpy(np.float64)),
                "auroc_b": auroc(y, df[b].to_numpy(np.float64)),
                "difference": d["auroc_difference"],
                "difference_ci": d.get("auroc_difference_ci"),
                "n": d["n"],
                "n_anomalous": d["n_anomalous"],
            }
        )
    common = None  # the samples every seed has
    for s, df in tables.items():
        part = df[key + [label, a, b]].rename(columns={a: f"a{s}", b: f"b{s}", label: f"label{s}"})
        common = part if common is None else common.merge(part, on=key)
    seeds = list(tables)
    pooled = auroc_difference_with_ci(
        common[f"label{seeds[0]}"].to_numpy(dtype=int),
        [(common[f"a{s}"].to_numpy(np.float64), common[f"b{s}"].to_numpy(np.float64)) for s in seeds],
        n_resamples=n_resamples,
        seed=seed,
        groups=None if groups is None else common[groups].astype(str).to_numpy(),
    )
    mean, sd = {}, {}
    for name in ("auroc_a", "auroc_b", "difference"):
        mean[name], sd[name] = _mean_sd([p[name] for p in per_seed])
    reasons = [
        f"seed {p['seed']}: difference {p['difference']:+.3f} <= 0"
        for p in per_seed
        if not p["difference"] > 0
    ]
    ci = pooled.get("auroc_difference_ci")
    if ci is not None and not (ci[0] > 0):
        reasons.append(f"pooled 95 % CI [{ci[0]:+.3f}, {ci[1]:+.3f}] is not above 0")
    if margin > 0 and not mean["difference"] >= margin:
        reasons.append(f"mean difference {mean['difference']:+.3f} < {margin}")
    return {
        "a": a,
        "b": b,
        "margin": margin,
        "per_seed": per_seed,
        "mean": mean,
        "sd": sd,
        "pooled": {
            "difference": pooled["auroc_difference"],
            "difference_ci": ci,
            "n": pooled["n"],
            "n_anomalous": pooled["n_anomalous"],
            "n_seeds": pooled["n_pairs"],
        },
        "verdict": "does not hold" if reasons else "holds",
        "reasons": reasons,
    }


def _slice_column(column: str, slice_columns) -> str | None:
    from mri_anomaly.evaluation.report import _match

    return _match(column, list(slice_columns), "")


def schirrmeister_findings(seed_tables: dict, runs=SCHIRRMEISTER_RUNS, n_resamples: int = 1000) -> dict:
    """Per Glow run and level (volume, slice): ``llr`` and ``final_scale`` against ``nll_bpd``
    (:func:`compare_over_seeds`), with the volume/slice column each score is read from."""
    out = {}
    for run in runs:
        seeds = [s for s in seed_tables if run in seed_tables[s]]
        if not seeds:
            continue
        first = seed_tables[seeds[0]][run]
        vol_cols = flow_columns(first["volume"].columns)
        levels = {
            "volume": (
                {s: seed_tables[s][run]["volume"] for s in seeds},
                vol_cols,
                ["subject_id"],
                "label",
                None,
            )
        }
        slice_cols = {k: _slice_column(c, first["slice_columns"]) for k, c in vol_cols.items()}
        if first["slice"] is not None and all(slice_cols.values()):
            levels["slice"] = (
                {s: seed_tables[s][run]["slice"] for s in seeds},
                slice_cols,
                ["subject_id", "slice"],
                "slice_label",
                "subject_id",
            )
        entry = {"seeds": seeds, "config_seeds": [seed_tables[s][run]["config"].get("seed") for s in seeds]}
        for level, (tables, cols, key, label, groups) in levels.items():
            entry[level] = {
                "columns": cols,
                "auroc": {
                    score: {s: float(c) for s, c in _aurocs(tables, col, label).items()}
                    for score, col in cols.items()
                },
                **{
                    f"{score}-nll_bpd": compare_over_seeds(
                        tables, cols[score], cols["nll_bpd"], key, label, groups, 0.0, n_resamples
                    )
                    for score in ("llr", "final_scale")
                },
            }
        out[run] = entry
    return out


def _aurocs(tables: dict, column: str, label: str) -> dict:
    from mri_anomaly.evaluation.metrics import auroc

    return {
        s: auroc(df[label].to_numpy(dtype=int), df[column].to_numpy(np.float64)) for s, df in tables.items()
    }


def ruff_finding(
    seed_tables: dict,
    sad: str = RUFF_RUNS[0],
    svdd: str = RUFF_RUNS[1],
    column: str = RUFF_COLUMN,
    margin: float = RUFF_MARGIN,
    n_resamples: int = 1000,
) -> dict | None:
    """Deep SAD against Deep SVDD (volume AUROC of ``column``) on the lesion kinds Deep SAD never saw as labels
    (the test anomalies of every other kind than the config's ``model.lesion.kinds``, against all healthy test
    scans), and on the labelled kinds for contrast; ``gamma_l`` of each seed's Deep SAD config."""
    seeds = [s for s in seed_tables if sad in seed_tables[s] and svdd in seed_tables[s]]
    if not seeds:
        return None
    merged, gamma, labelled_kinds = {}, {}, set()
    for s in seeds:
        model = seed_tables[s][sad]["config"].get("model") or {}
        gamma[s] = model.get("gamma_l")
        labelled_kinds |= set((model.get("lesion") or {}).get("kinds") or [])
        a = seed_tables[s][sad]["volume"][["subject_id", "label", "lesion_kind", column]]
        b = seed_tables[s][svdd]["volume"][["subject_id", column]]
        merged[s] = a.merge(b, on="subject_id", suffixes=("", " (svdd)")).rename(
            columns={column: sad, f"{column} (svdd)": svdd}
        )
    kinds = sorted(
        {k for df in merged.values() for k in df.loc[df["label"] == 1, "lesion_kind"].dropna().astype(str)}
    )
    held_out = [k for k in kinds if k not in labelled_kinds]
    seen = [k for k in kinds if k in labelled_kinds]
    out = {
        "column": column,
        "seeds": seeds,
        "gamma_l": gamma,
        "labelled_kinds": sorted(labelled_kinds),
        "held_out_kinds": held_out,
    }
    for name, group, m in (("held_out", held_out, margin), ("labelled", seen, 0.0)):
        if not group:
            continue
        subset = {s: df[(df["label"] == 0) | df["lesion_kind"].isin(group)] for s, df in merged.items()}
        out[name] = compare_over_seeds(subset, sad, svdd, ("subject_id",), "label", None, m, n_resamples)
    return out


def run_seeds(demo: Path, seeds, runs, device: str = "cpu") -> float:
    """Train and score ``runs`` for every seed other than 0 (resumable); returns the seconds it took."""
    from mri_anomaly.pipeline import run_seed

    t = time.time()
    for seed in seeds:
        if seed != 0:
            run_seed(demo, seed, runs, device=device, progress=False)
    return time.time() - t


def best_column_over_seeds(
    seed_tables: dict, baselines: dict[str, dict] | None = None, n_resamples: int = 1000
) -> dict:
    """``{run: {"column", "auroc": [per seed], "mean", "sd", "seeds", "per_seed", "vs_baselines"}}``: each seeded
    run's best volume column of seed 0 (the demo's, the one the tables above report) and its volume AUROC for every
    seed. The demo's value is one draw; the mean over seeds is what a retraining should expect.

    ``vs_baselines``: ``{baseline: compare_over_seeds(...)}`` of the column against each baseline run's best
    column (``baselines``: ``{run: seed-0 table}``; not seeded, the same scores at every seed): does the run beat
    it at every seed, with a pooled CI above 0?
    ``per_seed``: for each seed the healthy test scans' median and 90th percentile of the column (a seed that
    loses scans does so in its healthy tail or in a stratum) and the AUROC on each lesion size and on the dark
    focal lesions (anomalous scans of the stratum against all healthy scans)."""
    from mri_anomaly.evaluation.metrics import auroc

    def best_of(table: dict) -> str | None:
        y = table["volume"]["label"].to_numpy(dtype=int)
        values = {c: auroc(y, table["volume"][c].to_numpy(dtype=np.float64)) for c in table["score_columns"]}
        return max(values, key=lambda c: values[c]) if values else None

    references = {}
    for name, table in (baselines or {}).items():
        column = best_of(table)
        if column is not None:
            references[name] = (
                column,
                table["volume"][["subject_id", column]].rename(columns={column: "baseline"}),
            )
    out = {}
    first = seed_tables.get(0, {})
    for run, table in first.items():
        column = best_of(table)
        if column is None:
            continue
        seeds = [s for s in sorted(seed_tables) if run in seed_tables[s]]
        values, per_seed = [], []
        for seed in seeds:
            v = seed_tables[seed][run]["volume"]
            y, score = v["label"].to_numpy(dtype=int), v[column].to_numpy(dtype=np.float64)
            values.append(float(auroc(y, score)))
            healthy = score[y == 0]
            entry = {
                "seed": seed,
                "healthy_median": float(np.median(healthy)),
                "healthy_q90": float(np.quantile(healthy, 0.9)),
                "strata": {},
            }
            for field, value in (("size_stratum", "small"), ("size_stratum", "medium"), ("size_stratum", "large"),
                                 ("lesion_variant", "focal_opposite")):  # fmt: skip
                if field in v:
                    keep = (y == 0) | (v[field] == value).to_numpy()
                    if keep.sum() > (y == 0).sum():
                        entry["strata"][value] = float(auroc(y[keep], score[keep]))
            per_seed.append(entry)
        mean, sd = _mean_sd(values)
        out[run] = {
            "column": column,
            "seeds": seeds,
            "auroc": values,
            "mean": mean,
            "sd": sd,
            "per_seed": per_seed,
        }
        out[run]["vs_baselines"] = {}
        for name, (baseline_column, reference) in references.items():
            paired = {
                seed: seed_tables[seed][run]["volume"][["subject_id", "label", column]].merge(
                    reference, on="subject_id"
                )
                for seed in seeds
            }
            out[run]["vs_baselines"][name] = {
                "baseline_column": baseline_column,
                **compare_over_seeds(paired, column, "baseline", n_resamples=n_resamples),
            }
    return out


def seeds_summary(demo: Path, seeds, runs, n_resamples: int = 1000) -> dict:
    """The ``seeds`` entry of detection.json: both findings over seed 0 (the demo) and ``seeds``."""
    all_seeds = [0] + [s for s in seeds if s != 0]
    tables = load_seed_tables(demo, all_seeds, runs)
    baselines = load_seed_tables(demo, [0], ["intensity", "normative"]).get(0, {})
    return {
        "seeds": all_seeds,
        "runs": list(runs),
        "schirrmeister": schirrmeister_findings(
            tables, [r for r in SCHIRRMEISTER_RUNS if r in runs], n_resamples
        ),
        "ruff": ruff_finding(tables, n_resamples=n_resamples) if all(r in runs for r in RUFF_RUNS) else None,
        "best_column": best_column_over_seeds(tables, baselines, n_resamples),
        "n_bootstrap": n_resamples,
    }


def _diff(entry: dict | None) -> str:
    if not entry or entry.get("difference") is None:
        return "–"
    ci = entry.get("difference_ci")
    text = f"{entry['difference']:+.3f}"
    if ci and ci[0] is not None and np.isfinite(ci[0]):
        text += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return text


def _pm(mean: float, sd: float, signed: bool = False) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text + (f" ± {sd:.3f}" if sd is not None and np.isfinite(sd) else "")


def _verdict(c: dict) -> str:
    return "**holds**" if c["verdict"] == "holds" else "does not hold (" + "; ".join(c["reasons"]) + ")"


def seeds_markdown(seeds: dict) -> list[str]:
    """The "Seeds" section of detection.md."""
    others = [s for s in seeds["seeds"] if s != 0]
    lines = [
        "",
        "## Seeds: the findings over training seeds",
        "",
        f"Seed 0 is the demo itself; {'seed' if len(others) == 1 else 'seeds'} {', '.join(map(str, others)) or '–'} "
        f"{'retrains' if len(others) == 1 else 'retrain'} "
        f"{', '.join(seeds['runs'])} on the same cohort and test scans with the config's `seed` set to that value "
        "(model init, data order, augmentation, synthetic lesions; `<demo>/seeds/<seed>/runs|scores`). Per seed: "
        "the AUROCs and the paired AUROC difference on the same test scans with its 95 % bootstrap CI "
        f"({seeds['n_bootstrap']} resamples; volume: stratified by label; slice: whole scans resampled). Mean ± SD "
        "over the seeds. **Pooled**: the seed-averaged difference, its CI from one bootstrap over test scans applied "
        "to every seed's scores at once (it resamples scans, not seeds: the SD over seeds is the seed spread). "
        "Verdict: **holds** when the difference is > 0 for every seed and the pooled CI lies above 0 (Ruff et al.: "
        f"and the mean difference over seeds is ≥ {RUFF_MARGIN}).",
    ]
    best = seeds.get("best_column") or {}
    if best:
        lines += [
            "",
            "### The best columns over seeds",
            "",
            "Each seeded run's best volume column of the demo (seed 0, as in the first table), its volume AUROC for "
            "every seed: the demo's value is one draw of these.",
            "",
            "| run | column | " + " | ".join(f"seed {s}" for s in seeds["seeds"]) + " | mean ± SD |",
            "|---|---|" + "---|" * (len(seeds["seeds"]) + 1),
        ]
        for run, entry in best.items():
            per_seed = dict(zip(entry["seeds"], entry["auroc"], strict=True))
            lines.append(
                f"| {run} | `{entry['column']}` | "
                + " | ".join(_f(per_seed.get(s)) for s in seeds["seeds"])
                + f" | {_f(entry['mean'])} ± {_f(entry['sd'])} |"
            )
        detail = [(run, entry, e) for run, entry in best.items() for e in entry.get("per_seed") or []]
        if detail:
            lines += [
                "",
                "Per seed: the paired AUROC difference with `intensity`'s best column (not seeded: the same scores "
                "for every seed), 95 % CI; the healthy test scans' median score and 90th percentile (a higher "
                "healthy tail is where a seed loses scans); AUROC on each lesion size and on the dark focal lesions "
                "(anomalous scans of the stratum against all healthy test scans).",
                "",
                "| run | column | seed | AUROC | − intensity [95 % CI] | healthy median (90th pct) | small | medium "
                "| large | dark focal |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for run, entry, e in detail:
                auc = dict(zip(entry["seeds"], entry["auroc"], strict=True))[e["seed"]]
                per_seed = (entry.get("vs_baselines") or {}).get("intensity", {}).get("per_seed", [])
                vs = {p["seed"]: p for p in per_seed}.get(e["seed"])
                strata = e["strata"]
                lines.append(
                    f"| {run} | `{entry['column']}` | {e['seed']} | {_f(auc)} | {_diff(vs)} | "
                    f"{e['healthy_median']:.3g} ({e['healthy_q90']:.3g}) | "
                    + " | ".join(_f(strata.get(k)) for k in ("small", "medium", "large", "focal_opposite"))
                    + " |"
                )
        verdicts = [(run, entry, name, c) for run, entry in best.items()
                    for name, c in (entry.get("vs_baselines") or {}).items()]  # fmt: skip
        if verdicts:
            lines += [
                "",
                "Does a run beat the baselines over seeds? The verdict of the findings below: the difference with "
                "the baseline's best column > 0 at every seed and the pooled CI above 0.",
                "",
                "| run | column | baseline | mean ± SD over seeds | pooled [95 % CI] | verdict |",
                "|---|---|---|---|---|---|",
            ]
            for run, entry, name, c in verdicts:
                lines.append(
                    f"| {run} | `{entry['column']}` | {name} `{c['baseline_column']}` | "
                    f"{_pm(c['mean']['difference'], c['sd']['difference'], True)} | {_diff(c['pooled'])} | "
                    f"{_verdict(c)} |"
                )
    sch = seeds.get("schirrmeister") or {}
    if sch:
        lines += [
            "",
            "### Schirrmeister et al.: `llr` and `final_scale` beat `nll_bpd`",
            "",
            "Volume columns: for the 2D run the `_top5_mean` aggregate of each score (mean of the scan's 5 most "
            "anomalous slices), for the 3D run the volume score itself; slice level: the per-slice score of the same "
            "family on the counted slices (lesion slices against all slices of healthy scans and the lesion-free "
            "slices of anomalous scans, as in the tables above).",
            "",
            "| run | level | claim | mean ± SD over seeds | pooled [95 % CI] | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for run, entry in sch.items():
            for level in ("volume", "slice"):
                if level not in entry:
                    continue
                for score in ("llr", "final_scale"):
                    c = entry[level][f"{score}-nll_bpd"]
                    lines.append(
                        f"| {run} | {level} | `{score}` − `nll_bpd` | {_pm(c['mean']['difference'], c['sd']['difference'], True)} "
                        f"| {_diff(c['pooled'])} | {_verdict(c)} |"
                    )
        for run, entry in sch.items():
            for level in ("volume", "slice"):
                if level not in entry:
                    continue
                e = entry[level]
                cols = ", ".join(f"`{c}`" for c in e["columns"].values())
                lines += [
                    "",
                    f"#### {run}, {level} AUROC ({cols})",
                    "",
                    "| seed | llr | final_scale | nll_bpd | llr − nll_bpd [95 % CI] | final_scale − nll_bpd [95 % CI] |",
                    "|---|---|---|---|---|---|",
                ]
                llr, fs = e["llr-nll_bpd"], e["final_scale-nll_bpd"]
                for i, seed in enumerate(entry["seeds"]):
                    lines.append(
                        f"| {seed} | "
                        + " | ".join(_f(e["auroc"][score].get(seed)) for score in FLOW_SCORES)
                        + f" | {_diff(llr['per_seed'][i])} | {_diff(fs['per_seed'][i])} |"
                    )
                means = [_mean_sd(list(e["auroc"][score].values())) for score in FLOW_SCORES]
                lines.append(
                    "| mean ± SD | "
                    + " | ".join(_pm(*m) for m in means)
                    + f" | {_pm(llr['mean']['difference'], llr['sd']['difference'], True)}"
                    f" | {_pm(fs['mean']['difference'], fs['sd']['difference'], True)} |"
                )
                lines.append(f"| pooled | | | | {_diff(llr['pooled'])} | {_diff(fs['pooled'])} |")
    ruff = seeds.get("ruff")
    if ruff:
        gammas = sorted({g for g in ruff["gamma_l"].values() if g is not None})
        gamma_text = ", ".join(f"{g:g}" for g in gammas) or "not set"
        lines += [
            "",
            f"### Ruff et al.: Deep SAD (γ_l = {gamma_text}) beats Deep SVDD by ≥ {RUFF_MARGIN} on the kinds never labelled",
            "",
            f"Volume AUROC of `{ruff['column']}` for both runs. γ_l (the expected share of labelled synthetic "
            f"anomalies per batch) read from each seed's `deep-sad-2d/config.yaml`: {gamma_text}"
            + (
                f" (the issue states its target at γ_l = 0.05; this measurement used {gamma_text})"
                if gammas != [0.05]
                else ""
            )
            + f". Labelled kinds: {', '.join(ruff['labelled_kinds']) or '–'}; held out: "
            f"{', '.join(ruff['held_out_kinds']) or '–'} (their anomalous test scans against all healthy test scans).",
            "",
        ]
        blocks = [(name, ruff[name]) for name in ("held_out", "labelled") if name in ruff]
        for name, c in blocks:
            label = "held-out kinds" if name == "held_out" else "labelled kinds"
            p = c["per_seed"][0]
            lines.append(
                f"- {label} ({p['n_anomalous']} anomalous, {p['n'] - p['n_anomalous']} healthy scans): "
                f"SAD − SVDD {_pm(c['mean']['difference'], c['sd']['difference'], True)} over seeds, pooled "
                f"{_diff(c['pooled'])}"
                + (f": {_verdict(c)}" if name == "held_out" else " (contrast, no target)")
            )
        header = "| seed | γ_l |"
        rule = "|---|---|"
        for name, _ in blocks:
            tag = "held out" if name == "held_out" else "labelled"
            header += f" SVDD ({tag}) | SAD ({tag}) | SAD − SVDD ({tag}) [95 % CI] |"
            rule += "---|---|---|"
        lines += ["", header, rule]
        for i, seed in enumerate(ruff["seeds"]):
            row = f"| {seed} | {_f(ruff['gamma_l'].get(seed), 2)} |"
            for _, c in blocks:
                p = c["per_seed"][i]
                row += f" {_f(p['auroc_b'])} | {_f(p['auroc_a'])} | {_diff(p)} |"
            lines.append(row)
        row = "| mean ± SD | |"
        for _, c in blocks:
            row += (
                f" {_pm(c['mean']['auroc_b'], c['sd']['auroc_b'])} | {_pm(c['mean']['auroc_a'], c['sd']['auroc_a'])} | "
                f"{_pm(c['mean']['difference'], c['sd']['difference'], True)} |"
            )
        lines.append(row)
        lines.append("| pooled | |" + "".join(f" | | {_diff(c['pooled'])} |" for _, c in blocks))
        lines += [
            "",
            "Where the difference is, and where this column loses it (cells, slices and every volume column, "
            "over the seeds of the demo it names): [deep_sad_transfer.md](deep_sad_transfer.md) (`benchmarks/deep_sad_transfer.py`).",
        ]
    return lines


# ------------------------------------------------------------------------------------------------- targets
BASELINE_METHODS = ("intensity", "normative")
CAUSES = {
    "volume": "[ceilings.md](ceilings.md): lesions within their scan's healthy intensity range",
    "slice": "[ceilings.md](ceilings.md): lesion slices within the healthy range",
    "real": "[ceilings.md](ceilings.md) (the 8 mm rim), [profile_voxels.md](profile_voxels.md) (the voxels read)",
    "flow": "[final_scale.md](final_scale.md) (the final scale), [lesion_conspicuity.md](lesion_conspicuity.md) (how "
    "far a lesion moves the Glow maps)",
}
"""Where each kind of miss is measured: the benchmarks that say why (the numbers are theirs, not restated here)."""


def _target(name: str, measured: float | None, goal: float, detail: str = "", cause: str = "") -> dict:
    met = None if measured is None else bool(measured >= goal)
    return {"target": name, "measured": measured, "goal": goal, "met": met, "detail": detail, "cause": cause}


def targets(result: dict) -> list[dict]:
    """The issue's targets ("Methods that detect") against this run's numbers: one row each, with the measured
    value, the goal, met or not, and where a miss's cause is measured. Learned runs: every run that is not a
    baseline; the best learned column is the one with the highest volume AUROC among their best columns."""
    s = result["summary"]
    learned = {run: c for run, c in s["best"].items() if c.get("method") not in BASELINE_METHODS}
    rows: list[dict] = []
    if not learned:
        return rows
    top_run, top = max(learned.items(), key=lambda kv: kv[1]["volume_auroc"] or -1.0)
    rows.append(_target("volume AUROC, best learned", top["volume_auroc"], 0.95,
                        f"{top_run} `{top['column']}`", CAUSES["volume"]))  # fmt: skip
    strata = s["strata"].get(top_run, {})
    parts = [strata[k] for k in ("size:medium", "size:large") if strata.get(k, {}).get("auroc") is not None]
    if parts:
        # AUROC of a union of positive groups against the same negatives is their count-weighted mean
        n = sum(p["n_anomalous"] for p in parts)
        union = sum(p["auroc"] * p["n_anomalous"] for p in parts) / n
        rows.append(_target("volume AUROC on lesions ≥ 1 cm³, best learned column", union, 0.98,
                            f"{top_run} `{top['column']}`, {n} anomalous scans", CAUSES["volume"]))  # fmt: skip
    for run, c in learned.items():
        rows.append(_target(f"{run}: a column ≥ 0.85 (volume AUROC)", c["volume_auroc"], 0.85, f"`{c['column']}`",
                            CAUSES["volume"]))  # fmt: skip
    for run, c in learned.items():
        comparison = s["baselines"].get(run, {})
        verdict = comparison.get("verdict") or ("yes" if comparison.get("beats_all_baselines") else "no")
        differences = "; ".join(
            f"{base} {v['difference']:+.3f} [{_f(v['difference_ci'][0])}, {_f(v['difference_ci'][1])}]"
            for base, v in comparison.get("vs", {}).items()
            if v
        )
        rows.append({"target": f"{run}: best column beats both baselines (paired CIs above 0)", "measured": None,
                     "goal": None, "met": verdict == "yes",
                     "verdict": "met" if verdict == "yes" else ("**missed**" if verdict == "no" else f"**not shown** ({verdict})"),
                     "detail": f"`{c['column']}`: {differences}", "cause": CAUSES["volume"]})  # fmt: skip
    slice_cols = [c for c in s["columns"] if c.get("method") not in BASELINE_METHODS and c.get("slice_auroc")]
    if slice_cols:
        # columns made from one slice column share its AUROC: name the run's best column among them
        best_slice = max(slice_cols, key=lambda c: (c["slice_auroc"], c["volume_auroc"] or -1.0))
        rows.append(_target("slice AUROC, best learned column", best_slice["slice_auroc"], 0.90,
                            f"{best_slice['run']}, the slice column of `{best_slice['column']}`",
                            CAUSES["slice"]))  # fmt: skip
    voxel_cols = [
        c for c in s["columns"] if c.get("method") not in BASELINE_METHODS and c.get("voxel_ap") is not None
    ]
    intensity_ap = max((c["voxel_ap"] for c in s["columns"] if c.get("method") == "intensity" and c.get("voxel_ap") is not None), default=None)  # fmt: skip
    if voxel_cols:
        best_voxel = max(voxel_cols, key=lambda c: c["voxel_ap"])
        goal = max(0.5, intensity_ap or 0.0)
        rows.append(_target("voxel AP, best learned map (≥ 0.5 and ≥ the `intensity` map)", best_voxel["voxel_ap"],
                            goal, f"{best_voxel['run']}; `intensity` {_f(intensity_ap)}", CAUSES["volume"]))  # fmt: skip
    seeds = result.get("seeds") or {}
    for run, entry in (seeds.get("schirrmeister") or {}).items():
        for level in ("volume", "slice"):
            for claim in ("llr-nll_bpd", "final_scale-nll_bpd"):
                c = (entry.get(level) or {}).get(claim)
                if c:
                    rows.append({"target": f"Schirrmeister et al., {run} {level}: {claim.replace('-', ' > ')}",
                                 "measured": c["pooled"]["difference"], "goal": 0.0, "met": c["verdict"] == "holds",
                                 "verdict": "met" if c["verdict"] == "holds" else "**does not hold**",
                                 "detail": f"pooled over {c['pooled'].get('n_seeds')} seeds "
                                           f"[{_f(c['pooled']['difference_ci'][0])}, {_f(c['pooled']['difference_ci'][1])}]",
                                 "cause": CAUSES["flow"]})  # fmt: skip
    ruff = (seeds.get("ruff") or {}).get("held_out")
    if ruff:
        rows.append({"target": "Ruff et al.: Deep SAD − Deep SVDD on the kinds never labelled",
                     "measured": ruff["pooled"]["difference"], "goal": ruff["margin"], "met": ruff["verdict"] == "holds",
                     "verdict": "met" if ruff["verdict"] == "holds" else "**does not hold**",
                     "detail": f"pooled [{_f(ruff['pooled']['difference_ci'][0])}, {_f(ruff['pooled']['difference_ci'][1])}]",
                     "cause": "[deep_sad_transfer.md](deep_sad_transfer.md)"})  # fmt: skip
    real = result.get("real") or {}
    for sid in FLAIR_CASES:
        if sid not in (real.get("cases") or []):
            continue
        chosen = []
        for run, c in learned.items():
            entries = real.get("slice", {}).get(run, {}).get(sid, {})
            column = _slice_column(c["column"], entries)
            if column and entries[column].get("auroc") is not None:
                chosen.append((entries[column]["auroc"], run))
        if chosen:
            value, run = max(chosen)
            rows.append(_target(f"real {sid}: slice AUROC, best learned (column chosen on the demo)", value, 0.85,
                                run, CAUSES["real"]))  # fmt: skip
        maps = [(v["ap"], f"{run} {m}") for run in learned for m, v in real.get("voxel", {}).get(run, {}).get(sid, {}).items()]  # fmt: skip
        base = real.get("voxel", {}).get("intensity", {}).get(sid, {}).get("intensity", {}).get("ap")
        if maps and base is not None:
            ap, name = max(maps)
            rows.append(_target(f"real {sid}: voxel AP, best learned map next to the `intensity` map", ap, base,
                                f"{name}; `intensity` {_f(base)}", CAUSES["real"]))  # fmt: skip
    return rows


def targets_markdown(rows: list[dict]) -> list[str]:
    """The "Targets" section: each target, its measured value, met or missed by how much, and where the cause of a
    miss is measured."""
    if not rows:
        return []
    lines = [
        "## The issue's targets",
        "",
        "Each target of \"Methods that detect\" on this run (the demo's seed; the seeds' findings pooled over seeds, "
        "a finding holds when the difference is above 0 at every seed and its pooled CI is above 0): measured, the "
        "goal, and met or missed by how much; a miss's cause is measured where the last column points.",
        "",
        "| target | measured | goal | verdict | detail | where the cause is measured |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("verdict"):
            verdict = r["verdict"]
        elif r["met"] is None:
            verdict = "–"
        elif r["met"]:
            verdict = "met"
        else:
            verdict = f"**missed** by {r['goal'] - r['measured']:.3f}"
        goal = "–" if r["goal"] is None else format(round(r["goal"], 3), "g")
        lines.append(
            f"| {r['target']} | {_f(r['measured'])} | {goal} | {verdict} | {r['detail']} | "
            f"{r['cause'] if not r['met'] else ''} |"
        )
    return lines + [""]


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
        *targets_markdown(result.get("targets") or []),
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
            else _baseline_verdict(s["baselines"].get(run, {}))
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
            "Sizes: small < 1 cm³, medium 1–10 cm³, large > 10 cm³. Variants: the focal lesions brighter than the "
            "tissue (`focal`) and darker (`focal_opposite`), which thresholding the image cannot find.",
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
    if result.get("seeds"):
        lines += seeds_markdown(result["seeds"])
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
            "Slice AUROC inside each scan (lesion vs lesion-free counted slices of the same scan) of each run's "
            "slice column chosen on the demo (the one its best volume column is made from), and in brackets the best "
            "of the run's slice columns on that case (chosen on the case itself: optimistic); then the raw-intensity "
            "voxel AP next to chance (lesion fraction of the brain) and each run's best map. Full tables: "
            "`docs/benchmarks/real_data.md` (same numbers, same models).",
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
                best_column = s["best"].get(run, {}).get("column")
                chosen = _slice_column(best_column, entries) if best_column else None
                value = entries.get(chosen, {}).get("auroc") if chosen else None
                cells.append(f"{_f(value)} ({_f(max(vals)[0])})" if vals else "–")
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


def _int_keys(obj):
    """``obj`` read back from JSON with its integer keys (the seeds) integers again, as the run wrote them."""
    if isinstance(obj, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_int_keys(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    from mri_anomaly.pipeline import SEED_RUNS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--demo",
        default=str(REPO / "demo-out"),
        help="a `mri-anomaly demo --out` folder (the demo is run there first if it is not finished)",
    )
    parser.add_argument(
        "--data", default=str(default_data_dir()), help="the real cases (../shared/data); skipped if absent"
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
    parser.add_argument(
        "--no-real", action="store_true", help="leave the real cases out (even when --data exists)"
    )
    parser.add_argument(
        "--seeds",
        nargs="*",
        type=int,
        default=[],
        help="extra training seeds (e.g. 1 2): retrain and score --seed-runs with config seed=<s> on the demo's "
        "cohort in DEMO/seeds/<s>/ (resumable) and add the Seeds section; seed 0 is the demo itself",
    )
    parser.add_argument(
        "--seed-runs",
        nargs="+",
        default=list(SEED_RUNS),
        help=f"the demo runs retrained for --seeds (default: {' '.join(SEED_RUNS)})",
    )
    parser.add_argument("--device", default="cpu", help="device of the --seeds training and scoring")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="rewrite detection.md (and the json's derived sections, e.g. the targets) from a detection.json of an "
        "earlier run into --docs; scores nothing, keeps that run's command, machine and date",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        result = _int_keys(json.loads(args.from_json.read_text()))
        result["targets"] = targets(result)
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "detection.json").write_text(json.dumps(result, indent=2, default=float))
        (docs / "detection.md").write_text(to_markdown(result))
        print(
            f"wrote {docs / 'detection.md'} and {docs / 'detection.json'} from {args.from_json}",
            file=sys.stderr,
        )
        return 0

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
    seeds_seconds, seeds = 0.0, None
    if args.seeds:
        seeds_seconds = run_seeds(demo, args.seeds, args.seed_runs, args.device)
        seeds = seeds_summary(demo, args.seeds, args.seed_runs)
    real = None
    data = Path(args.data)
    if args.no_real:
        print("note: --no-real: the real cases are left out", file=sys.stderr)
    elif data.is_dir():
        runs = [r.name for r in DEMO_RUNS if (demo / "runs" / r.name / "checkpoint.pt").is_file()]
        real = score_real_cases(
            demo, data, Path(args.real_out), runs, args.max_voxels, seeds=args.seeds or ()
        )
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
            "seeds_seconds": round(seeds_seconds, 1),
            "n_test": any_run.get("n_labelled"),
            "n_anomalous": any_run.get("n_anomalous"),
            "n_healthy": (any_run.get("n_labelled") or 0) - (any_run.get("n_anomalous") or 0),
            "n_calibration": any_run.get("n_calibration"),
            "cases": [c["subject_id"] for c in real_cases(data)]
            if data.is_dir() and not args.no_real
            else [],
        },
        "summary": summary,
        "split_sensitivity": split,
        "real": real,
        "seeds": seeds,
    }
    result["targets"] = targets(result)
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
