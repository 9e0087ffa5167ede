"""Which statistic of a map over a slice makes its slice profile: the 99th percentile (``<map>_slice_q99``, the
package's until the switch this script measured) or the mean of the slice's highest 200 mm³
(``<map>_slice_top200mm3``, the volume score's ``<map>_top200mm3`` taken per slice, the package's now)?

A slice's scored part holds some hundreds of voxels at 4 mm, so its 99th percentile lies below its highest ~1 %:
a lesion that fills one to three voxels of the slice (most MS slices of the demo, ``ceilings.md``) does not
move it. The volume scores met the same problem with the 99.9th percentile and answered it with the mean of the
highest 200 mm³. This script takes the demo's runs (and their retrained seeds) unchanged, recalibrates each on the
demo's healthy validation scans with the statistic the package does not use (``AnomalyMethod.slice_statistic``) (slice norms and thresholds: ``calibrate_run``, as
at the end of training), scores the test scans and the real cases of ``../shared/data`` with it, and compares the
two profiles of every map on the same slices:

* slice AUROC on the demo's test slices, per seed, and the paired difference pooled over seeds with its bootstrap CI
  (whole scans resampled), on all lesion slices and on each class of ``ceilings.py``;
* the brain-fraction control: Spearman ρ with the slice's brain fraction on healthy test slices (bound 0.2);
* slice AUROC inside each real FLAIR scan (lesion against lesion-free counted slices), per seed and the mean.

Usage::

    python benchmarks/slice_statistic.py --demo demo-out [--seeds 1 2] [--real-reference REAL_OUT]
        [--out /tmp/mri-anomaly-slice-statistic]

``--real-reference``: the ``--real-out`` folder of ``benchmarks/detection.py`` on the same demo (its scores hold the
package's profiles); without it the real cases are scored with the demo's runs too. Writes
``docs/benchmarks/slice_statistic.md`` and ``.json``; every score folder under ``--out`` is reused when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
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
    recalibrate_run,
    run_meta,
    write_doc,
)
from ceilings import CLASSES, class_aurocs, counted_test_classes, demo_config  # noqa: E402
from detection import compare_over_seeds, load_seed_tables, seed_folder  # noqa: E402
from lesion_conspicuity import BASELINES, RUNS  # noqa: E402
from real_data import (  # noqa: E402
    FLAIR_CASES,
    real_cases,
    score_real_cases,
    slice_auroc_within,
)

REFERENCE, CANDIDATE = "q99", "top200mm3"  # the tables read REFERENCE -> CANDIDATE


def rescored_statistic() -> str:
    """Of the two, the statistic the package does not use: the one the demo's runs are recalibrated with."""
    from mri_anomaly.training.methods.base import AnomalyMethod

    package = AnomalyMethod.slice_statistic
    if package not in (REFERENCE, CANDIDATE):
        raise RuntimeError(
            f"the package's slice statistic {package!r} is neither {REFERENCE!r} nor {CANDIDATE!r}"
        )
    return REFERENCE if package == CANDIDATE else CANDIDATE


@contextlib.contextmanager
def slice_statistic(statistic: str) -> Iterator[None]:
    """Every method's slice profiles made with ``statistic`` inside the block (``AnomalyMethod.slice_statistic``)."""
    from mri_anomaly.training.methods.base import AnomalyMethod

    before = AnomalyMethod.slice_statistic
    AnomalyMethod.slice_statistic = statistic
    try:
        yield
    finally:
        AnomalyMethod.slice_statistic = before


def recalibrated_copy(src: Path, dst: Path, datalist: Path) -> None:
    """``dst``: the run ``src`` (same checkpoint and config) recalibrated on the datalist's validation section with
    the current slice statistic (slice norms and thresholds, ``thresholds.json``)."""
    if (dst / "thresholds.json").is_file():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint.pt", "config.yaml"):
        shutil.copy2(src / name, dst / name)
    recalibrate_run(dst, datalist)


def rescore_demo(demo: Path, out: Path, seeds: Sequence[int], statistic: str, log=print) -> None:
    """Each run of ``demo`` (and of its seeds) recalibrated with ``statistic`` into ``out`` (the demo's layout:
    ``runs/``, ``scores/``, ``seeds/<s>/...``, ``data`` linked) and its test section scored (no maps)."""
    from mri_anomaly.scoring.runner import score_datalist

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "data").exists():
        (out / "data").symlink_to(demo / "data", target_is_directory=True)
    datalist = demo / "data" / "datalist.json"
    with slice_statistic(statistic):
        for seed in seeds:
            for run in (*RUNS, *BASELINES):
                src = seed_folder(demo, seed) / "runs" / run
                if not (src / "checkpoint.pt").is_file():
                    continue
                dst = seed_folder(out, seed) / "runs" / run
                scores = seed_folder(out, seed) / "scores" / run
                if (scores / "scores.csv").is_file() and (scores / "done").is_file():
                    continue
                t = time.time()
                recalibrated_copy(src, dst, datalist)
                shutil.rmtree(scores, ignore_errors=True)
                score_datalist(dst, datalist, scores, sections=("test",), save_maps=False, progress=False)
                (scores / "done").write_text("")
                log(f"[slice-statistic] seed {seed} {run}: {time.time() - t:.0f} s")


def _profile_columns(columns: Sequence[str], statistic: str) -> list[str]:
    return [c for c in columns if c.endswith(f"_slice_{statistic}")]


def paired_slices(
    demo: Path, out: Path, seeds: Sequence[int]
) -> tuple[dict[str, dict[int, pd.DataFrame]], set[str]]:
    """``{run: {seed: counted test slices with both profiles of every map}}``: the demo's slice table (the
    package's profiles) joined with the rescored one's profiles (:func:`rescored_statistic`) on (scan, slice); and
    the healthy test scans' ids."""
    reference = load_seed_tables(demo, seeds, (*RUNS, *BASELINES))
    candidate = load_seed_tables(out, seeds, (*RUNS, *BASELINES))
    tables: dict[str, dict[int, pd.DataFrame]] = {}
    healthy: set[str] = set()
    for seed in seeds:
        for run, t in reference.get(seed, {}).items():
            c = candidate.get(seed, {}).get(run)
            if c is None or t["slice"] is None or c["slice"] is None:
                continue
            new = _profile_columns(c["slice_columns"], rescored_statistic())
            merged = t["slice"].merge(
                c["slice"][["subject_id", "slice", "slice_label", *new]],
                on=["subject_id", "slice", "slice_label"],
                how="inner",
                validate="one_to_one",
            )
            if len(merged) != len(t["slice"]):
                raise RuntimeError(f"{run} seed {seed}: the two slice tables hold other slices")
            tables.setdefault(run, {})[seed] = merged
            volume = t["volume"]
            healthy |= set(volume.loc[volume["label"] == 0, "subject_id"].astype(str))
    return tables, healthy


def compare_profiles(
    tables: Mapping[str, Mapping[int, pd.DataFrame]],
    healthy: set[str],
    classes: pd.DataFrame,
    n_resamples: int,
) -> dict[str, dict[str, Any]]:
    """Per run and map: the two profiles' slice AUROC, the paired difference (top200mm3 − q99) per seed and pooled
    (:func:`detection.compare_over_seeds`, whole scans resampled), the AUROCs per lesion-slice class (mean over
    seeds), and ρ with the brain fraction on healthy test slices (the demo's seed)."""
    from mri_anomaly.evaluation.controls import brain_fraction_rho

    out: dict[str, dict[str, Any]] = {}
    for run, by_seed in tables.items():
        first = by_seed[min(by_seed)]
        for old in _profile_columns(first.columns, REFERENCE):
            new = old[: -len(REFERENCE)] + CANDIDATE
            if new not in first.columns:
                continue
            cmp = compare_over_seeds(
                dict(by_seed),
                new,
                old,
                ("subject_id", "slice"),
                "slice_label",
                "subject_id",
                0.0,
                n_resamples,
            )
            per_class = {c: [] for c in ("all", *CLASSES)}
            per_class_old = {c: [] for c in ("all", *CLASSES)}
            for df in by_seed.values():
                a = class_aurocs(df, classes, [new, old])
                for c in per_class:
                    per_class[c].append(a[new].get(c, np.nan))
                    per_class_old[c].append(a[old].get(c, np.nan))
            rho = brain_fraction_rho(first, [old, new], healthy, 200, 0) if healthy else {}
            out[f"{run}/{old[: -len('_slice_' + REFERENCE)]}"] = {
                "run": run,
                "reference": old,
                "candidate": new,
                **cmp,
                "classes": {
                    c: {
                        "reference": float(np.nanmean(per_class_old[c])),
                        "candidate": float(np.nanmean(per_class[c])),
                    }
                    for c in per_class
                },
                "rho": {
                    k: (rho.get("rho") or {}).get(col) for k, col in (("reference", old), ("candidate", new))
                },
            }
    return out


def real_slice_aurocs(
    folder: Path, seeds: Sequence[int], statistic: str
) -> dict[str, dict[str, dict[int, float]]]:
    """``{run/map: {case: {seed: slice AUROC inside the scan}}}`` of the ``_slice_<statistic>`` profiles in a real-case
    score folder of :func:`real_data.score_real_cases` (``scores/<run>``, ``seeds/<s>/<run>``)."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for seed in seeds:
        base = folder / "scores" if seed == 0 else folder / "seeds" / str(seed)
        for run in (*RUNS, *BASELINES):
            table = base / run / "slice_scores.csv"
            if not table.is_file():
                continue
            slices = pd.read_csv(table, dtype={"subject_id": str})
            for col in _profile_columns(slices.columns, statistic):
                key = f"{run}/{col[: -len('_slice_' + statistic)]}"
                for case in FLAIR_CASES:
                    part = slices[slices["subject_id"] == case]
                    if len(part):
                        value, _, _ = slice_auroc_within(part, col)
                        if value is not None:
                            out.setdefault(key, {}).setdefault(case, {})[seed] = value
    return out


def _f(v: Any, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def to_markdown(result: Mapping[str, Any]) -> str:
    meta, seeds = result["meta"], result["seeds"]
    lines = [
        "# Slice profiles: the 99th percentile of a map over the slice, or the mean of its highest 200 mm³",
        "",
        *meta_lines(meta),
        f"Demo: `{result['demo']}`; seeds {', '.join(str(s) for s in seeds)} (0: the demo itself; the baselines have "
        "no seed). The same trained runs, recalibrated on the demo's 80 healthy validation scans with each statistic "
        "(slice norms per slice position, as at the end of training); test slices: the counted slices of the 224 "
        "test scans, lesion slices against every lesion-free one.",
        "",
        "## Demo test slices",
        "",
        "Slice AUROC of each map's profile (mean over seeds), the paired difference top200mm3 − q99 (mean ± SD over "
        "seeds; pooled: one bootstrap over whole scans applied to every seed's scores, 95 % CI), the AUROC per class of "
        "lesion slice (`ceilings.md`: rim only, within the scan's healthy intensity range, beyond it; mean over "
        "seeds, q99 → top200mm3) and ρ with the brain fraction on healthy test slices (demo's seed, bound 0.2).",
        "",
    ]
    header = [
        "map",
        "q99",
        "top200mm3",
        "difference (mean ± SD)",
        "pooled [95 % CI]",
        *[f"{c}: q99 → top200mm3" for c in CLASSES],
        "ρ q99 / top200mm3",
    ]
    rows = []
    for key, e in result["demo_slices"].items():
        ci = e["pooled"].get("difference_ci") or [None, None]
        rows.append(
            [
                f"`{key}`",
                _f(e["mean"]["auroc_b"]),
                _f(e["mean"]["auroc_a"]),
                f"{_f(e['mean']['difference'], sign=True)} ± {_f(e['sd']['difference'])}",
                f"{_f(e['pooled']['difference'], sign=True)} [{_f(ci[0], sign=True)}, {_f(ci[1], sign=True)}]",
                *[
                    f"{_f(e['classes'][c]['reference'])} → {_f(e['classes'][c]['candidate'])}"
                    for c in CLASSES
                ],
                f"{_f(e['rho']['reference'])} / {_f(e['rho']['candidate'])}",
            ]
        )
    lines += [markdown_table(header, rows), ""]
    lines += [
        "## Real FLAIR cases",
        "",
        "Slice AUROC inside each scan (lesion against lesion-free counted slices of the scan), q99 → top200mm3: the "
        "demo's seed, and in brackets the mean over the seeds.",
        "",
    ]
    header = ["map", *FLAIR_CASES]
    rows = []
    for key in result["demo_slices"]:
        ref, cand = result["real"]["reference"].get(key, {}), result["real"]["candidate"].get(key, {})
        row = [f"`{key}`"]
        for case in FLAIR_CASES:
            r, c = ref.get(case, {}), cand.get(case, {})
            if not r or not c:
                row.append("–")
                continue

            def first_and_mean(d: Mapping) -> str:
                values = [d[s] for s in sorted(d, key=int)]
                text = _f(d.get(0, d.get("0")))
                return text + (f" ({_f(float(np.mean(values)))})" if len(values) > 1 else "")

            row.append(f"{first_and_mean(r)} → {first_and_mean(c)}")
        rows.append(row)
    lines += [markdown_table(header, rows), ""]
    lines += reading_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__, seeds=True, real_flag="--real")
    p.add_argument("--real-reference", type=Path, help="detection.py's --real-out folder on the same demo")
    p.add_argument("--out", type=Path, default=Path("/tmp/mri-anomaly-slice-statistic"))
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--max-voxels", type=int, default=2_000_000)
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()

    demo, out = args.demo.resolve(), args.out.resolve()
    seeds = demo_seeds(args)
    rescored = rescored_statistic()
    rescore_demo(demo, out, seeds, rescored)
    classes, _ = counted_test_classes(demo, demo_config(demo))
    demo_slices = compare_profiles(*paired_slices(demo, out, seeds), classes, args.n_bootstrap)
    runs = [r for r in (*RUNS, *BASELINES) if (out / "runs" / r).is_dir()]
    real_new = out / "real"
    if not (real_new / "done").is_file():
        with slice_statistic(rescored):
            score_real_cases(out, args.real, real_new, runs, args.max_voxels, seeds)
        (real_new / "done").write_text("")
    real_ref = args.real_reference
    if real_ref is None:
        real_ref = out / "real-reference"
        if not (real_ref / "done").is_file():
            score_real_cases(demo, args.real, real_ref, runs, args.max_voxels, seeds)
            (real_ref / "done").write_text("")
    assert {c["subject_id"] for c in real_cases(args.real)} >= set(FLAIR_CASES)
    real_folders = {rescored: real_new, REFERENCE if rescored == CANDIDATE else CANDIDATE: real_ref}
    result = {
        "demo": str(demo),
        "seeds": seeds,
        "demo_slices": demo_slices,
        "real": {
            "reference": real_slice_aurocs(real_folders[REFERENCE], seeds, REFERENCE),
            "candidate": real_slice_aurocs(real_folders[CANDIDATE], seeds, CANDIDATE),
        },
        "reading": args.reading.read_text().strip() if args.reading else "",
    }
    result["meta"] = run_meta("slice_statistic.py", argv, load_start, t0)
    write_doc(args.docs, "slice_statistic", to_markdown(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
