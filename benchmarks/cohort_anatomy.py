"""The demo cohort's anatomy: smooth template vs individual texture and periventricular signal, side by side.

Reads two detection benchmarks (``detection.json`` and ``real_data.json`` of ``benchmarks/detection.py``): the one
committed at ``--before`` (a git commit whose demo used the smooth template anatomy, ``--smooth-anatomy`` today) and
the one in ``--after`` (a folder, or a git commit: by default 6df562d, the last commit whose ``docs/benchmarks`` were
made on this cohort with the image-level Deep SVDD/SAD, before ``deep-sad-patch``; a cohort with tissue texture and
periventricular FLAIR signal). Each was made by ``make demo`` in a fresh clone and ``detection.py --seeds 1 2`` on
it; both hold their baselines, measured in the same run as the learned methods.

Tables: the demo (a different test set in each: the healthy scans themselves changed), and the real FLAIR cases of
``../shared/data``, which did not change and decide which cohort is the default: each run read at the slice column
chosen on its own demo, seed 0 and the mean over seeds 0-2.

Usage::

    python benchmarks/cohort_anatomy.py [--before 042fce5] [--after 6df562d]

Writes ``docs/benchmarks/cohort_anatomy.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS_DIR, markdown_table, run_meta  # noqa: E402
from detection import _f, _slice_column  # noqa: E402
from real_data import FLAIR_CASES  # noqa: E402

LEARNED = ("glow2d-ratio", "glow3d-ratio", "deep-svdd-2d", "deep-sad-2d", "latent-norm-ae-2d")
BASELINES = ("intensity", "normative")


def _load(source: str, from_git: bool) -> tuple[dict, dict]:
    def read(name: str) -> dict:
        if from_git:
            text = subprocess.run(
                ["git", "show", f"{source}:docs/benchmarks/{name}"],
                cwd=REPO, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            return json.loads(text)
        return json.loads((Path(source) / name).read_text())

    return read("detection.json"), read("real_data.json")


def summarise(detection: dict, real: dict) -> dict:
    """Per run: the demo's best column and its numbers, and the real FLAIR cases at the slice column chosen from it."""
    seeds = detection.get("seeds", {}).get("best_column", {})
    out = {}
    for run in LEARNED + BASELINES:
        best = detection["summary"]["best"].get(run, {})
        column = best.get("column")
        row: dict = {
            "column": column,
            "volume_auroc": best.get("volume_auroc"),
            "volume_auroc_ci": best.get("volume_auroc_ci"),
            "slice_auroc": best.get("slice_auroc"),
            "voxel_ap": best.get("voxel_ap"),
            "volume_auroc_seeds": seeds.get(run, {}).get("auroc"),
            "real_slice": {},
            "real_slice_seed_mean": {},
            "real_voxel_ap": {},
            "real_voxel_ap_seed_mean": {},
        }
        over_seeds = real.get("over_seeds", {}).get(run, {})
        for case in FLAIR_CASES:
            entries = real["slice"].get(run, {}).get(case, {})
            chosen = _slice_column(column, entries) if column else None
            row["real_slice"][case] = entries.get(chosen, {}).get("auroc") if chosen else None
            over = over_seeds.get("slice", {}).get(case, {})
            if chosen in over:
                row["real_slice_seed_mean"][case] = float(np.mean(over[chosen]))
            aps = [v["ap"] for v in real["voxel"].get(run, {}).get(case, {}).values()]
            row["real_voxel_ap"][case] = max(aps) if aps else None
            over_maps = over_seeds.get("voxel", {}).get(case, {})
            if over_maps:  # the map with the highest mean AP over the seeds
                row["real_voxel_ap_seed_mean"][case] = max(float(np.mean(v)) for v in over_maps.values())
        out[run] = row
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _best_learned_per_case(summary: dict) -> list[float]:
    return [max(summary[r]["real_slice"][c] or 0.0 for r in LEARNED) for c in FLAIR_CASES]


def _mean_learned(summary: dict) -> float | None:
    return _mean(summary[r]["real_slice"][c] for r in LEARNED for c in FLAIR_CASES)


def _auroc_ci(r: dict) -> str:
    low, high = r["volume_auroc_ci"]
    return f"{_f(r['volume_auroc'])} [{_f(low)}, {_f(high)}]"


def _over_seeds(r: dict) -> str:
    values = r["volume_auroc_seeds"]
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if values else "–"


def tables(before: dict, after: dict) -> str:
    demo_rows, real_rows, seed_rows, voxel_rows, voxel_seed_rows = [], [], [], [], []
    for run in LEARNED + BASELINES:
        b, a = before[run], after[run]
        demo_rows.append([run, f"`{b['column']}` / `{a['column']}`", _auroc_ci(b), _auroc_ci(a), _over_seeds(b), _over_seeds(a),
                          f"{_f(b['slice_auroc'])} / {_f(a['slice_auroc'])}",
                          f"{_f(b['voxel_ap'])} / {_f(a['voxel_ap'])}"])  # fmt: skip
        real_rows.append([run] + [f"{_f(b['real_slice'][c])} → {_f(a['real_slice'][c])}" for c in FLAIR_CASES]
                         + [f"{_f(_mean(b['real_slice'].values()))} → {_f(_mean(a['real_slice'].values()))}"])  # fmt: skip
        if len(b["real_slice_seed_mean"]) == len(FLAIR_CASES) == len(a["real_slice_seed_mean"]):
            seed_rows.append([run] + [f"{_f(b['real_slice_seed_mean'][c])} → {_f(a['real_slice_seed_mean'][c])}"
                                      for c in FLAIR_CASES]
                             + [f"{_f(_mean(b['real_slice_seed_mean'].values()))} → "
                                f"{_f(_mean(a['real_slice_seed_mean'].values()))}"])  # fmt: skip
        if b["voxel_ap"] is not None:
            voxel_rows.append(
                [run] + [f"{_f(b['real_voxel_ap'][c])} → {_f(a['real_voxel_ap'][c])}" for c in FLAIR_CASES]
            )
        if len(b["real_voxel_ap_seed_mean"]) == len(FLAIR_CASES) == len(a["real_voxel_ap_seed_mean"]):
            voxel_seed_rows.append(
                [run]
                + [
                    f"{_f(b['real_voxel_ap_seed_mean'][c])} → {_f(a['real_voxel_ap_seed_mean'][c])}"
                    for c in FLAIR_CASES
                ]
            )
    best_b, best_a = _best_learned_per_case(before), _best_learned_per_case(after)
    real_rows.append(["best learned run per case"] + [f"{x:.3f} → {y:.3f}" for x, y in zip(best_b, best_a)]
                     + [f"{np.mean(best_b):.3f} → {np.mean(best_a):.3f}"])  # fmt: skip
    every = f"{_mean_learned(before):.3f} → {_mean_learned(after):.3f}"
    real_rows.append(["mean over the five learned runs", *[""] * len(FLAIR_CASES), every])
    cases = list(FLAIR_CASES)
    return "\n".join([
        "## The demo (smooth / detailed cohort; not the same test set)",
        "",
        "Each run's best volume column on its own demo, its volume AUROC with the 95 % bootstrap CI, the same "
        "column over training seeds 0–2 (mean ± SD; the four seeded runs), and the best column's slice AUROC and voxel AP.",
        "",
        markdown_table(["run", "best column", "volume AUROC, smooth", "volume AUROC, detailed", "over seeds, smooth",
                        "over seeds, detailed", "slice AUROC", "voxel AP"], demo_rows),
        "",
        "## Real FLAIR cases: slice AUROC inside each scan, smooth → detailed",
        "",
        "Each run at the slice column chosen on its own demo (the one its best volume column is made from), seed 0.",
        "",
        markdown_table(["run", *cases, "mean"], real_rows),
        "",
        "Mean over training seeds 0–2 of the same column (the four seeded runs):",
        "",
        markdown_table(["run", *cases, "mean"], seed_rows),
        "",
        "## Real FLAIR cases: voxel AP of each run's best map, smooth → detailed (seed 0)",
        "",
        markdown_table(["run", *cases], voxel_rows),
        "",
        "Mean over training seeds 0–2 (the map with the highest mean; the seeded Glow runs):",
        "",
        markdown_table(["run", *cases], voxel_seed_rows),
        "",
    ])  # fmt: skip


def rule_table(versions: dict[str, dict]) -> tuple[str, dict]:
    """The decision rule's numbers for each version: per learned run, the mean over the FLAIR cases of its demo-chosen
    slice column (seed 0, and over seeds 0-2 where the run is seeded), and the mean over the learned runs."""
    rows, data = [], {}
    for name, summary in versions.items():
        per_run = {}
        for run in LEARNED:
            r = summary[run]
            seeded = len(r["real_slice_seed_mean"]) == len(FLAIR_CASES)
            per_run[run] = {
                "seed0": _mean(r["real_slice"].values()),
                "over_seeds": _mean(r["real_slice_seed_mean"].values()) if seeded else None,
            }
        seeded_means = [v["over_seeds"] for v in per_run.values() if v["over_seeds"] is not None]
        data[name] = {
            "runs": per_run,
            "seed0_mean": _mean(v["seed0"] for v in per_run.values()),
            "over_seeds_mean": _mean(seeded_means),
        }
        rows.append(
            [name]
            + [f"{_f(v['seed0'])} ({_f(v['over_seeds'])})" if v["over_seeds"] is not None else _f(v["seed0"])
               for v in per_run.values()]
            + [_f(data[name]["seed0_mean"]), _f(data[name]["over_seeds_mean"])]
        )  # fmt: skip
    header = ["cohort", *LEARNED, "mean, seed 0", "mean over seeds (seeded runs)"]
    return markdown_table(header, rows), data


def _verdict(rule_data: dict) -> str:
    """The rule applied to each detailed version against the smooth cohort."""
    base = rule_data["smooth"]
    lines = []
    for name, version in rule_data.items():
        if name == "smooth":
            continue
        seeded = [r for r, v in version["runs"].items() if v["over_seeds"] is not None]
        rose = [r for r in seeded if version["runs"][r]["over_seeds"] > base["runs"][r]["over_seeds"]]
        change = version["seed0_mean"] - base["seed0_mean"]
        holds = len(rose) > len(seeded) / 2 and change >= 0
        lines.append(
            f"- {name}: over seeds the mean rises for {len(rose)} of {len(seeded)} seeded runs "
            f"({', '.join(rose) or 'none'}); the seed-0 mean over the learned runs moves {change:+.3f}: "
            + ("the rule holds." if holds else "the rule does not hold (a tie at best).")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="042fce5", help="git commit of the smooth-anatomy benchmark")
    parser.add_argument(
        "--after",
        default="6df562d",
        help="folder, or git commit, of the detailed-anatomy benchmark (same methods as --before)",
    )
    parser.add_argument(
        "--first-build",
        default="c001b0d",
        help="git commit of the detailed cohort's first benchmark (its general T1 scans without texture)",
    )
    parser.add_argument("--docs", type=Path, default=DOCS_DIR)
    args = parser.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    before = summarise(*_load(args.before, from_git=True))
    after = summarise(*_load(args.after, from_git=not Path(args.after).is_dir()))
    first = summarise(*_load(args.first_build, from_git=True))
    body = tables(before, after)
    rule, rule_data = rule_table({"smooth": before, "detailed, first build": first, "detailed": after})
    meta = run_meta(
        "cohort_anatomy.py",
        argv,
        load_start,
        t0,
        before=args.before,
        after=str(args.after),
        first_build=args.first_build,
    )
    md = "\n".join([
        "# The demo cohort's anatomy: smooth template vs individual texture and periventricular signal",
        "",
        f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Date: {meta['date']}  ",
        f"Smooth: the detection benchmark committed at `{args.before}` (fresh-clone demo of d6d4bc1, "
        "`--seeds 1 2`); detailed: the one at `--after` (fresh-clone demo of b75b566, `--seeds 1 2`). Same models, "
        "steps and seeds; only the cohort differs (`mri_anomaly.data.demo`: `_texture`, `_periventricular_weight`). "
        f"First build: the benchmark committed at `{args.first_build}` (fresh-clone demo of 736a1e4), the same "
        "cohort except the `general` section's 16 T1 scans, which did not yet carry the texture; only the Glow "
        "ratio runs train on that section.",
        "",
        "The healthy scans themselves changed, so the demo rows compare two test sets; the real cases did not. The "
        "rule for the default, fixed before the detailed runs were read: the real FLAIR cases at each run's "
        "demo-chosen slice column, the detailed cohort to become the default if that mean rises for most learned "
        "runs over seeds and the mean over the learned runs does not fall.",
        "",
        "## The rule's numbers",
        "",
        "Per learned run, its demo-chosen slice column's AUROC averaged over the four FLAIR cases: seed 0, and in "
        "brackets the mean over seeds 0–2 (the four seeded runs).",
        "",
        rule,
        "",
        _verdict(rule_data),
        "",
        body,
        "What the cohort change is, and what these numbers mean for each method: `docs/demo-cohort.md` and "
        "`docs/real-data.md`.",
        "",
    ])  # fmt: skip
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "cohort_anatomy.md").write_text(md)
    (args.docs / "cohort_anatomy.json").write_text(
        json.dumps(
            {"meta": meta, "smooth": before, "detailed": after, "first_build": first, "rule": rule_data},
            indent=2,
        )
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
