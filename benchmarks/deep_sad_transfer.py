"""Why Deep SAD barely beats Deep SVDD: does it separate the lesions it was taught, and does that carry over?

Ruff et al.'s finding (a few labelled anomalies lift Deep SAD above Deep SVDD, also on anomaly kinds never
labelled) does not hold on the demo (``detection.md``, section "Seeds": +0.012 volume AUROC on the held-out
kinds, and only +0.016 on the labelled kind itself). This script separates the two ways it can fail, with the
demo's ``deep-svdd-2d`` / ``deep-sad-2d`` runs and their seeded copies (``DEMO/seeds/<s>/runs``, from
``detection.py --seeds``), on the demo's test scans at the runs' own preprocessing:

* **taught**: every counted axial slice of the healthy test scans gets one lesion from Deep SAD's own training
  insertion (``DeepSADMethod.lesion_transform``: ``RandLesion`` with the run's ``model.lesion`` options, on the
  preprocessed slice, as in training; torch seeded per slice, so both runs see the same lesioned slices). If the
  labelled term works, Deep SAD separates these far better than Deep SVDD.
* **test kinds**: the test set's own lesions (inserted by the cohort generator before preprocessing), per kind;
  ``focal`` is the labelled kind, ``ms`` and ``tumour`` are held out.

Per run and seed: the cell AUROC (the ``patch_dist`` cells a lesion touches against every brain cell of the
healthy test scans' counted slices: the embedding's own separation, before any aggregation) and the slice AUROC
of ``deep_sad_dist`` (lesion slices against the healthy test scans' counted slices), then Deep SAD − Deep SVDD
per seed and its mean ± SD. Then the same difference as the scoring reports it, from the runs' score tables:
every volume column (Ruff's target is on ``deep_sad_dist_mean``) and every standardised slice column, on the
held-out and on the labelled kinds, with ``detection.py``'s paired bootstrap over seeds.

Usage::

    python benchmarks/deep_sad_transfer.py --demo demo-out [--docs docs/benchmarks]

Writes ``docs/benchmarks/deep_sad_transfer.md`` and ``.json`` with the command, machine, load and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, demo_test_items, markdown_table, seed_runs  # noqa: E402
from detection import compare_over_seeds, load_seed_tables, ruff_finding  # noqa: E402

RUNS = ("deep-svdd-2d", "deep-sad-2d")
TEST_KINDS = ("focal", "ms", "tumour")
GROUPS = ("taught", *TEST_KINDS)


def counted_slices(
    items: list[dict], config: dict
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """Preprocessed counted axial slices per group: ``"healthy"`` -> [(slices (S, 1, H, W), None)], each lesion
    kind -> [(lesion slices (S, 1, H, W), their masks (S, 1, H, W) bool)], one entry per scan."""
    from monai.utils import convert_to_tensor
    from mri_anomaly.scoring.items import PreprocessedItems

    min_fraction = float(config["slices"]["min_brain_fraction"])
    data = PreprocessedItems(items, config)
    groups: dict[str, list] = {"healthy": [], **{k: [] for k in TEST_KINDS}}
    for i in range(len(data)):
        _, item, error = data[i]
        if error is not None:
            raise RuntimeError(error)
        x = convert_to_tensor(item["image"], track_meta=False).float().permute(3, 0, 1, 2)  # (D, C, H, W)
        keep = (x > 0).any(dim=1).flatten(1).float().mean(dim=1) >= min_fraction
        kind = items[i]["lesion_kind"]
        if not kind:
            groups["healthy"].append((x[keep], None))
            continue
        mask = convert_to_tensor(item["mask"], track_meta=False).permute(3, 0, 1, 2) > 0.5
        lesion = keep & mask.flatten(1).any(dim=1)
        if bool(lesion.any()) and kind in groups:
            groups[kind].append((x[lesion], mask[lesion]))
    return groups


def taught_lesions(
    healthy: torch.Tensor, lesion_transform, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each healthy slice (S, 1, H, W) with one lesion of Deep SAD's training insertion (torch seeded per slice);
    slices with no room for one are dropped. Returns ``(lesioned, masks)``."""
    lesioned, masks = [], []
    for k in range(healthy.shape[0]):
        torch.manual_seed(seed * 1_000_003 + k)
        try:
            image, mask = lesion_transform(healthy[k])
        except ValueError as err:
            if "empty" not in str(err):
                raise
            continue
        mask = torch.as_tensor(mask).reshape(healthy[k].shape) > 0.5
        if bool(mask.any()):
            lesioned.append(torch.as_tensor(image).reshape(healthy[k].shape).float())
            masks.append(mask)
    return torch.stack(lesioned), torch.stack(masks)


@torch.no_grad()
def cells(method, x: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cell distances and brain fractions (S, h, w) and the slice score ``deep_sad_dist`` (S,)."""
    net = method.net
    dists, weights, scores = [], [], []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        d = net.distance_map(xb)
        dists.append(d)
        weights.append(net.cell_weights(xb))
        scores.append(net.cell_mean(d, xb))
    return torch.cat(dists), torch.cat(weights), torch.cat(scores)


def _auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``positive`` scores against ``negative`` ones (the package's :func:`auroc`)."""
    from mri_anomaly.evaluation.metrics import auroc

    return auroc(
        np.r_[np.zeros(len(negative), np.int64), np.ones(len(positive), np.int64)], np.r_[negative, positive]
    )


def separation(
    method, groups: dict, taught: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Cell and slice AUROC of each lesion group against the healthy test slices."""
    healthy = torch.cat([s for s, _ in groups["healthy"]])
    h_dist, h_weight, h_score = cells(method, healthy)
    h_cells = h_dist[h_weight > 0].numpy()
    lesion_sets = {"taught": [taught], **{k: groups[k] for k in TEST_KINDS}}
    out = {}
    for name, entries in lesion_sets.items():
        if not entries:
            continue
        x = torch.cat([s for s, _ in entries])
        m = torch.cat([mk for _, mk in entries]).float()
        dist, weight, score = cells(method, x)
        touched = (method.net.cell_weights(m) > 0) & (weight > 0)
        out[name] = {
            "cell_auroc": _auroc(h_cells, dist[touched].numpy()),
            "slice_auroc": _auroc(h_score.numpy(), score.numpy()),
            "lesion_cells": int(touched.sum()),
            "lesion_slices": int(x.shape[0]),
            # how far the lesion cells sit, in units of the healthy cells' median distance
            "median_ratio": float(dist[touched].median() / np.median(h_cells)),
        }
    out["healthy"] = {"cells": int(h_cells.size), "slices": int(healthy.shape[0])}
    return out


def score_table_differences(demo: Path, seeds: list[int], n_resamples: int = 1000) -> list[dict]:
    """Deep SAD − Deep SVDD AUROC on the held-out and the labelled kinds for every volume column (scans, stratified
    bootstrap) and every slice column (counted slices, whole scans resampled), over ``seeds``."""
    tables = load_seed_tables(demo, seeds, RUNS)
    first = tables[seeds[0]]["deep-sad-2d"]
    out = []
    for column in first["score_columns"]:
        finding = ruff_finding(tables, column=column, n_resamples=n_resamples)
        for group in ("held_out", "labelled"):
            out.append({"level": "volume", "column": column, "kinds": group, **finding[group]})
    labelled = set(finding["labelled_kinds"])
    for column in first["slice_columns"]:
        for group in ("held_out", "labelled"):
            per_seed = {}
            for s in seeds:
                sad, svdd = tables[s]["deep-sad-2d"], tables[s]["deep-svdd-2d"]
                kinds = sad["volume"][["subject_id", "lesion_kind"]]
                df = sad["slice"].merge(kinds, on="subject_id", how="left")
                df = df.merge(
                    svdd["slice"][["subject_id", "slice", column]],
                    on=["subject_id", "slice"],
                    suffixes=("", " (svdd)"),
                )
                kind = df["lesion_kind"].fillna("").astype(str)
                keep = (kind == "") | (kind.isin(labelled) if group == "labelled" else ~kind.isin(labelled))
                per_seed[s] = df[keep & df["counted"].astype(bool)].rename(
                    columns={column: "deep-sad-2d", f"{column} (svdd)": "deep-svdd-2d"}
                )
            c = compare_over_seeds(
                per_seed, "deep-sad-2d", "deep-svdd-2d", ("subject_id", "slice"), "slice_label", "subject_id",
                n_resamples=n_resamples,
            )  # fmt: skip
            out.append({"level": "slice", "column": column, "kinds": group, **c})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo", type=Path, required=True, help="a finished demo folder (with seeds/ if any)"
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)

    from mri_anomaly.runs import load_run

    torch.set_grad_enabled(False)
    load_start, t0 = os.getloadavg()[0], time.time()
    runs = {run: seed_runs(args.demo, run) for run in RUNS}
    seeds = sorted(set(runs[RUNS[0]]) & set(runs[RUNS[1]]), key=int)
    if not seeds:
        raise SystemExit(f"{args.demo}: no seed with both {RUNS[0]} and {RUNS[1]} trained")
    sad, sad_config, _ = load_run(runs["deep-sad-2d"]["0"])
    items = demo_test_items(args.demo)
    groups = counted_slices(items, sad_config)
    taught = taught_lesions(torch.cat([s for s, _ in groups["healthy"]]), sad.lesion_transform)
    print(f"slices ready ({time.time() - t0:.0f} s): {taught[0].shape[0]} taught lesions", file=sys.stderr)

    results: dict[str, dict[str, dict]] = {}
    for run in RUNS:
        for seed in seeds:
            method, config, _ = load_run(runs[run][seed])
            if config["preprocessing"] != sad_config["preprocessing"]:
                raise SystemExit(f"{runs[run][seed]}: preprocessing differs from deep-sad-2d's")
            results.setdefault(run, {})[seed] = {
                "gamma_l": float((config.get("model") or {}).get("gamma_l", 0.0)),
                **separation(method, groups, taught),
            }
            print(f"{run} seed {seed}: done", file=sys.stderr)
    tables = score_table_differences(args.demo, [int(s) for s in seeds])

    rows = []
    for run in RUNS:
        for seed in seeds:
            r = results[run][seed]
            cells_text = [
                f"{r[g]['cell_auroc']:.3f} / {r[g]['slice_auroc']:.3f} ({r[g]['median_ratio']:.1f}×)"
                for g in GROUPS
            ]
            rows.append([run, seed, f"{r['gamma_l']:g}", *cells_text])
    diff_rows = []
    for level in ("cell_auroc", "slice_auroc"):
        for g in GROUPS:
            d = [results["deep-sad-2d"][s][g][level] - results["deep-svdd-2d"][s][g][level] for s in seeds]
            sd = f" ± {np.std(d, ddof=1):.3f}" if len(d) > 1 else ""
            diff_rows.append(
                [level.split("_")[0], g, " / ".join(f"{v:+.3f}" for v in d), f"{np.mean(d):+.3f}{sd}"]
            )

    table_rows = []
    for t in tables:
        per = " / ".join(f"{p['difference']:+.3f}" for p in t["per_seed"])
        lo, hi = t["pooled"]["difference_ci"]
        sd = t["sd"]["difference"]
        table_rows.append(
            [
                t["level"],
                f"`{t['column']}`",
                t["kinds"].replace("_", " "),
                f"{t['mean']['auroc_b']:.3f}",
                f"{t['mean']['auroc_a']:.3f}",
                per,
                f"{t['mean']['difference']:+.3f}" + ("" if np.isnan(sd) else f" ± {sd:.3f}"),
                f"{t['pooled']['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
            ]
        )

    ahead = [t for t in tables if all(p["difference"] > 0 for p in t["per_seed"])]
    separated = [t for t in ahead if t["pooled"]["difference_ci"][0] > 0]
    separated_names = ", ".join(f"`{t['column']}` {t['kinds'].replace('_', ' ')}" for t in separated)
    cell_gain = [
        float(
            np.mean(
                [
                    results["deep-sad-2d"][s][g]["cell_auroc"] - results["deep-svdd-2d"][s][g]["cell_auroc"]
                    for s in seeds
                ]
            )
        )
        for g in GROUPS
    ]
    summary = (
        f"Deep SAD is ahead of Deep SVDD at every seed in {len(ahead)} of {len(tables)} score-table rows, and in "
        f"{len(separated)} of them with the pooled CI above 0 too ({separated_names or 'none'}); cell AUROC gains "
        + ", ".join(f"{g} {v:+.3f}" for g, v in zip(GROUPS, cell_gain))
        + " (mean over seeds)."
    )

    r0 = results["deep-sad-2d"][seeds[0]]
    command = "python benchmarks/deep_sad_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = ", ".join(f"{g} {r0[g]['lesion_slices']} slices / {r0[g]['lesion_cells']} cells" for g in GROUPS)
    md = "\n".join(
        [
            "# Deep SAD against Deep SVDD: the lesions it was taught, and the ones it was not",
            "",
            f"Command: `{command}`  ",
            f"Machine: {cpu_model()}, {os.cpu_count()} CPUs  ",
            f"Load: 1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end  ",
            f"Date: {now}; {time.time() - t0:.0f} s  ",
            f"Demo: `{args.demo}`; seeds {', '.join(seeds)} (seed 0 is the demo's run).",
            "",
            "Healthy reference: the counted axial slices of the healthy test scans "
            f"({r0['healthy']['slices']} slices, {r0['healthy']['cells']} brain cells of 16 mm). "
            "`taught`: each of those slices with one lesion from Deep SAD's own training insertion "
            "(`RandLesion` with the run's `model.lesion`, on the preprocessed slice); `focal` (the labelled kind), "
            "`ms`, `tumour` (held out): the test set's lesion slices of that kind. "
            f"Lesion slices / cells the lesions touch: {counts}.",
            "",
            "Each cell: cell AUROC (the `patch_dist` cells a lesion touches against every healthy brain cell) / "
            "slice AUROC of `deep_sad_dist` (against every healthy slice) (the lesion cells' median distance in "
            "units of the healthy cells' median).",
            "",
            markdown_table(["run", "seed", "γ_l", *GROUPS], rows),
            "",
            "## Deep SAD − Deep SVDD, same seed",
            "",
            markdown_table(["level", "lesions", "per seed", "mean ± SD"], diff_rows),
            "",
            "## As the scoring reports it: every volume and slice column",
            "",
            "From the runs' score tables (slice columns standardised per position and brain fraction, as "
            "`detection.md` counts them): AUROC of Deep SVDD and Deep SAD (mean over seeds), Deep SAD − Deep SVDD "
            "per seed, mean ± SD, and pooled over seeds with a 95 % bootstrap CI (volume: scans, stratified by "
            "label; slice: whole scans resampled). `held out`: the MS and tumour scans (their lesion slices) "
            "against all healthy test scans; `labelled`: the focal ones.",
            "",
            markdown_table(
                [
                    "level",
                    "column",
                    "kinds",
                    "SVDD",
                    "SAD",
                    "SAD − SVDD per seed",
                    "mean ± SD",
                    "pooled [95 % CI]",
                ],
                table_rows,
            ),
            "",
            summary,
            "",
        ]
    )
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "deep_sad_transfer.md").write_text(md)
    (args.docs / "deep_sad_transfer.json").write_text(
        json.dumps(
            {"command": command, "date": now, "results": results, "score_tables": tables},
            indent=2,
            default=float,
        )
        + "\n"
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
