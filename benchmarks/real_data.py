"""Demo-trained models on the real MRI cases of ``../shared/data``: where do they find the lesions?

Scores the real cases with every run of a finished ``mri-anomaly demo`` (trained on the synthetic FLAIR-like
MNI cohort at 4 mm) through ``score_datalist`` (the ``mri-anomaly score`` function) and measures, per case:

* **slice-level AUROC inside the scan**: lesion slices vs lesion-free slices of the same scan (slices with
  enough brain, as the scorer counts them; a slice is a lesion slice when the preprocessed mask has voxels
  in it), per slice score;
* **voxel-level AP and AUROC** of each map (in the input's space) inside the brain, next to the chance
  level (AP of a random map = the lesion fraction of the brain) and a trivial baseline: the raw image
  intensity as the map (lesions are bright in FLAIR and DWI);
* **volume flags**: whether each scan is above the run's threshold (calibrated on healthy synthetic
  validation scans at 95 % specificity); the two IXI scans are healthy and should not be flagged.

Usage::

    python benchmarks/real_data.py --demo demo-out [--data ../shared/data] [--out /tmp/mri-anomaly-real-data]

Writes ``docs/benchmarks/real_data.md`` and ``docs/benchmarks/real_data.json`` (``--docs`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """The real cases' folder: ``$MRI_ANOMALY_SHARED_DATA`` or ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("MRI_ANOMALY_SHARED_DATA", REPO.parent / "shared" / "data"))


FLAIR_CASES = ("ms-patient07", "brats-pat0001", "brats-pat0002", "brats-pat0003")
"""The real FLAIR cases of :func:`real_cases`: the contrast the demo cohort imitates."""


def real_cases(data: Path) -> list[dict]:
    """The datalist items of the real cases (absolute paths), with their contrast and source."""
    ms = data / "ms-lesjak2017-mni" / "patient07"
    brats = data / "brats2015-deepmedic"
    isles = data / "isles22-sample" / "sub-strokecase0009"
    ixi = data / "ixi-t1-2mm-nichart"
    cases = [
        {"subject_id": "ms-patient07", "image": ms / "FLAIR.nii.gz", "mask": ms / "lesion_consensus.nii.gz",
         "label": 1, "site": "MS Lesjak 2017 (FLAIR, MNI 1 mm)"},
    ]  # fmt: skip
    for k in (1, 2, 3):
        d = brats / f"brats_2013_pat000{k}_1"
        cases.append({"subject_id": f"brats-pat000{k}", "image": d / "Flair_subtrMeanDivStd.nii.gz",
                      "mask": d / "OTMultiClass.nii.gz", "brain_mask": d / "brainmask.nii.gz", "label": 1,
                      "site": "BRATS 2015 (FLAIR z-scored, 1 mm)"})  # fmt: skip
    cases.append({"subject_id": "isles-case0009-dwi", "image": isles / "sub-strokecase0009_ses-0001_dwi.nii.gz",
                  "mask": isles / "sub-strokecase0009_ses-0001_msk.nii.gz", "label": 1,
                  "site": "ISLES'22 (DWI b=1000, 2 mm)"})  # fmt: skip
    for name in ("IXI012-HH-1211", "IXI015-HH-1258"):
        cases.append({"subject_id": f"ixi-{name}", "image": ixi / f"{name}_T1.nii.gz", "label": 0,
                      "site": "IXI healthy (T1 whole head, 2 mm)"})  # fmt: skip
    for c in cases:
        for key in ("image", "mask", "brain_mask"):
            if key in c:
                c[key] = str(Path(c[key]).resolve())
    return cases


def slice_auroc_within(slices: pd.DataFrame, column: str) -> tuple[float | None, int, int]:
    """AUROC of lesion vs lesion-free counted slices of one scan, with the two counts."""
    from mri_anomaly.evaluation.metrics import auroc

    part = slices
    if "counted" in part.columns:
        part = part[part["counted"] == 1]
    part = part[pd.to_numeric(part["slice_label"], errors="coerce").isin([0, 1])]
    y = part["slice_label"].astype(int).to_numpy()
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return None, n_pos, int(y.size - n_pos)
    return auroc(y, part[column].to_numpy(dtype=np.float64)), n_pos, int(y.size - n_pos)


def voxel_scores(case: dict, map_path: str, max_voxels: int) -> dict:
    from mri_anomaly.evaluation.metrics import finite_ranked
    from mri_anomaly.evaluation.voxel import VoxelCase, load_case_voxels
    from sklearn.metrics import average_precision_score, roc_auc_score

    s, y = load_case_voxels(VoxelCase(case["subject_id"], case["image"], map_path, case.get("mask"),
                                      case.get("brain_mask"), case["label"]), max_voxels=max_voxels, seed=0)  # fmt: skip
    s = finite_ranked(s)
    return {"ap": float(average_precision_score(y, s)), "auroc": float(roc_auc_score(y, s)),
            "prevalence": float(y.mean()), "n_voxels": int(y.size)}  # fmt: skip


def score_run(run_dir: Path, cases: list[dict], datalist: Path, score_dir: Path, max_voxels: int) -> dict:
    """Score the real cases with one trained run: ``{"volume", "slice", "voxel"}`` keyed by case (and column)."""
    from mri_anomaly.evaluation.thresholds import load_thresholds
    from mri_anomaly.scoring.runner import score_datalist

    shutil.rmtree(
        score_dir, ignore_errors=True
    )  # score anew: a resumed folder would keep another model's rows
    score_datalist(run_dir, datalist, score_dir, sections=("test",), progress=False)
    meta = json.loads((score_dir / "score_meta.json").read_text())
    vol = pd.read_csv(score_dir / "scores.csv", dtype={"subject_id": str})
    sl = pd.read_csv(score_dir / "slice_scores.csv", dtype={"subject_id": str})
    thresholds = (load_thresholds(run_dir) or {}).get("thresholds", {})
    out: dict = {"volume": {}, "slice": {}, "voxel": {}}
    for case in cases:
        sid = case["subject_id"]
        row = vol[vol["subject_id"] == sid]
        if row.empty:
            out["volume"][sid] = {"error": "not scored (see errors.csv)"}
            continue
        row = row.iloc[0]
        out["volume"][sid] = {
            c: {"score": float(row[c]), "threshold": thresholds.get(c), "flagged": bool(thresholds.get(c) is not None and row[c] > thresholds[c])}
            for c in meta["score_columns"]
        }  # fmt: skip
        if not case.get("mask"):
            continue
        part = sl[sl["subject_id"] == sid]
        for col in meta["slice_score_columns"]:
            a, n_pos, n_neg = slice_auroc_within(part, col)
            out["slice"].setdefault(sid, {})[col] = {
                "auroc": a,
                "lesion_slices": n_pos,
                "lesion_free_slices": n_neg,
            }
        for m in meta["map_names"]:
            rel = row.get(f"map:{m}")
            if isinstance(rel, str) and rel:
                out["voxel"].setdefault(sid, {})[m] = voxel_scores(case, str(score_dir / rel), max_voxels)
    return out


def score_real_cases(
    demo: Path, data: Path, out: Path, runs: list[str], max_voxels: int, seeds: Sequence[int] = ()
) -> dict:
    """Score the real cases with each demo run; slice AUROC inside each scan, voxel AP/AUROC, volume flags.

    With ``seeds``, also each run retrained with those seeds (``DEMO/seeds/<s>/runs/<run>``, made by
    ``benchmarks/detection.py --seeds``): ``result["over_seeds"][run]`` holds, per case and column, the slice AUROC
    and voxel AP of seed 0 (the demo) and of each seed found, because one training run's per-case numbers move
    by up to 0.3 with nothing but float rounding.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases = real_cases(data)
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps({"test": cases}, indent=2))
    t0 = time.time()
    result: dict = {"runs": runs, "cases": [c["subject_id"] for c in cases], "slice": {}, "voxel": {}, "volume": {},
                    "baseline_intensity": {}, "seconds": {}}  # fmt: skip
    for case in cases:
        if case.get("mask"):
            result["baseline_intensity"][case["subject_id"]] = voxel_scores(case, case["image"], max_voxels)
    per_seed: dict[str, dict[int, dict]] = {}
    for run in runs:
        t = time.time()
        scored = score_run(demo / "runs" / run, cases, datalist, out / "scores" / run, max_voxels)
        for key in ("volume", "slice", "voxel"):
            if scored[key]:
                result[key][run] = scored[key]
        per_seed.setdefault(run, {})[0] = scored
        for seed in seeds:
            run_dir = demo / "seeds" / str(seed) / "runs" / run
            if seed != 0 and (run_dir / "checkpoint.pt").is_file():
                per_seed[run][seed] = score_run(
                    run_dir, cases, datalist, out / "seeds" / str(seed) / run, max_voxels
                )
        result["seconds"][run] = round(time.time() - t, 1)
        print(f"[real-data] {run}: {result['seconds'][run]} s", file=sys.stderr, flush=True)
    if seeds:
        result["over_seeds"] = {}
        for run, by_seed in per_seed.items():
            if len(by_seed) < 2:
                continue
            entry: dict = {"seeds": sorted(by_seed), "slice": {}, "voxel": {}}
            for s in sorted(by_seed):
                for sid, cols in by_seed[s]["slice"].items():
                    for col, v in cols.items():
                        entry["slice"].setdefault(sid, {}).setdefault(col, []).append(v["auroc"])
                for sid, maps in by_seed[s]["voxel"].items():
                    for m, v in maps.items():
                        entry["voxel"].setdefault(sid, {}).setdefault(m, []).append(v["ap"])
            result["over_seeds"][run] = entry
    result["total_seconds"] = round(time.time() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--demo", default=str(REPO / "demo-out"), help="a finished `mri-anomaly demo --out` folder"
    )
    parser.add_argument("--data", default=str(default_data_dir()), help="the real cases (../shared/data)")
    parser.add_argument(
        "--out",
        default=str(Path(tempfile.gettempdir()) / "mri-anomaly-real-data"),
        help="scores and maps go here (default: a folder in the temp dir, outside the checkout)",
    )
    parser.add_argument(
        "--docs", default=str(REPO / "docs" / "benchmarks"), help="where real_data.md/json go"
    )
    parser.add_argument(
        "--max-voxels", type=int, default=500_000, help="brain voxels per case for voxel metrics"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[],
        help="also score the seed retrainings DEMO/seeds/<s> (detection.py --seeds)",
    )
    args = parser.parse_args(argv)

    from mri_anomaly.pipeline import DEMO_RUNS

    demo, data, out = Path(args.demo), Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"real cases not found: {data} (set --data or MRI_ANOMALY_SHARED_DATA)", file=sys.stderr)
        return 2
    runs = [r.name for r in DEMO_RUNS if (demo / "runs" / r.name / "checkpoint.pt").is_file()]
    if not runs:
        print(
            f"no trained demo runs under {demo / 'runs'}; run `mri-anomaly demo --out {demo}` first",
            file=sys.stderr,
        )
        return 2
    result = score_real_cases(demo, data, out, runs, args.max_voxels, seeds=args.seeds)
    result["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average at end {os.getloadavg()[0]:.1f}"
    )
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "real_data.json").write_text(json.dumps(result, indent=2))
    (docs / "real_data.md").write_text(to_markdown(result, real_cases(data), args))
    print(
        f"wrote {docs / 'real_data.md'} and {docs / 'real_data.json'} in {result['total_seconds']} s",
        file=sys.stderr,
    )
    return 0


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def to_markdown(result: dict, cases: list[dict], args) -> str:
    lesion_cases = [c for c in cases if c.get("mask")]
    lines = ["# Real cases scored by the demo-trained models", "",
             f"Generated by `{getattr(args, 'command', None) or f'python benchmarks/real_data.py --demo {args.demo}'}` ({result['machine']}; "
             f"{result['total_seconds']} s). Models: the runs of `mri-anomaly demo` (synthetic FLAIR-like cohort from the "
             "MNI152 template at 4 mm). Narrative and caveats: `docs/real-data.md`.", "",
             "## Slice-level AUROC inside each scan (lesion slices vs lesion-free slices of the same scan)", ""]  # fmt: skip
    cols = [
        (run, col) for run in result["runs"] for col in next(iter(result["slice"].get(run, {}).values()), {})
    ]
    lines.append("| case | lesion / lesion-free slices | " + " | ".join(f"{r} `{c}`" for r, c in cols) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    for c in lesion_cases:
        sid = c["subject_id"]
        first = next(
            (result["slice"][r][sid][col] for r, col in cols if sid in result["slice"].get(r, {})), None
        )
        counts = f"{first['lesion_slices']} / {first['lesion_free_slices']}" if first else "–"
        vals = [_f(result["slice"].get(r, {}).get(sid, {}).get(col, {}).get("auroc")) for r, col in cols]
        lines.append(f"| {sid} | {counts} | " + " | ".join(vals) + " |")
    lines += ["", "## Voxel-level AP (AUROC) of the maps inside the brain", "",
              "Chance AP = the lesion fraction of the brain voxels. Baseline: the raw image intensity as the map.", ""]  # fmt: skip
    mcols = [
        (run, m) for run in result["runs"] for m in next(iter(result["voxel"].get(run, {}).values()), {})
    ]
    lines.append(
        "| case | chance AP | intensity baseline | " + " | ".join(f"{r} `{m}`" for r, m in mcols) + " |"
    )
    lines.append("|---|---|---|" + "---|" * len(mcols))
    for c in lesion_cases:
        sid = c["subject_id"]
        base = result["baseline_intensity"].get(sid, {})
        vals = []
        for r, m in mcols:
            v = result["voxel"].get(r, {}).get(sid, {}).get(m)
            vals.append(f"{_f(v['ap'])} ({_f(v['auroc'], 2)})" if v else "–")
        lines.append(
            f"| {sid} | {_f(base.get('prevalence'), 4)} | {_f(base.get('ap'))} ({_f(base.get('auroc'), 2)}) | "
            + " | ".join(vals)
            + " |"
        )
    lines += ["", "## Volume flags at the demo thresholds (95 % specificity on synthetic healthy validation scans)", "",
              "Flagged score columns out of each run's columns; the IXI scans are healthy (label 0).", ""]  # fmt: skip
    lines.append("| case | label | " + " | ".join(result["runs"]) + " |")
    lines.append("|---|---|" + "---|" * len(result["runs"]))
    for c in cases:
        sid = c["subject_id"]
        vals = []
        for r in result["runs"]:
            v = result["volume"].get(r, {}).get(sid)
            if not v or "error" in v:
                vals.append("error")
                continue
            flagged = sum(e["flagged"] for e in v.values())
            vals.append(f"{flagged}/{len(v)}")
        lines.append(f"| {sid} | {c['label']} | " + " | ".join(vals) + " |")
    lines += over_seeds_markdown(result, lesion_cases)
    lines += ["", "Cases: " + "; ".join(f"{c['subject_id']}: {c['site']}" for c in cases) + ".", ""]
    return "\n".join(lines)


def spread(values: Sequence[float | None], digits: int = 2) -> str:
    """``"mean (lowest–highest)"`` of the finite ``values`` (one value: itself; none: "–")."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def over_seeds_markdown(result: dict, lesion_cases: list[dict]) -> list[str]:
    """The "over training seeds" tables: mean (min–max) of each seeded run's slice AUROC and voxel AP per case."""
    over = result.get("over_seeds") or {}
    if not over:
        return []
    seeds = sorted({s for e in over.values() for s in e["seeds"]})
    lines = ["", f"## Over training seeds ({', '.join(map(str, seeds))}; seed 0 is the demo's run)", "",
             "The same run retrained with other seeds on the same cohort (`detection.py --seeds`): mean (min–max) "
             "over the seeds. One run's per-case value is one draw of these.", "",
             ]  # fmt: skip
    for level, title in (
        ("slice", "Slice-level AUROC inside each scan:"),
        ("voxel", "Voxel-level AP inside the brain:"),
    ):
        cols = [(r, c) for r, e in over.items() for c in next(iter(e[level].values()), {})]
        if not cols:
            continue
        lines += [
            title,
            "",
            "| case | " + " | ".join(f"{r} `{c}`" for r, c in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for case in lesion_cases:
            sid = case["subject_id"]
            lines.append(
                f"| {sid} | "
                + " | ".join(spread(over[r][level].get(sid, {}).get(c, [])) for r, c in cols)
                + " |"
            )
        lines.append("")
    return lines[:-1]  # the caller adds the blank line before what follows


if __name__ == "__main__":
    sys.exit(main())
