"""Why no score reaches the slice and volume targets: what each lesion of the demo's test set shows where the
scores look.

Slice-level evaluation counts an axial slice of the model grid as anomalous when the preprocessed lesion mask has a
voxel in it (``slice_label``), and reads the counted slices only (brain fraction >= ``slices.min_brain_fraction``).
A map's slice profile (``<map>_slice_top200mm3``) reads the slice's brain minus the ``score.map_erosion_mm`` rim, or the
slice's brain where the erosion leaves none (:func:`mri_anomaly.scoring.brain.slice_brain_statistic`); a map's
volume scores read the brain minus the rim (:func:`mri_anomaly.scoring.maps.map_region`). Per counted lesion slice,
and per anomalous test scan, of the demo, through the runs' preprocessing, this script puts the slice (the scan) in
one class:

* ``rim only``: no lesion voxel in the part of the slice (the scan) the map scores read;
* ``within healthy range``: lesion voxels there, each inside the intensity range of the scan's own healthy voxels
  of its scored brain (the brain minus the rim, for slices and scans alike; the lowest to the highest): no
  threshold on the image finds them without a healthy voxel;
* ``beyond healthy range``: some lesion voxel there is brighter (or darker) than every healthy voxel of the scan's
  scored brain.

Then it reports, for slices and for scans: (a) the classes per lesion kind and size; (b) two ceilings of the AUROC,
for a score that ranks every lesion slice (scan) of a class set above every lesion-free slice (healthy scan) and
cannot tell the others from them (they count at chance, 0.5): one that sees every lesion in the scored part, and
one that sees the lesions beyond the healthy range only; (c) the runs' AUROC on all lesion slices (anomalous scans)
and on each class against the same negatives: every slice column, each run's best volume column (and the slice's
brain fraction as a control), at the demo's seed and over ``--seeds``.

Usage::

    python benchmarks/ceilings.py --demo demo-out [--seeds 1 2]

Writes ``docs/benchmarks/ceilings.md`` and ``.json``; reads the demo's scores, trains and scores nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

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
from detection import load_seed_tables  # noqa: E402
from lesion_conspicuity import BASELINES, GROUP_ORDER, RUNS, anomalous_test_items  # noqa: E402
from real_data import FLAIR_CASES, real_cases  # noqa: E402

CLASSES = ("rim only", "within healthy range", "beyond healthy range")
SIZE_ORDER = ("small", "medium", "large")
CONTROL = "brain_fraction"
REAL_FLAIR = FLAIR_CASES  # the real cases whose ceilings are measured


def scored_part(image: torch.Tensor, erosion: Sequence[int]) -> np.ndarray:
    """(H, W, D) bool: per axial slice, the voxels a map's slice profile reads: the brain of ``image`` (C, H, W, D)
    minus the rim of ``erosion`` voxels per axis where the slice keeps any, else the slice's brain
    (the rule of :func:`mri_anomaly.scoring.brain.slice_brain_statistic`)."""
    from mri_anomaly.scoring.brain import brain_mask
    from mri_anomaly.scoring.maps import map_region

    image = torch.as_tensor(image)
    brain = brain_mask(image[None])[0, 0]  # (H, W, D)
    region = map_region(image, erosion)[0]
    has_region = region.flatten(0, 1).any(dim=0)  # (D,)
    return torch.where(has_region[None, None, :], region, brain).numpy()


def _healthy_range(image: np.ndarray, lesion: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """The lowest and highest voxel of ``reference`` not in ``lesion`` ((inf, -inf) when there is none)."""
    healthy = image[reference & ~lesion]
    return (float(healthy.min()), float(healthy.max())) if healthy.size else (np.inf, -np.inf)


def _n_beyond(values: np.ndarray, bounds: tuple[float, float]) -> int:
    """How many ``values`` lie outside ``bounds`` (low, high)."""
    return int(((values > bounds[1]) | (values < bounds[0])).sum())


def lesion_slice_classes(
    image: np.ndarray, lesion: np.ndarray, part: np.ndarray, reference: np.ndarray | None = None
) -> list[dict]:
    """One row per axial slice (last axis) of ``image`` (H, W, D) with a lesion voxel: ``slice``,
    ``lesion_voxels`` (in the slice), ``in_part`` (of them in ``part``), ``beyond`` (of those, outside the
    scan's healthy range: above the highest or below the lowest voxel of ``reference`` not in ``lesion``), and
    ``class`` (one of :data:`CLASSES`). ``reference``: the scan's scored brain (the maps' region, the same for the
    scan's class), default ``part``. Masks are boolean (H, W, D)."""
    bounds = _healthy_range(image, lesion, part if reference is None else reference)
    rows = []
    for k in np.flatnonzero(lesion.any(axis=(0, 1))):
        les = lesion[..., k]
        inside = les & part[..., k]
        beyond = _n_beyond(image[..., k][inside], bounds)
        cls = CLASSES[0] if not inside.any() else CLASSES[2] if beyond else CLASSES[1]
        rows.append(
            {
                "slice": int(k),
                "lesion_voxels": int(les.sum()),
                "in_part": int(inside.sum()),
                "beyond": beyond,
                "class": cls,
            }
        )
    return rows


def lesion_scan_class(image: np.ndarray, lesion: np.ndarray, region: np.ndarray) -> dict:
    """The class of one scan (:data:`CLASSES`) by its lesion voxels in ``region`` (the brain minus the rim the map
    volume scores read): ``lesion_voxels``, ``in_part`` (in ``region``), ``beyond`` (of those, outside the range of
    the voxels of ``region`` not in ``lesion``) and ``class``. Arrays of one shape, ``lesion`` and ``region``
    boolean."""
    values = image[lesion & region]
    beyond = _n_beyond(values, _healthy_range(image, lesion, region))
    cls = CLASSES[0] if not values.size else CLASSES[2] if beyond else CLASSES[1]
    return {"lesion_voxels": int(lesion.sum()), "in_part": int(values.size), "beyond": beyond, "class": cls}


def classify_items(
    items: Sequence[Mapping[str, Any]], config: Mapping[str, Any], root: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`lesion_slice_classes` and :func:`lesion_scan_class` of every item (``image``, ``mask``: paths, relative
    to ``root`` when given) after the run's preprocessing (``config``: a run's resolved config, the transform its
    scoring uses), each row with ``subject_id`` and, where the item has them, ``group`` and ``size_stratum``; the
    slice rows also with ``counted`` (brain fraction >= ``slices.min_brain_fraction``): ``(slices, scans)``."""
    from mri_anomaly.data import slice_brain_fractions
    from mri_anomaly.data.preprocessing import preprocessing
    from mri_anomaly.scoring.maps import erosion_voxels, map_region

    transform = preprocessing(config["preprocessing"], keys=("image", "mask"))
    erosion = erosion_voxels(config)
    min_fraction = float((config.get("slices") or {}).get("min_brain_fraction", 0.0))
    slices, scans = [], []
    for item in items:
        paths = {k: str(root / item[k] if root is not None else item[k]) for k in ("image", "mask")}
        d = transform(paths)
        image = torch.as_tensor(d["image"]).as_subclass(torch.Tensor)
        lesion = np.asarray(d["mask"][0]) > 0.5
        counted = (slice_brain_fractions(image) >= min_fraction).numpy()
        keys = {k: item[k] for k in ("subject_id", "group", "size_stratum") if k in item}
        part = scored_part(image, erosion)
        region = map_region(image, erosion)[0].numpy()
        for row in lesion_slice_classes(image[0].numpy(), lesion, part, region):
            slices.append({**keys, **row, "counted": bool(counted[row["slice"]])})
        scans.append(
            {
                **keys,
                **lesion_scan_class(image[0].numpy(), lesion, region),
                "counted_slices": int(counted.sum()),
            }
        )
    return pd.DataFrame(slices), pd.DataFrame(scans)


def classify_test_scans(data: Path, config: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`classify_items` of the anomalous test scans of a demo cohort ``data``."""
    return classify_items(anomalous_test_items(data), config, root=data)


def brain_estimate_check(item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, float]:
    """How the brain the scores use (voxels > 0 after the run's preprocessing) compares with the case's brain mask
    (``brain_mask``, else the nonzero voxels of its skull-stripped image) taken through the same preprocessing as a
    mask (bilinear, > 0.5): ``brain_excess`` (the estimate's voxels over the mask's, minus 1) and
    ``region_in_true_rim`` (the share of the scored region, the estimate minus the rim, that lies outside the mask's
    own region: within the rim of the true brain)."""
    import tempfile

    import nibabel as nib
    from mri_anomaly.data.preprocessing import preprocessing
    from mri_anomaly.scoring.maps import erosion_voxels, map_region

    transform = preprocessing(config["preprocessing"], keys=("image", "brain"))
    erosion = erosion_voxels(config)
    with tempfile.TemporaryDirectory() as tmp:
        brain_path = item.get("brain_mask")
        if not brain_path:
            img = nib.load(str(item["image"]))
            brain_path = str(Path(tmp) / "brain.nii.gz")
            nib.save(nib.Nifti1Image((np.asarray(img.dataobj) != 0).astype(np.uint8), img.affine), brain_path)
        d = transform({"image": str(item["image"]), "brain": str(brain_path)})
    image = torch.as_tensor(d["image"]).as_subclass(torch.Tensor)
    true = torch.as_tensor(d["brain"]).as_subclass(torch.Tensor).float()
    estimate = (image[0] > 0).numpy()
    region = map_region(image, erosion)[0].numpy()
    true_region = map_region(true, erosion)[0].numpy()
    return {
        "brain_excess": float(estimate.sum() / max(int((true[0] > 0.5).sum()), 1) - 1.0),
        "region_in_true_rim": float((region & ~true_region).sum() / max(int(region.sum()), 1)),
    }


def real_case_ceilings(data: Path, config: Mapping[str, Any], cases: Sequence[str]) -> list[dict]:
    """Per real case of ``data`` named in ``cases`` (``real_data.real_cases``): its counted lesion and lesion-free
    slices after the run's preprocessing, the share of each class among the lesion slices, and the two ceilings
    of the slice AUROC inside the scan (lesion against lesion-free counted slices of the same scan)."""
    items = [c for c in real_cases(data) if c["subject_id"] in cases]
    slices, scans = classify_items(items, config)
    out = []
    for scan in scans.to_dict("records"):
        mine = slices[(slices["subject_id"] == scan["subject_id"]) & slices["counted"]]
        n = len(mine)
        counts = {c: int((mine["class"] == c).sum()) for c in CLASSES}
        out.append(
            {
                "subject_id": scan["subject_id"],
                "lesion_slices": n,
                "lesion_free_slices": scan["counted_slices"] - n,
                **{f"share_{c}": counts[c] / n if n else float("nan") for c in CLASSES},
                "median_lesion_voxels": float(mine["lesion_voxels"].median()) if n else float("nan"),
                "ceiling_scored_part": ceiling(counts[CLASSES[1]] + counts[CLASSES[2]], n),
                "ceiling_beyond_range": ceiling(counts[CLASSES[2]], n),
                "within_needed_for_0.85": needed_within(0.85, counts[CLASSES[0]] / n, counts[CLASSES[1]] / n)
                if n
                else float("nan"),
                "scan_class": scan["class"],
                **brain_estimate_check(
                    next(c for c in items if c["subject_id"] == scan["subject_id"]), config
                ),
            }
        )
    return out


def demo_config(demo: Path) -> dict:
    """The resolved config of the demo's ``intensity`` run: the preprocessing and map region every run shares."""
    from mri_anomaly.training.config import config_from_yaml

    return config_from_yaml((demo / "runs" / "intensity" / "config.yaml").read_text())


def counted_test_classes(demo: Path, config: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`classify_test_scans` of a demo through its runs' preprocessing, the slices cut to the counted lesion
    slices of its score tables (brain fraction >= ``slices.min_brain_fraction``): ``(slices, scans)``."""
    slices, scans = classify_test_scans(demo / "data", config)
    scored = load_seed_tables(demo, [0], ["intensity"])[0]["intensity"]["slice"]
    scored = {
        (str(a), int(b)) for a, b in scored.loc[scored["slice_label"] == 1, ["subject_id", "slice"]].values
    }
    mine = slices[slices["counted"]]
    if {(str(a), int(b)) for a, b in mine[["subject_id", "slice"]].values} != scored:
        raise RuntimeError(
            f"{demo}: the counted lesion slices here differ from its score tables' (other preprocessing?)"
        )
    return mine.reset_index(drop=True), scans


def ceiling(n_seen: int, n_positive: int) -> float:
    """Slice AUROC of a score that ranks ``n_seen`` of ``n_positive`` lesion slices above every lesion-free slice
    and the others among them, at chance (each such pair counts 0.5)."""
    return (n_seen + 0.5 * (n_positive - n_seen)) / n_positive if n_positive else float("nan")


def needed_within(target: float, share_rim: float, share_within: float) -> float:
    """The slice AUROC the ``within healthy range`` slices need for an overall ``target`` when every ``beyond``
    slice is ranked above every lesion-free slice and the ``rim only`` ones at chance: with one set of negatives
    the overall AUROC is the share-weighted mean of the classes' AUROCs."""
    share_beyond = 1.0 - share_rim - share_within
    return (target - share_beyond - 0.5 * share_rim) / share_within if share_within else float("nan")


def class_table(classes: pd.DataFrame) -> list[dict]:
    """Per lesion group and size (then all): the lesion slices (or scans) of ``classes``, the share of each class,
    the median lesion voxels per row, and the two ceilings (every lesion in the scored part seen; only those beyond
    the healthy range)."""
    out = []
    keys = [(g, s) for g in GROUP_ORDER for s in SIZE_ORDER] + [("all", "all")]
    for group, size in keys:
        part = (
            classes
            if group == "all"
            else classes[(classes["group"] == group) & (classes["size_stratum"] == size)]
        )
        n = len(part)
        if not n:
            continue
        counts = {c: int((part["class"] == c).sum()) for c in CLASSES}
        out.append(
            {
                "group": group,
                "size_stratum": size,
                "n": n,
                **{f"share_{c}": counts[c] / n for c in CLASSES},
                "median_lesion_voxels": float(part["lesion_voxels"].median()),
                "ceiling_scored_part": ceiling(counts[CLASSES[1]] + counts[CLASSES[2]], n),
                "ceiling_beyond_range": ceiling(counts[CLASSES[2]], n),
            }
        )
    return out


def class_aurocs(
    slices: pd.DataFrame, classes: pd.DataFrame, columns: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{column: {"all", <class>...: AUROC}}``: each column of ``slices`` (counted slices, 0/1 ``slice_label``)
    on all lesion slices and on each class's lesion slices, each against every lesion-free slice.

    Raises:
        ValueError: a lesion slice of ``slices`` has no class (the preprocessing here is not the scoring's)."""
    from mri_anomaly.evaluation.metrics import auroc

    labelled = slices.merge(classes[["subject_id", "slice", "class"]], on=["subject_id", "slice"], how="left")
    positive = labelled["slice_label"] == 1
    missing = labelled[positive & labelled["class"].isna()]
    if len(missing):
        raise ValueError(
            f"{len(missing)} lesion slices of the score table have no lesion here "
            f"(first: {missing.iloc[0]['subject_id']} slice {missing.iloc[0]['slice']})"
        )
    negative = labelled[labelled["slice_label"] == 0]
    out = {}
    for col in columns:
        entry = {}
        for name, pos in [
            ("all", labelled[positive]),
            *[(c, labelled[labelled["class"] == c]) for c in CLASSES],
        ]:
            if len(pos):
                y = np.r_[np.ones(len(pos)), np.zeros(len(negative))]
                s = np.r_[pos[col].to_numpy(np.float64), negative[col].to_numpy(np.float64)]
                entry[name] = auroc(y, s)
        out[col] = entry
    return out


def run_aurocs(demo: Path, seeds: Sequence[int], classes: pd.DataFrame) -> dict:
    """``{run: {"columns": {column: {seed: class AUROCs}}, "best": column}}`` for every run with slice scores;
    ``best``: the column with the highest slice AUROC on all lesion slices at the first seed. The brain fraction
    is added as a control under the run ``intensity``."""
    tables = load_seed_tables(demo, seeds, (*RUNS, *BASELINES))
    out: dict[str, dict] = {}
    for seed in seeds:
        for run, t in tables.get(seed, {}).items():
            if t["slice"] is None:
                continue
            columns = list(t["slice_columns"]) + (
                [CONTROL] if run == "intensity" and seed == seeds[0] else []
            )
            for col, entry in class_aurocs(t["slice"], classes, columns).items():
                name = "control" if col == CONTROL else run
                out.setdefault(name, {"columns": {}})["columns"].setdefault(col, {})[seed] = entry
    for entry in out.values():
        first = {c: v[seeds[0]]["all"] for c, v in entry["columns"].items() if seeds[0] in v}
        entry["best"] = max(first, key=lambda c: first[c])
    return out


WITHIN_GROUPS = (
    "ms",
    "focal_opposite",
)  # the within-range scans' kinds, each reported apart (faint MS, dark focal)


def volume_class_aurocs(volume: pd.DataFrame, scans: pd.DataFrame, column: str) -> dict[str, float]:
    """``{"all", <class>..., "<within class>:<group>"...: AUROC}`` of ``column`` of a volume table (``subject_id``,
    ``label``): the anomalous scans (of each class of ``scans``; the within-range ones also per group of
    :data:`WITHIN_GROUPS` when ``scans`` has a ``group``) against every healthy scan."""
    from mri_anomaly.evaluation.metrics import auroc

    keep = ["subject_id", "class"] + (["group"] if "group" in scans else [])
    labelled = volume.drop(columns=[c for c in ("group",) if c in volume]).merge(
        scans[keep], on="subject_id", how="left"
    )
    negative = labelled[labelled["label"] == 0]
    anomalous = labelled[labelled["label"] == 1]
    within = [
        (f"{CLASSES[1]}:{g}", anomalous[(anomalous["class"] == CLASSES[1]) & (anomalous["group"] == g)])
        for g in (WITHIN_GROUPS if "group" in labelled else ())
    ]
    out = {}
    for name, pos in [
        ("all", anomalous),
        *[(c, anomalous[anomalous["class"] == c]) for c in CLASSES],
        *within,
    ]:
        if len(pos):
            y = np.r_[np.ones(len(pos)), np.zeros(len(negative))]
            out[name] = auroc(
                y, np.r_[pos[column].to_numpy(np.float64), negative[column].to_numpy(np.float64)]
            )
    return out


def run_volume_aurocs(demo: Path, seeds: Sequence[int], scans: pd.DataFrame) -> dict:
    """``{run: {"column": best volume column at the first seed, "by_seed": {seed: class AUROCs}}}``."""
    from mri_anomaly.evaluation.metrics import auroc

    tables = load_seed_tables(demo, seeds, (*RUNS, *BASELINES))
    out: dict[str, dict] = {}
    for run, t in tables.get(seeds[0], {}).items():
        y = t["volume"]["label"].to_numpy(dtype=int)
        values = {c: auroc(y, t["volume"][c].to_numpy(np.float64)) for c in t["score_columns"]}
        column = max(values, key=lambda c: values[c])
        out[run] = {
            "column": column,
            "by_seed": {
                seed: volume_class_aurocs(tables[seed][run]["volume"], scans, column)
                for seed in seeds
                if run in tables.get(seed, {})
            },
        }
    return out


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _pct(v: float) -> str:
    return f"{100 * v:.0f} %"


def _class_rows(table: Sequence[Mapping[str, Any]]) -> list[list]:
    return [
        [
            r["group"].replace("focal_opposite", "dark focal"),
            r["size_stratum"],
            r["n"],
            *[_pct(r[f"share_{c}"]) for c in CLASSES],
            _f(r["median_lesion_voxels"], 0),
            _f(r["ceiling_scored_part"]),
            _f(r["ceiling_beyond_range"]),
        ]
        for r in table
    ]


def _needed(table: Sequence[Mapping[str, Any]], target: float) -> str:
    total = table[-1]
    return _f(needed_within(target, total[f"share_{CLASSES[0]}"], total[f"share_{CLASSES[1]}"]))


def _mean_cell(values: Sequence[Mapping[str, float]], key: str) -> str:
    v = [e[key] for e in values if key in e]
    return f"{_f(float(np.mean(v)))} ({len(v)})" if len(v) > 1 else "–"


def to_markdown(result: Mapping[str, Any]) -> str:
    meta, seeds = result["meta"], result["seeds"]
    several = len(seeds) > 1
    lines = [
        "# What the lesions show where the scores look: slice and volume ceilings",
        "",
        *meta_lines(meta),
        f"Demo: `{result['demo']}`; seeds {', '.join(str(s) for s in seeds)} (0: the demo itself).",
        "",
        "Each counted lesion slice of the demo's anomalous test scans (slice-level evaluation: an axial slice with a "
        "voxel of the preprocessed mask and brain fraction ≥ 0.1), and each anomalous test scan, is put in one class "
        "by what its lesion shows where the map scores look: for a slice, the slice's brain minus the 8 mm rim (its "
        "brain where the erosion leaves none), the part its maps' slice profiles read; for a scan, the brain minus "
        "the 8 mm rim, the part its maps' volume scores read.",
        "",
        "* **rim only**: no lesion voxel in that part;",
        "* **within healthy range**: lesion voxels there, each inside the intensity range of the scan's own healthy "
        "voxels of its scored brain: no threshold on the image finds them without a healthy voxel;",
        "* **beyond healthy range**: some lesion voxel there brighter (or darker) than every healthy voxel of the "
        "scan's scored brain.",
        "",
        "Ceilings: the AUROC of a score that ranks every lesion slice (anomalous scan) of a class set above every "
        "lesion-free slice (healthy scan) and cannot tell the others from them (pairs at chance, 0.5): one that "
        "sees every lesion in the scored part, one that sees only those beyond the healthy range. With one set of "
        "negatives a score's AUROC over all positives is the share-weighted mean of its AUROCs on the classes.",
        "",
        "## Slices",
        "",
    ]
    class_header = [
        "lesions",
        "size",
        "n",
        *CLASSES,
        "median lesion voxels",
        "ceiling: every lesion in the scored part",
        "ceiling: beyond the healthy range only",
    ]
    lines += [markdown_table(class_header, _class_rows(result["classes"])), ""]
    lines += [
        "For the slice target 0.90, with every slice beyond the healthy range ranked above every lesion-free slice "
        f"and the rim-only ones at chance, the slices within the healthy range need **{_needed(result['classes'], 0.90)}**.",
        "",
        "Slice AUROC of each class's lesion slices against every lesion-free counted slice (the slices of healthy "
        "test scans and the lesion-free slices of anomalous ones), the same negatives for every class; `all`: every "
        "lesion slice, as in `detection.md` (the runs' numbers there are another demo's when the demos differ). The "
        "demo's seed, then the mean over the seeds (their number in brackets). Each run's best column at the demo's "
        "seed in bold.",
        "",
    ]
    header = ["run", "column", "all", *CLASSES]
    if several:
        header += [f"mean over seeds: {c}" for c in ("all", *CLASSES)]
    rows = []
    for run, entry in result["runs"].items():
        for col, by_seed in entry["columns"].items():
            first = by_seed.get(seeds[0], by_seed.get(str(seeds[0]), {}))
            name = f"**`{col}`**" if col == entry["best"] else f"`{col}`"
            row = [run, name, *[_f(first.get(c)) for c in ("all", *CLASSES)]]
            if several:
                row += [_mean_cell(list(by_seed.values()), c) for c in ("all", *CLASSES)]
            rows.append(row)
    lines += [markdown_table(header, rows), ""]
    lines += [
        "## Scans",
        "",
        markdown_table(class_header, _class_rows(result["scan_classes"])),
        "",
    ]
    lines += [
        "For the volume target 0.95, with every scan beyond the healthy range ranked above every healthy scan and "
        f"the rim-only ones at chance, the scans within the healthy range need **{_needed(result['scan_classes'], 0.95)}**.",
        "",
        "Volume AUROC of each run's best volume column at the demo's seed (as in `detection.md`'s first table), on "
        "the anomalous test scans of each class against all 80 healthy test scans, and on the within-range MS and "
        "dark focal scans apart; the demo's seed, then the mean over the seeds.",
        "",
    ]
    keys = ("all", *CLASSES, *[f"{CLASSES[1]}:{g}" for g in WITHIN_GROUPS])
    names = [k.replace(":ms", ": MS").replace(":focal_opposite", ": dark focal") for k in keys]
    header = ["run", "column", *names]
    if several:
        header += [f"mean over seeds: {c}" for c in names]
    rows = []
    for run, entry in result["volume_runs"].items():
        by_seed = entry["by_seed"]
        first = by_seed.get(seeds[0], by_seed.get(str(seeds[0]), {}))
        row = [run, f"`{entry['column']}`", *[_f(first.get(c)) for c in keys]]
        if several:
            row += [_mean_cell(list(by_seed.values()), c) for c in keys]
        rows.append(row)
    lines += [markdown_table(header, rows), ""]
    if result.get("real"):
        lines += [
            "## Real FLAIR cases",
            "",
            "Each case's counted slices through the same preprocessing; slice AUROC inside the scan (lesion against "
            "lesion-free counted slices of the same scan, as in `real_data.md`), so its ceilings count the scan's own "
            "lesion slices. The issue's target there is 0.85: what the within-range slices need for it with every other slice "
            "found and the rim-only ones at chance (none: the other slices reach it alone; above 1: out of reach). The last "
            "two columns: the brain the scores use (voxels > 0 after preprocessing) against the case's brain mask (BRATS; "
            "MS: its skull-stripped image's nonzero voxels) taken through the same preprocessing as a mask, and the "
            "share of the scored region (that brain minus 8 mm) within 8 mm of the mask's edge. Scan class: the whole scan's, as above.",
            "",
        ]
        header = [
            "case",
            "lesion slices",
            "lesion-free slices",
            *CLASSES,
            "median lesion voxels",
            "ceiling: every lesion in the scored part",
            "ceiling: beyond the healthy range only",
            "within-range slices need for 0.85",
            "scan class",
            "brain estimate vs brain mask",
            "scored region in the true brain's rim",
        ]
        rows = [
            [
                r["subject_id"],
                r["lesion_slices"],
                r["lesion_free_slices"],
                *[_pct(r[f"share_{c}"]) for c in CLASSES],
                _f(r["median_lesion_voxels"], 0),
                _f(r["ceiling_scored_part"]),
                _f(r["ceiling_beyond_range"]),
                "none" if r["within_needed_for_0.85"] <= 0 else _f(r["within_needed_for_0.85"]),
                r["scan_class"],
                f"{100 * r['brain_excess']:+.0f} %",
                _pct(r["region_in_true_rim"]),
            ]
            for r in result["real"]
        ]
        lines += [markdown_table(header, rows), ""]
    lines += reading_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__, seeds=True, real_flag="--real")
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    demo = args.demo.resolve()
    config = demo_config(demo)
    classes, scans = counted_test_classes(demo, config)
    real = real_case_ceilings(args.real, config, REAL_FLAIR) if args.real.is_dir() else []
    seeds = demo_seeds(args)
    result = {
        "demo": str(demo),
        "seeds": seeds,
        "classes": class_table(classes),
        "runs": run_aurocs(demo, seeds, classes),
        "scan_classes": class_table(scans),
        "volume_runs": run_volume_aurocs(demo, seeds, scans),
        "real": real,
        "reading": args.reading.read_text().strip() if args.reading else "",
    }
    result["meta"] = run_meta("ceilings.py", argv, load_start, t0)
    write_doc(args.docs, "ceilings", to_markdown(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
