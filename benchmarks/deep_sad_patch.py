"""Deep SVDD / Deep SAD on slices: one embedding per slice (``deep-sad``) vs one per 16 mm cell (``deep-sad-patch``).

Reads two detection benchmarks (``detection.json`` and ``real_data.json`` of ``benchmarks/detection.py``): the one
committed at ``--before`` (the demo's ``deep-svdd-2d`` / ``deep-sad-2d`` were the image-level method) and the one in
``--after`` (default: the committed ``docs/benchmarks``, where they are the patch method). Both were made by
``make demo`` in a fresh clone and ``detection.py --seeds 1 2`` on it, on the same cohort (same seed and cohort code:
the baselines' rows below must agree exactly, which checks it), so the test scans, the baselines and the real cases
are the same; only the two runs' method differs.

Usage::

    python benchmarks/deep_sad_patch.py [--before 6df562d] [--after docs/benchmarks]

Writes ``docs/benchmarks/deep_sad_patch.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS_DIR, markdown_table, run_meta  # noqa: E402
from cohort_anatomy import FLAIR_CASES, _load, summarise  # noqa: E402
from detection import _f  # noqa: E402

RUNS = ("deep-svdd-2d", "deep-sad-2d")
BASELINES = ("intensity", "normative")
STRATA = ("kind:focal", "kind:ms", "kind:tumour", "size:small", "size:medium", "size:large")


def _auroc_ci(best: dict) -> str:
    low, high = best["volume_auroc_ci"]
    return f"{_f(best['volume_auroc'])} [{_f(low)}, {_f(high)}]"


def _seeds(detection: dict, run: str) -> str:
    entry = detection.get("seeds", {}).get("best_column", {}).get(run)
    if not entry:
        return "–"
    values = entry["auroc"]
    return (
        f"`{entry['column']}`: "
        + ", ".join(f"{v:.3f}" for v in values)
        + f" ({np.mean(values):.3f} ± {np.std(values, ddof=1):.3f})"
    )


def _rho(detection: dict, run: str) -> str:
    rows = [r for r in detection["summary"]["brain_fraction_rho"] if r["run"] == run]
    return ", ".join(f"`{r['column']}` {r['rho']:+.3f}" for r in rows) or "–"


def _ruff(detection: dict) -> dict:
    ruff = detection.get("seeds", {}).get("ruff", {}).get("held_out", {})
    if not ruff:
        return {}
    return {
        "column": detection["seeds"]["ruff"]["column"],
        "per_seed": [round(s["difference"], 3) for s in ruff["per_seed"]],
        "mean": ruff["mean"]["difference"],
        "sd": ruff["sd"]["difference"],
        "pooled_ci": ruff["pooled"]["difference_ci"],
        "verdict": ruff["verdict"],
    }


def check_same_test_set(before: dict, after: dict) -> list[str]:
    """The baselines' best volume AUROC must agree exactly (same cohort, same test scans); the mismatches."""
    bad = []
    for run in BASELINES:
        b, a = before["summary"]["best"][run], after["summary"]["best"][run]
        if (b["column"], b["volume_auroc"], b["n"]) != (a["column"], a["volume_auroc"], a["n"]):
            bad.append(
                f"{run}: {b['column']} {b['volume_auroc']} (n {b['n']}) vs {a['column']} {a['volume_auroc']} (n {a['n']})"
            )
    return bad


def tables(before: dict, after: dict, real_before: dict, real_after: dict) -> tuple[str, dict]:
    versions = {
        "image (one embedding per slice)": (before, real_before),
        "patch (one per 16 mm cell)": (after, real_after),
    }
    demo_rows, strata_rows, real_rows, data = [], [], [], {}
    for run in RUNS:
        for name, (detection, real) in versions.items():
            best = detection["summary"]["best"][run]
            base = {b: detection["summary"]["best"][b]["volume_auroc"] for b in BASELINES}
            demo_rows.append([run, name, f"`{best['column']}`", _auroc_ci(best), _seeds(detection, run),
                              _f(best["slice_auroc"]), _f(best.get("voxel_ap")), _rho(detection, run),
                              f"{best['volume_auroc'] - base['intensity']:+.3f} / {best['volume_auroc'] - base['normative']:+.3f}"])  # fmt: skip
            strata = detection["summary"]["strata"][run]
            strata_rows.append(
                [run, name, f"`{strata['column']}`"] + [_f(strata[s]["auroc"]) for s in STRATA]
            )
            summary = summarise(detection, real)[run]
            real_rows.append([run, name] + [_f(summary["real_slice"][c]) for c in FLAIR_CASES]
                             + [_f(summary["real_voxel_ap"][c]) for c in FLAIR_CASES])  # fmt: skip
            data.setdefault(run, {})[name] = {
                "best": best,
                "seeds": detection.get("seeds", {}).get("best_column", {}).get(run),
                "strata": strata,
                "real_slice": summary["real_slice"],
                "real_voxel_ap": summary["real_voxel_ap"],
            }
    for name, (detection, _) in versions.items():
        best = detection["summary"]["best"]
        strata = detection["summary"]["strata"]
        for b in BASELINES:
            strata_rows.append(
                [b, name, f"`{strata[b]['column']}`"] + [_f(strata[b][s]["auroc"]) for s in STRATA]
            )
        data.setdefault("baselines", {})[name] = {b: best[b]["volume_auroc"] for b in BASELINES}
    ruff_rows = []
    for name, (detection, _) in versions.items():
        r = _ruff(detection)
        data.setdefault("ruff", {})[name] = r
        if r:
            ruff_rows.append([name, f"`{r['column']}`", ", ".join(f"{v:+.3f}" for v in r["per_seed"]),
                              f"{r['mean']:+.3f} ± {r['sd']:.3f}", f"[{r['pooled_ci'][0]:+.3f}, {r['pooled_ci'][1]:+.3f}]",
                              r["verdict"]])  # fmt: skip
    md = "\n".join([
        "## The demo (same test scans: 80 healthy, 48 anomalous)",
        "",
        "Best column = the run's highest volume AUROC at seed 0, with its 95 % bootstrap CI; the same column over "
        "training seeds 0–2; its slice AUROC and voxel AP; Spearman ρ of the slice columns with the slice's brain "
        "fraction on healthy test slices (bound |ρ| ≤ 0.2); the difference to the baselines' best columns.",
        "",
        markdown_table(["run", "embedding", "best column", "volume AUROC", "over seeds 0, 1, 2 (mean ± SD)",
                        "slice AUROC", "voxel AP", "brain-fraction ρ", "− intensity / − normative"], demo_rows),  # fmt: skip
        "",
        "## Volume AUROC per lesion kind and size (best column, seed 0)",
        "",
        markdown_table(["run", "embedding", "column", *STRATA], strata_rows),
        "",
        "## Ruff et al.: Deep SAD − Deep SVDD on the lesion kinds never labelled (MS, tumour), volume AUROC",
        "",
        markdown_table(["embedding", "column", "per seed", "mean ± SD", "pooled 95 % CI", "verdict"], ruff_rows),
        "",
        "## Real FLAIR cases (`../shared/data`): slice AUROC at the demo-chosen column, then the best map's voxel AP",
        "",
        markdown_table(["run", "embedding", *FLAIR_CASES, *[f"AP {c}" for c in FLAIR_CASES]], real_rows),
        "",
    ])  # fmt: skip
    return md, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="6df562d", help="git commit of the image-level benchmark")
    parser.add_argument("--after", default=str(DOCS_DIR), help="folder of the patch benchmark")
    parser.add_argument("--docs", type=Path, default=DOCS_DIR)
    args = parser.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    before, real_before = _load(args.before, from_git=True)
    after, real_after = _load(args.after, from_git=False)
    mismatches = check_same_test_set(before, after)
    if mismatches:
        print(
            "the two benchmarks are not on the same test set:\n  " + "\n  ".join(mismatches), file=sys.stderr
        )
        return 1
    body, data = tables(before, after, real_before, real_after)
    meta = run_meta("deep_sad_patch.py", argv, load_start, t0, before=args.before, after=str(args.after))
    md = "\n".join([
        "# Deep SVDD / Deep SAD on slices: one embedding per slice vs one per 16 mm cell",
        "",
        f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Date: {meta['date']}  ",
        f"Image: the detection benchmark committed at `{args.before}` (`method: deep-sad`, channels [16, 32, 64], "
        "one 32-d embedding per slice). Patch: the one in `--after` (`method: deep-sad-patch`, channels [32, 64], a "
        "32-d embedding per 4 × 4-voxel cell, losses weighted by the cell's brain fraction, the slice score their "
        "brain-weighted mean, the map `patch_dist`). Same cohort, test scans, steps, γ_l and seeds; the baselines "
        "agree exactly between the two (checked).",
        "",
        body,
    ])  # fmt: skip
    (args.docs / "deep_sad_patch.md").write_text(md)
    (args.docs / "deep_sad_patch.json").write_text(
        json.dumps({"meta": meta, **data}, indent=1, default=float)
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
