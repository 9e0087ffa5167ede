"""The latent-norm autoencoder trained as a denoising autoencoder against the plain one: which lesions each finds.

Kascenas et al. (MIDL 2022) train an autoencoder on healthy brains with coarse noise added to its input and the
clean image as its target, so that it learns to put healthy tissue where a blob of wrong intensity was; its
residual then marks lesions that a plain autoencoder reproduces. Here that is ``model.input_noise_std`` (and
``input_noise_mm``, the noise's cell size) of ``latent-norm-ae``. This script trains
``configs/latent-norm-ae-2d.yaml`` once per ``--variant NAME=KEY=VALUE;...`` and seed on the demo's cohort (the
training and recalibration of ``residual_tolerance.py``, whose work folder layout it shares; a variant without
overrides is the demo's own runs, seed 0 and the seeded copies of ``detection.py --seeds``, with the seeds the
demo lacks trained here), rescores each run at
every ``--tolerances`` mm (recalibrated), and reports, with ``intensity`` from the same demo beside it:

* on the demo's test scans: volume AUROC of ``residual_top200mm3`` [95 % CI] and its paired difference with
  ``intensity_top200mm3`` [95 % CI]; the volume AUROC on each scan class of ``ceilings.py`` (the lesion only in
  the rim, within the scan's healthy intensity range, beyond it) and on each lesion kind; the slice AUROC of the
  profile ``residual_slice_top200mm3`` on all lesion slices and on those within the healthy range; the voxel AP;
* on the real FLAIR cases of ``../shared/data`` (never used for training or choosing): the slice AUROC of the
  profile inside each scan and the residual's voxel AP.

Beside the map, the paper's own score ``latent_norm`` (‖x − x̂‖₂ + β‖z‖₂ per slice, the volume's mean of its 5
highest slices) is reported per variant: ``--name latent_size`` writes the same tables for variants of the code
size and β (the paper's ranges) as ``docs/benchmarks/latent_size.md``, ``--name slice_context`` for the 2.5D model
(``slices.context``: each slice with its neighbours as input channels) as ``docs/benchmarks/slice_context.md``,
``--name unet_dae`` against a peer, the U-Net denoising autoencoder of Kascenas et al. (``benchmarks/unet_dae.py``:
``--variant unet=method=unet-dae``) as ``docs/benchmarks/unet_dae.md``, ``--name unet_inpaint`` against a U-Net that
predicts each cell of the slice from the cells around it without seeing it (``benchmarks/unet_inpaint.py``:
``--variant inpaint=method=unet-inpaint``) as ``docs/benchmarks/unet_inpaint.md``.

Usage::

    python benchmarks/denoising_ae.py --demo demo-out [--variant plain]
        [--variant dae=model.input_noise_std=0.2] [--seeds 0 1 2] [--tolerances 0 4 8] [--out DIR]
        [--name denoising_ae|latent_size|slice_context|unet_dae|unet_inpaint]

Writes ``docs/benchmarks/<name>.md`` and ``.json`` with the command, machine, load and date.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unet_dae  # noqa: E402, F401  (registers the peer method ``unet-dae`` for --variant ...;method=unet-dae)
import unet_inpaint  # noqa: E402, F401  (registers the peer method ``unet-inpaint``)
from _common import demo_benchmark_parser, markdown_table, meta_lines, reading_lines, run_meta, write_doc  # noqa: E402
from ceilings import CLASSES, class_aurocs, counted_test_classes, demo_config, volume_class_aurocs  # noqa: E402
from detection import score_dir_tables  # noqa: E402
from real_data import FLAIR_CASES, real_cases, score_run  # noqa: E402
from residual_tolerance import (  # noqa: E402
    final_training_loss,
    measure,
    parse_variant,
    run_with_tolerance,
    test_table,
    trained_runs,
)

RUN = "latent-norm-ae-2d"
MAP = "residual"
COLUMN = f"{MAP}_top200mm3"
BASELINE = "intensity_top200mm3"
DEFAULT_VARIANTS = ("plain", "dae=model.input_noise_std=0.2")
KINDS = ("ms", "tumour", "focal", "focal_opposite")
KIND_NAMES = {"focal_opposite": "dark focal"}
LATENT_COLUMN = "latent_norm_top5_mean"
TITLES = {
    "denoising_ae": "The latent-norm autoencoder as a denoising autoencoder (coarse input noise) against the plain one",
    "latent_size": "The latent-norm autoencoder's code size and β, in the paper's ranges, against the shipped ones",
    "slice_context": "The latent-norm autoencoder given its neighbouring slices (2.5D) against the plain 2D one",
    "unet_dae": "The latent-norm autoencoder against a peer: the U-Net denoising autoencoder of Kascenas et al.",
    "unet_inpaint": "The latent-norm autoencoder against a U-Net that inpaints each cell from its surroundings",
}


def profile_column(slice_columns: Sequence[str], map_name: str = MAP) -> str:
    """A map's slice profile among a run's slice columns (``<map>_slice_<statistic>``)."""
    found = [c for c in slice_columns if c.startswith(f"{map_name}_slice_")]
    if len(found) != 1:
        raise ValueError(f"expected one slice profile of {map_name!r}, got {found}")
    return found[0]


def kind_aurocs(volume: pd.DataFrame, column: str) -> dict[str, float]:
    """``{variant: AUROC}`` of ``column``: each lesion variant's anomalous scans (``subjects.csv``'s
    ``lesion_variant``: dark focal lesions are a variant of the focal kind) against every healthy scan."""
    from mri_anomaly.evaluation.metrics import auroc

    healthy = volume[volume["label"] == 0][column].to_numpy(np.float64)
    out = {}
    for kind in KINDS:
        positive = volume[(volume["label"] == 1) & (volume["lesion_variant"] == kind)][column].to_numpy(
            np.float64
        )
        if len(positive):
            out[kind] = auroc(np.r_[np.ones(len(positive)), np.zeros(len(healthy))], np.r_[positive, healthy])
    return out


def map_measures(
    demo: Path,
    score_dir: Path,
    run: str,
    run_dir: Path,
    map_name: str,
    column: str,
    slice_classes: pd.DataFrame,
    scan_classes: pd.DataFrame,
) -> dict:
    """Class and kind AUROCs of one scored run on the demo's test scans: its volume ``column`` and the slice profile
    of ``map_name``."""
    tables = score_dir_tables(demo, score_dir, run, run_dir)
    profile = profile_column(tables["slice_columns"], map_name)
    return {
        "volume_classes": volume_class_aurocs(tables["volume"], scan_classes, column),
        "kinds": kind_aurocs(tables["volume"], column),
        "slice_classes": class_aurocs(tables["slice"], slice_classes, [profile])[profile],
        "profile": profile,
    }


def real_measures(
    run_dir: Path, cases: list[dict], datalist: Path, work: Path, max_voxels: int, map_name: str = MAP
) -> dict:
    """``{case: {"slice": AUROC of the map's profile inside the scan, "voxel_ap"}}`` on the real cases."""
    scored = score_run(run_dir, cases, datalist, work, max_voxels)
    out = {}
    for case in cases:
        sid = case["subject_id"]
        slices = scored["slice"].get(sid, {})
        profile = profile_column(list(slices), map_name)
        out[sid] = {"slice": slices[profile]["auroc"], "voxel_ap": scored["voxel"][sid][map_name]["ap"]}
    return out


def column_auroc(score_dir: Path, column: str) -> float | None:
    """Volume AUROC of ``column`` of ``score_dir/scores.csv`` on its test scans (None without the column)."""
    from mri_anomaly.evaluation.metrics import auroc

    table = test_table(score_dir)
    if column not in table:
        return None
    return float(auroc(table["label"].to_numpy(np.float64), table[column].to_numpy(np.float64)))


def paired_with(
    score_dir: Path, reference_dir: Path, column: str = COLUMN, reference_column: str | None = None
) -> tuple[float, list[float]]:
    """``column``'s volume AUROC on the test scans of ``score_dir`` minus that of ``reference_column`` (default
    ``column``) of ``reference_dir`` (the same scans), with its paired bootstrap 95 % CI."""
    from mri_anomaly.evaluation.bootstrap import auroc_with_ci

    table, reference = test_table(score_dir), test_table(reference_dir)
    y = table["label"].to_numpy(int)
    reference_scores = reference.loc[table.index, reference_column or column].to_numpy(float)
    paired = auroc_with_ci(y, table[column].to_numpy(float), paired_with=reference_scores)
    return float(paired["auroc_difference"]), [float(c) for c in paired["auroc_difference_ci"]]


def add_differences_with_first(results: dict, work: Path) -> None:
    """Each variant's paired difference with the first variant at the same seed and tolerance (``vs_first``,
    ``vs_first_ci``), from the score folders under ``work/scores``."""
    names = list(results)
    for name in names[1:]:
        for tol, per_seed in results[name].items():
            for seed, v in per_seed.items():
                if seed in results[names[0]].get(tol, {}):
                    v["vs_first"], v["vs_first_ci"] = paired_with(
                        work / "scores" / f"{name}-seed{seed}-{tol}mm",
                        work / "scores" / f"{names[0]}-seed{seed}-{tol}mm",
                    )


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _cell(per_seed: Mapping[str, Mapping], get) -> str:
    """The mean over seeds, then each seed's value in brackets ("–" when no seed has it)."""
    values = [get(v) for v in per_seed.values()]
    if all(v is None for v in values):
        return "–"
    return f"{_f(_mean(values))} ({', '.join(_f(v) for v in values)})"


def to_markdown(result: Mapping) -> str:
    meta = result["meta"]
    variants = result["variants"]
    lines = [
        f"# {TITLES[result.get('name', 'denoising_ae')]}",
        "",
        *meta_lines(meta),
        f"Demo: `{meta['demo']}`; `configs/{RUN}.yaml` trained on its cohort per variant and seed "
        f"({', '.join(result['seeds'])}), each rescored at {', '.join(f'{t:g}' for t in result['tolerances'])} mm "
        "residual tolerance and recalibrated on its 80 healthy validation scans; `intensity`: the demo's run.",
        "",
        "Variants (config overrides): "
        + "; ".join(f"`{name}`: `{' '.join(o) or '(none)'}`" for name, o in result["overrides"].items())
        + ".",
        "",
        "Each cell: the mean over seeds, then each seed in brackets. Volume: `residual_top200mm3`; slice: its profile "
        f"`{result['profile']}`; scan and slice classes as in `ceilings.py` (the lesion only in the 8 mm rim, within "
        "the scan's healthy intensity range, beyond it), each class's anomalous scans (lesion slices) against every "
        "healthy test scan (lesion-free counted slice). `latent_norm`: the paper's score ‖x − x̂‖₂ + β‖z‖₂ per slice, "
        f"the volume's mean of its 5 highest slices (`{LATENT_COLUMN}`), volume AUROC.",
        "",
        "## Demo test set",
        "",
    ]
    first = next(iter(variants))
    header = ["variant", "tolerance", "volume AUROC", "− intensity [95 % CI], per seed",
              f"− `{first}` [95 % CI], same seed", "within healthy range",
              "beyond healthy range", *[KIND_NAMES.get(k, k) for k in KINDS], "slice AUROC",
              "slice: within healthy range", "voxel AP", "healthy median", "`latent_norm`", "final loss"]  # fmt: skip
    rows = []
    for name, by_tol in variants.items():
        for tol, per_seed in by_tol.items():
            diffs = ", ".join(
                f"{v['vs_intensity']:+.3f} [{v['vs_intensity_ci'][0]:+.3f}, {v['vs_intensity_ci'][1]:+.3f}]"
                for v in per_seed.values()
            )
            against_first = ", ".join(
                f"{v['vs_first']:+.3f} [{v['vs_first_ci'][0]:+.3f}, {v['vs_first_ci'][1]:+.3f}]"
                for v in per_seed.values()
                if "vs_first" in v
            )
            rows.append(
                [
                    f"`{name}`",
                    f"{tol} mm",
                    _cell(per_seed, lambda v: v["auroc"]),
                    diffs,
                    against_first or "–",
                    _cell(per_seed, lambda v: v["volume_classes"].get(CLASSES[1])),
                    _cell(per_seed, lambda v: v["volume_classes"].get(CLASSES[2])),
                    *[_cell(per_seed, lambda v, k=k: v["kinds"].get(k)) for k in KINDS],
                    _cell(per_seed, lambda v: v["slice_classes"].get("all")),
                    _cell(per_seed, lambda v: v["slice_classes"].get(CLASSES[1])),
                    _cell(per_seed, lambda v: v["voxel_ap"]),
                    _cell(per_seed, lambda v: v["healthy_median"]),
                    _cell(per_seed, lambda v: v.get("latent_norm")),
                    _cell(per_seed, lambda v: v["train_loss"]),
                ]  # fmt: skip
            )
    base = result["intensity"]
    rows.append(
        [
            "`intensity`",
            "–",
            _f(base["auroc"]),
            "–",
            "–",
            _f(base["volume_classes"].get(CLASSES[1])),
            _f(base["volume_classes"].get(CLASSES[2])),
            *[_f(base["kinds"].get(k)) for k in KINDS],
            _f(base["slice_classes"].get("all")),
            _f(base["slice_classes"].get(CLASSES[1])),
            _f(base["voxel_ap"]),
            "–",
            "–",
            "–",
        ]  # fmt: skip
    )
    lines += [markdown_table(header, rows), ""]
    cases = result["cases"]
    lines += [
        "## Real FLAIR cases",
        "",
        "Slice AUROC of the profile inside each scan (lesion against lesion-free counted slices of the scan) / the "
        "residual's voxel AP inside the brain; `intensity`: the demo's run.",
        "",
    ]
    rows = []
    for name, by_tol in variants.items():
        for tol, per_seed in by_tol.items():
            rows.append(
                [f"`{name}`", f"{tol} mm"]
                + [
                    f"{_cell(per_seed, lambda v, c=c: v['real'][c]['slice'])} / "
                    f"{_cell(per_seed, lambda v, c=c: v['real'][c]['voxel_ap'])}"
                    for c in cases
                ]
            )
    rows.append(
        ["`intensity`", "–"]
        + [f"{_f(base['real'][c]['slice'])} / {_f(base['real'][c]['voxel_ap'])}" for c in cases]
    )
    lines += [markdown_table(["variant", "tolerance", *cases], rows), ""]
    lines += reading_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__, real_flag="--real")
    p.add_argument("--variant", type=parse_variant, action="append", default=None,
                   help="NAME=KEY=VALUE;KEY=VALUE: config overrides trained as one variant (repeatable)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument(
        "--tolerances", type=float, nargs="+", default=[0.0, 4.0, 8.0], help="residual tolerances in mm"
    )
    p.add_argument("--out", type=Path, default=None, help="work folder (default DEMO/denoising_ae)")
    p.add_argument("--max-voxels", type=int, default=500_000)
    p.add_argument("--name", choices=sorted(TITLES), default="denoising_ae", help="the document written")
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    demo = args.demo.resolve()
    work = (args.out or demo / "denoising_ae").resolve()
    datalist = demo / "data" / "datalist.json"
    slice_classes, scan_classes = counted_test_classes(demo, demo_config(demo))
    cases = [c for c in real_cases(args.real) if c["subject_id"] in FLAIR_CASES]
    if [c["subject_id"] for c in cases] != list(FLAIR_CASES):
        raise SystemExit(f"{args.real}: the real FLAIR cases {FLAIR_CASES} are not all there")
    real_datalist = work / "real_datalist.json"
    real_datalist.parent.mkdir(parents=True, exist_ok=True)
    real_datalist.write_text(json.dumps({"test": cases}, indent=2))

    baseline_dir = demo / "scores" / "intensity"
    baseline = test_table(baseline_dir)
    intensity = measure(baseline_dir, baseline, datalist, BASELINE, work / "evaluation" / "intensity")
    intensity.update(
        map_measures(
            demo,
            baseline_dir,
            "intensity",
            demo / "runs" / "intensity",
            "intensity",
            BASELINE,
            slice_classes,
            scan_classes,
        )  # fmt: skip
    )
    intensity["real"] = real_measures(
        demo / "runs" / "intensity",
        cases,
        real_datalist,
        work / "real" / "intensity",
        args.max_voxels,
        "intensity",
    )
    variants = dict(args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS])
    results: dict[str, dict[str, dict[str, dict]]] = {}
    profile = None
    for name, overrides in variants.items():
        trained = trained_runs(demo, RUN, args.seeds, work / "trained" / name, datalist, overrides)
        for seed, run_dir in trained.items():
            for mm in args.tolerances:
                tag = f"{name}-seed{seed}-{mm:g}mm"
                run = run_with_tolerance(run_dir, work / "runs" / tag, mm, datalist)
                score_dir = work / "scores" / tag
                if not (score_dir / "scores.csv").is_file():
                    from mri_anomaly.scoring.runner import score_datalist

                    score_datalist(run, datalist, score_dir, sections=("validation", "test"), save_maps=True,
                                   progress=False)  # fmt: skip
                v = measure(score_dir, baseline, datalist, COLUMN, work / "evaluation" / tag)
                v.update(map_measures(demo, score_dir, RUN, run, MAP, COLUMN, slice_classes, scan_classes))
                profile = v.pop("profile")
                v["train_loss"] = final_training_loss(run_dir)
                v["latent_norm"] = column_auroc(score_dir, LATENT_COLUMN)
                v["real"] = real_measures(run, cases, real_datalist, work / "real" / tag, args.max_voxels)
                results.setdefault(name, {}).setdefault(f"{mm:g}", {})[seed] = v
                print(
                    f"{tag}: volume {v['auroc']:.3f}, slice {v['slice_classes']['all']:.3f}", file=sys.stderr
                )
    add_differences_with_first(results, work)
    result = {
        "meta": run_meta("denoising_ae.py", argv, load_start, t0, demo=str(args.demo)),
        "name": args.name,
        "seeds": [str(s) for s in args.seeds],
        "tolerances": list(args.tolerances),
        "overrides": variants,
        "profile": profile,
        "cases": list(FLAIR_CASES),
        "variants": results,
        "intensity": intensity,
        "reading": args.reading.read_text().strip() if args.reading else "",
    }
    write_doc(args.docs, args.name, to_markdown(result), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
