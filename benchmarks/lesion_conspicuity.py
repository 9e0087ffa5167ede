"""Are the demo's lesions as conspicuous on the model grid as real ones? And do the models beat thresholding
once they are?

The demo cohort inserted each lesion on its 4 mm grid with full contrast in every voxel of its mask (an MS
pattern's mask is its 1 mm consensus mask's voxels at least a quarter filled) until 2026-12-02. A scanner's 4 mm
voxel that a lesion fills a quarter of moves a quarter of the way: the cohort now images lesions with partial volume
(``make_demo_cohort(partial_volume_lesions=True)``). This script measures both imagings, through the package's
preprocessing (the demo's runs' config: anti-aliasing, 4 mm, brain-median anchoring), by how far a lesion stands
out from the healthy brain of its own scan in the raw image intensity:

* per real FLAIR case of ``--real`` (MS patient07, BRATS 1-3) and per lesion kind and size stratum of the demo's
  test scans and of its twin, the same cohort made with the other imaging (the same subjects, masks and healthy
  scans: checked): the voxel AP of the intensity (lesion vs healthy brain voxels of the scan, chance = the lesion
  fraction), the share of lesion voxels above the healthy brain's 99th percentile, and the lesion's median minus
  the healthy median in healthy interquartile ranges;
* then scores the twin's anomalous scans with every run of the demo (and of its retrained seeds with ``--seeds``;
  the runs train on healthy scans only, so they are the same for both), keeps the demo's healthy test scores, and
  compares each learned run's volume column chosen on the demo with the ``intensity`` and ``normative`` baselines'
  chosen columns on both test sets (``detection.best_column_over_seeds``: per seed, mean, and the pooled paired
  difference with its CI);
* for the runs' voxel maps (seed 0): how well each marks the lesion voxels, and how far a lesion moves it, from the
  same subjects made without the lesion's intensity (lesion-free twins) scored by the same runs;
* for the Glow runs, where in the log-density the lesion shows: the ``nll`` map split by scale into its prior and
  flow-step terms, and each scale's most responsive latent channel, on the same pairs (``glow_parts``).

Usage::

    python benchmarks/lesion_conspicuity.py --demo demo-out [--real ../shared/data] [--seeds 1 2]
        [--out /tmp/mri-anomaly-lesion-conspicuity]

Writes ``docs/benchmarks/lesion_conspicuity.md`` and ``.json``. Runs' scores under ``--out`` are reused.
"""

from __future__ import annotations

import hashlib
import json
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

from _common import demo_benchmark_parser, demo_seeds, markdown_table, reading_lines, run_meta, write_doc  # noqa: E402
from detection import best_column_over_seeds, load_seed_tables, seed_folder  # noqa: E402
from real_data import real_cases  # noqa: E402

RUNS = ("glow2d-ratio", "glow3d-ratio", "deep-svdd-2d", "deep-sad-2d", "latent-norm-ae-2d")
BASELINES = ("intensity", "normative")
RIM_VOXELS = 2  # 8 mm at 4 mm: the maps' rim (score.map_erosion_mm); conspicuity is reported inside it too
GROUP_ORDER = ("ms", "tumour", "focal", "focal_opposite")
GROUP_LABELS = tuple(g.replace("focal_opposite", "dark focal") for g in GROUP_ORDER)  # table headers


def conspicuity(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """How far the lesion voxels stand out from the scan's healthy brain voxels in intensity alone.

    Args:
        image, lesion, brain: arrays of one shape; ``lesion`` and ``brain`` boolean.

    Returns:
        ``{"lesion_voxels", "chance", "ap", "auroc", "above_q99", "contrast_iqr"}``: AP and AUROC of the intensity
        as the score of lesion against healthy brain voxels, the lesion fraction of the brain (chance AP), the
        share of lesion voxels above the healthy voxels' 99th percentile, and (lesion median − healthy median) /
        healthy interquartile range. NaN (and 0 voxels) when no lesion voxel lies in the brain.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    les, healthy = lesion & brain, brain & ~lesion
    n = int(les.sum())
    if n == 0 or not healthy.any():
        nan = float("nan")
        return {
            "lesion_voxels": n,
            "chance": nan,
            "ap": nan,
            "auroc": nan,
            "above_q99": nan,
            "contrast_iqr": nan,
        }
    y = np.r_[np.ones(n), np.zeros(int(healthy.sum()))]
    s = np.r_[image[les], image[healthy]].astype(np.float64)
    q25, median, q75, q99 = np.quantile(image[healthy], [0.25, 0.5, 0.75, 0.99])
    return {
        "lesion_voxels": n,
        "chance": n / int(brain.sum()),
        "ap": float(average_precision_score(y, s)),
        "auroc": float(roc_auc_score(y, s)),
        "above_q99": float((image[les] > q99).mean()),
        "contrast_iqr": float((np.median(image[les]) - median) / max(q75 - q25, 1e-12)),
    }


def preprocessed_conspicuity(
    items: Sequence[Mapping[str, Any]], preprocessing_config: Mapping[str, Any]
) -> list[dict]:
    """:func:`conspicuity` of each item (``image``, ``mask``, optional ``brain_mask``) after the run's preprocessing,
    in the whole brain and inside the brain minus :data:`RIM_VOXELS` (the brain: the item's ``brain_mask``, else the
    nonzero voxels of its image, the skull-stripped scans' brain)."""
    import tempfile

    import nibabel as nib
    from mri_anomaly.data.preprocessing import preprocessing
    from scipy import ndimage

    transform = preprocessing(
        {**preprocessing_config, "brain_mask_key": "brain_mask"}, keys=("image", "mask")
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in items:
            entry = {"image": str(item["image"]), "mask": str(item["mask"])}
            if item.get("brain_mask"):
                entry["brain_mask"] = str(item["brain_mask"])
            else:
                img = nib.load(str(item["image"]))
                path = Path(tmp) / f"{item['subject_id']}_brain.nii.gz"
                nib.save(
                    nib.Nifti1Image((np.asarray(img.dataobj) != 0).astype(np.uint8), img.affine), str(path)
                )
                entry["brain_mask"] = str(path)
            d = transform(entry)
            image = d["image"][0].numpy()
            lesion, brain = d["mask"][0].numpy() > 0.5, d["brain_mask"][0].numpy() > 0.5
            inner = ndimage.binary_erosion(brain, iterations=RIM_VOXELS)
            row = {k: item[k] for k in ("subject_id", "group", "size_stratum") if k in item}
            row.update(conspicuity(image, lesion, brain))
            row.update({f"inner_{k}": v for k, v in conspicuity(image, lesion, inner).items()})
            rows.append(row)
    return rows


def group_medians(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict]:
    """Median of ``keys`` per (group, size stratum), in :data:`GROUP_ORDER` and small/medium/large order."""
    df = pd.DataFrame(rows)
    out = []
    strata = ("small", "medium", "large")
    for (group, stratum), part in sorted(
        df.groupby(["group", "size_stratum"]),
        key=lambda gs: (
            GROUP_ORDER.index(gs[0][0]) if gs[0][0] in GROUP_ORDER else 99,
            strata.index(gs[0][1]),
        ),
    ):
        out.append({"group": group, "size_stratum": stratum, "n": len(part),
                    **{k: float(np.nanmedian(part[k].to_numpy(np.float64))) for k in keys}})  # fmt: skip
    return out


def map_conspicuity(demo: Path, runs: Sequence[str]) -> list[dict]:
    """:func:`conspicuity` of every voxel map the demo's runs wrote for its anomalous test scans (``scores/<run>/maps``,
    on the scan's grid), and of the image itself, inside the brain minus :data:`RIM_VOXELS` (the maps' scored region;
    the brain: the skull-stripped image's nonzero voxels): does a map make a lesion stand out more than the image?"""
    import nibabel as nib
    from scipy import ndimage

    rows = []
    for item in anomalous_test_items(demo / "data"):
        sid = item["subject_id"]
        image = np.asarray(nib.load(str(item["image"])).dataobj, dtype=np.float64)
        lesion = np.asarray(nib.load(str(item["mask"])).dataobj) > 0.5
        region = ndimage.binary_erosion(image != 0, iterations=RIM_VOXELS)
        base = {"subject_id": sid, "group": item["group"], "size_stratum": item["size_stratum"]}
        rows.append({**base, "map": "image", **conspicuity(image, lesion, region)})
        for run in runs:
            for path in sorted((demo / "scores" / run / "maps" / "test").glob(f"{sid}_*.nii.gz")):
                values = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
                name = path.name[len(sid) + 1 : -len(".nii.gz")]
                rows.append({**base, "map": f"{run} `{name}`", **conspicuity(values, lesion, region)})
    return rows


def map_summary(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("ap", "above_q99")) -> list[dict]:
    """Per map (in the order first seen) and lesion variant: the median over scans of ``keys`` (by default the AP and
    the share of lesion voxels above the healthy 99th percentile: both rank-based, so a map's scale and its many zeros
    do not matter)."""
    df = pd.DataFrame(rows)
    out = []
    for name in dict.fromkeys(df["map"]):
        part = df[df["map"] == name]
        entry: dict[str, Any] = {"map": name}
        for group in GROUP_ORDER:
            g = part[part["group"] == group]
            if len(g):
                entry[group] = {k: float(np.nanmedian(g[k].to_numpy(np.float64))) for k in keys}
        out.append(entry)
    return out


def lesion_free_twins(demo: Path, out: Path) -> Path:
    """The demo's anomalous test subjects made again with the lesion's intensity left out: the same anatomy, noise,
    bias, mask and (tumours) mass effect, only the voxels the lesion would change are not changed (``RandLesion``'s
    blends made the identity, in this process). Checked to hold the demo's masks; returns its data folder."""
    from unittest import mock

    from mri_anomaly.data.lesions import RandLesion

    data = out / "lesion-free"
    if not (data / "datalist.json").is_file():
        with (
            mock.patch.object(RandLesion, "_blend", lambda self, x, region, level, ref: x),
            mock.patch.object(RandLesion, "_changes", lambda self, x, parts, levels, ref: x),
        ):
            # the anomalous subjects do not depend on the healthy count; the patch holds in this process only
            remake_cohort(demo, data, healthy=1, workers=1, partial_volume=partial_volume_of(demo / "data"))
    check_same_files(sorted((demo / "data" / "masks").glob("*")), data)
    return data


def lesion_response(image: np.ndarray, free: np.ndarray, lesion: np.ndarray, region: np.ndarray) -> float:
    """How far a lesion moves a map, against the map's own healthy range: the median over the lesion's voxels in
    ``region`` of (map with the lesion − map without it), divided by the healthy voxels' 99th percentile minus their
    median in the map without it (the distance a voxel must rise to pass the healthy top percentile). NaN when no
    lesion voxel lies in ``region``."""
    les, healthy = lesion & region, region & ~lesion
    if not les.any() or not healthy.any():
        return float("nan")
    q50, q99 = np.quantile(free[healthy], [0.5, 0.99])
    return float(np.median(image[les] - free[les]) / max(q99 - q50, 1e-12))


def response_rows(demo: Path, free_data: Path, free_scores: Path, runs: Sequence[str]) -> list[dict]:
    """:func:`lesion_response` of the image and of every map of ``runs`` (seed 0) per anomalous test scan, inside the
    brain minus :data:`RIM_VOXELS`."""
    import nibabel as nib
    from scipy import ndimage

    def load(path: Path) -> np.ndarray:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)

    rows = []
    for item in anomalous_test_items(demo / "data"):
        sid = item["subject_id"]
        image, free = load(Path(item["image"])), load(free_data / "images" / Path(item["image"]).name)
        lesion = load(Path(item["mask"])) > 0.5
        region = ndimage.binary_erosion(free != 0, iterations=RIM_VOXELS)
        base = {"subject_id": sid, "group": item["group"], "size_stratum": item["size_stratum"]}
        rows.append({**base, "map": "image", "response": lesion_response(image, free, lesion, region)})
        for run in runs:
            for path in sorted((demo / "scores" / run / "maps" / "test").glob(f"{sid}_*.nii.gz")):
                name = path.name[len(sid) + 1 : -len(".nii.gz")]
                twin = free_scores / run / "maps" / "test" / path.name
                rows.append({**base, "map": f"{run} `{name}`",
                             "response": lesion_response(load(path), load(twin), lesion, region)})  # fmt: skip
    return rows


def glow_parts(method: Any, image: torch.Tensor) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The in-distribution Glow's −log-density map of one preprocessed ``image`` (C, H, W, D) split by scale and term,
    and its standardised latents, all on the model grid (a 2D Glow on the axial slices).

    Returns:
        ``parts``: ``"scale i prior"`` (−log prior density of scale i's latents, spread over its block) and ``"scale i
        steps"`` (−log-det of scale i's flow steps: the coupling log-scales there, plus a constant actnorm/1×1 share),
        and ``"all"``, their sum (the ``nll`` map in nats per voxel), each (H, W, D); ``latents``: per scale
        (C_i, H, W, D), each latent repeated over the voxels of its block.
    """
    from mri_anomaly.flows import dequantize

    x = dequantize(image[None].float(), False, method.n_bins)
    if method.spatial_dims == 2:
        x = x[0].permute(3, 0, 1, 2)  # the axial slices (D, C, H, W), as the 2D scoring takes them
    with torch.no_grad():
        out = method.in_distribution(x, return_maps=True, split_maps=True)

    def volume(t: torch.Tensor) -> torch.Tensor:  # (N, K, *grid) -> (K, H', W', D')
        return t.permute(1, 2, 3, 0) if method.spatial_dims == 2 else t[0]

    total, steps = volume(out.log_density_maps), volume(out.flow_log_det_maps)
    parts: dict[str, np.ndarray] = {}
    for level in range(total.shape[0]):
        parts[f"scale {level + 1} prior"] = -(total[level] - steps[level]).numpy()
        parts[f"scale {level + 1} steps"] = -steps[level].numpy()
    parts["all"] = -total.sum(0).numpy()
    shape = total.shape[1:]
    latents = []
    for z in out.z:
        z = volume(z)
        for axis, size in enumerate(shape, start=1):
            z = z.repeat_interleave(size // z.shape[axis], dim=axis)
        latents.append(z.numpy())
    return parts, latents


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """The image's gradient magnitude (its edges), same shape."""
    return np.sqrt(sum(g**2 for g in np.gradient(image.astype(np.float64))))


def edge_correlation(values: np.ndarray, edges: np.ndarray, region: np.ndarray) -> float:
    """Pearson correlation, over ``region``, of ``values`` with ``edges`` (:func:`gradient_magnitude`)."""
    return float(np.corrcoef(values[region], edges[region])[0, 1])


def glow_part_rows(demo: Path, free_data: Path, runs: Sequence[str], log=print) -> list[dict]:
    """Per Glow run of ``runs`` (seed 0) and anomalous test scan: :func:`lesion_response` of each of
    :func:`glow_parts` (and of the image) with its lesion-free twin, on the model grid inside the brain minus one
    voxel, with the part's healthy spread (q99 − median, nats per voxel) and :func:`edge_correlation`; and per scale the
    response of its most responsive latent channel (the largest median over the variant's scans, either sign)."""
    from mri_anomaly.runs import load_run
    from mri_anomaly.scoring.items import PreprocessedItems
    from scipy import ndimage

    rows = []
    items = anomalous_test_items(demo / "data")
    for run in runs:
        if not (demo / "runs" / run / "checkpoint.pt").is_file():
            continue
        method, config, _ = load_run(demo / "runs" / run, torch.device("cpu"))
        method.eval()
        log(f"{run}: the log-density's parts on {len(items)} scans and their lesion-free twins")
        for item in items:
            free_item = {**item, "image": str(free_data / "images" / Path(item["image"]).name)}
            data = [PreprocessedItems([_datalist_item(it)], config)[0][1] for it in (item, free_item)]
            image, free = (torch.as_tensor(d["image"])[0].numpy() for d in data)
            lesion = torch.as_tensor(data[0]["mask"])[0].numpy() > 0.5
            region = ndimage.binary_erosion(free > 0, iterations=1)
            if not (lesion & region).any():
                continue
            (parts, z), (free_parts, free_z) = (glow_parts(method, torch.as_tensor(d["image"])) for d in data)
            base = {"run": run, "subject_id": item["subject_id"], "group": item["group"]}
            healthy, edges = region & ~lesion, gradient_magnitude(free)
            for name, values in {"image": image, **parts}.items():
                reference = free if name == "image" else free_parts[name]
                q50, q99 = np.quantile(reference[healthy], [0.5, 0.99])
                rows.append({**base, "part": name, "response": lesion_response(values, reference, lesion, region),
                             "spread": float(q99 - q50), "edges": edge_correlation(reference, edges, healthy)})  # fmt: skip
            for level, (u, free_u) in enumerate(zip(z, free_z)):
                for channel in range(u.shape[0]):
                    rows.append({**base, "part": f"scale {level + 1} latent {channel}",
                                 "response": lesion_response(u[channel], free_u[channel], lesion, region)})  # fmt: skip
    return rows


def _datalist_item(item: Mapping[str, Any]) -> dict:
    return {k: v for k, v in item.items() if k not in ("group", "size_stratum")}


def glow_part_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Medians of :func:`glow_part_rows` per run, part and lesion variant; the latent channels reduced to each scale's
    most responsive channel per variant (``"scale i: best latent"``, with its ``channel``)."""
    df = pd.DataFrame(rows)
    if df.empty:
        return []
    out = []
    for run, by_run in df.groupby("run", sort=False):
        latent = by_run["part"].str.contains(" latent ")
        for part, g in by_run[~latent].groupby("part", sort=False):
            entry = {"run": run, "part": part}
            for group, v in g.groupby("group"):
                entry[group] = {k: float(np.nanmedian(v[k])) for k in ("response", "spread", "edges")}
            out.append(entry)
        channels = by_run[latent].assign(scale=lambda d: d["part"].str.split(" latent ").str[0])
        for scale, g in channels.groupby("scale", sort=False):
            entry = {"run": run, "part": f"{scale}: best latent"}
            for group, v in g.groupby("group"):
                medians = v.groupby("part", sort=False)["response"].median()
                best = medians.abs().idxmax()
                entry[group] = {"response": float(medians[best]), "channel": best.split(" latent ")[1],
                                "channels": int(len(medians))}  # fmt: skip
            out.append(entry)
    return out


def score_lesion_free(demo: Path, data: Path, out: Path, runs: Sequence[str], log=print) -> None:
    """Score the lesion-free twins with the demo's runs (seed 0), maps included (resumable)."""
    from mri_anomaly.data.datasets import PreprocessedCache

    items, cache = scoring_items(data), PreprocessedCache()
    for run in runs:
        score_missing(demo / "runs" / run, items, out / run, cache, save_maps=True,
                      log=lambda n, run=run: log(f"{run}: scoring {n} lesion-free twins"))  # fmt: skip


def scoring_items(data: Path) -> list[dict]:
    """:func:`anomalous_test_items` as datalist items for ``score_datalist`` (without this script's own keys)."""
    return [_datalist_item(it) for it in anomalous_test_items(data)]


def score_missing(
    run_dir: Path, items: list[dict], target: Path, cache: Any, save_maps: bool, log: Any
) -> None:
    """Score ``items`` as the ``test`` section with the run in ``run_dir`` into ``target``, unless ``target`` is
    scored already or the run has no checkpoint; ``log(n)`` before scoring ``n`` items."""
    from mri_anomaly.scoring.runner import score_datalist

    if (target / "scores.csv").is_file() or not (run_dir / "checkpoint.pt").is_file():
        return
    log(len(items))
    score_datalist(
        run_dir, {"test": items}, target, save_maps=save_maps, progress=False, preprocessed_cache=cache
    )


def remake_cohort(demo: Path, data: Path, healthy: int, workers: int, partial_volume: bool) -> None:
    """The demo's cohort (seed, spacing, contrasts and anomalous count from its ``cohort.json``) made again into
    ``data`` with ``healthy`` healthy subjects, no ``general`` section (no run here trains on it) and lesions
    imaged with partial volume or not."""
    from mri_anomaly.data.demo import make_demo_cohort

    cohort = json.loads((demo / "data" / "cohort.json").read_text())
    make_demo_cohort(
        data,
        seed=int(cohort["seed"]),
        healthy=healthy,
        anomalous=len(anomalous_test_items(demo / "data")),
        general=0,
        spacing=float(cohort["spacing_mm"]),
        contrast=tuple(cohort["contrast"].split("+")),
        workers=workers,
        partial_volume_lesions=partial_volume,
    )


def check_same_files(files: Sequence[Path], data: Path) -> None:
    """Each of the demo's ``files`` (``<demo>/data/<folder>/<name>``) has a byte-identical twin in ``data``."""
    for f in files:
        twin = data / f.parent.name / f.name
        if not twin.is_file() or file_digest(f) != file_digest(twin):
            raise RuntimeError(f"{twin} differs from the demo's {f}: not the same cohort")


def anomalous_test_items(data: Path) -> list[dict]:
    """The anomalous test items of a demo cohort with absolute paths and their ``group`` (lesion variant: the
    kind, or ``focal_opposite``) and ``size_stratum`` from ``subjects.csv``."""
    from mri_anomaly.data.datalist import load_datalist

    subjects = pd.read_csv(data / "subjects.csv", dtype={"subject_id": str}).set_index("subject_id")
    items = []
    for item in load_datalist(data / "datalist.json", check_files=False, check_headers=False)["test"]:
        if int(item.get("label", 0)) != 1:
            continue
        row = subjects.loc[item["subject_id"]]
        items.append({**item, "group": row["lesion_variant"], "size_stratum": row["size_stratum"]})
    return items


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


IMAGINGS = {True: "partial volume", False: "full contrast"}


def partial_volume_of(data: Path) -> bool:
    """Whether a demo cohort images its lesions with partial volume (cohorts before 2026-12-02 do not say: no)."""
    return json.loads((data / "cohort.json").read_text()).get("lesion_imaging") == "partial volume"


def make_twin_cohort(demo: Path, out: Path) -> Path:
    """The demo's cohort again with the other lesion imaging (no ``general`` section: no run is trained on it),
    checked to hold the same healthy test scans and lesion masks as the demo's; returns its data folder."""
    from mri_anomaly.data.demo import default_workers

    data = out / "data"
    if not (data / "datalist.json").is_file():
        counts = json.loads((demo / "data" / "cohort.json").read_text())["counts"]
        healthy = (
            counts["training"]
            + counts["validation"]
            + counts["test"]
            - len(anomalous_test_items(demo / "data"))
        )
        remake_cohort(
            demo, data, healthy, default_workers(), partial_volume=not partial_volume_of(demo / "data")
        )
    tests_and_masks = sorted((demo / "data" / "images").glob("demo-test-*")) + sorted(
        (demo / "data" / "masks").glob("*")
    )
    check_same_files(tests_and_masks, data)
    return data


def score_twin(demo: Path, data: Path, out: Path, seeds: Sequence[int], log=print) -> float:
    """Score the twin's anomalous test scans with every run of every seed (resumable); seconds spent."""
    from mri_anomaly.data.datasets import PreprocessedCache

    items, cache = scoring_items(data), PreprocessedCache()
    t = time.time()
    for seed in seeds:
        for run in (*RUNS, *BASELINES) if seed == 0 else RUNS:
            score_missing(seed_folder(demo, seed) / "runs" / run, items, seed_folder(out, seed) / "scores" / run,
                          cache, save_maps=False,
                          log=lambda n, seed=seed, run=run: log(f"seed {seed}, {run}: scoring {n} anomalous scans of the twin cohort"))  # fmt: skip
    return time.time() - t


def twin_tables(demo: Path, out: Path, seeds: Sequence[int], runs: Sequence[str]) -> dict:
    """``load_seed_tables``-shaped tables of the twin's test set: the demo's healthy test rows (the same scans) and
    the twin's anomalous rows (scored into ``out``)."""
    demo_tables = load_seed_tables(demo, seeds, runs)
    data = out / "data"
    strata = pd.read_csv(data / "subjects.csv", dtype={"subject_id": str})[
        ["subject_id", "lesion_kind", "lesion_variant", "size_stratum"]
    ]
    tables: dict[int, dict[str, dict]] = {}
    for seed, by_run in demo_tables.items():
        for run, table in by_run.items():
            path = seed_folder(out, seed) / "scores" / run / "scores.csv"
            if not path.is_file():
                continue
            scored = pd.read_csv(path, dtype={"subject_id": str})
            healthy = table["volume"][table["volume"]["label"] == 0]
            anomalous = (
                scored[["subject_id", *table["score_columns"]]].assign(label=1).merge(strata, on="subject_id")
            )
            volume = pd.concat(
                [healthy, anomalous[healthy.columns.intersection(anomalous.columns)]], ignore_index=True
            )
            tables.setdefault(seed, {})[run] = {**table, "volume": volume, "slice": None}
    return tables


def chosen_only(tables: dict, chosen: Mapping[str, str]) -> dict:
    """The tables with each run's score columns cut to the one chosen on the demo (so that
    ``best_column_over_seeds`` reads that column, not the best on the table at hand)."""
    return {
        seed: {run: {**t, "score_columns": [chosen[run]]} for run, t in by_run.items() if run in chosen}
        for seed, by_run in tables.items()
    }


def demo_chosen_columns(demo: Path) -> dict[str, str]:
    """Each run's volume column with the highest AUROC on the demo's own test set (seed 0)."""
    from mri_anomaly.evaluation.metrics import auroc

    out = {}
    for run, t in load_seed_tables(demo, [0], (*RUNS, *BASELINES)).get(0, {}).items():
        y = t["volume"]["label"].to_numpy(dtype=int)
        values = {c: auroc(y, t["volume"][c].to_numpy(np.float64)) for c in t["score_columns"]}
        out[run] = max(values, key=lambda c: values[c])
    return out


def variant_aurocs(tables: Sequence[Mapping[str, Any]], column: str) -> dict[str, float]:
    """Mean over ``tables`` (one per seed) of the AUROC of each lesion variant's scans against all healthy scans."""
    from mri_anomaly.evaluation.metrics import auroc

    values: dict[str, list[float]] = {}
    for t in tables:
        v = t["volume"]
        y, score = v["label"].to_numpy(dtype=int), v[column].to_numpy(np.float64)
        for group in GROUP_ORDER:
            keep = (y == 0) | (v["lesion_variant"] == group).to_numpy()
            if keep.sum() > (y == 0).sum():
                values.setdefault(group, []).append(float(auroc(y[keep], score[keep])))
    return {g: float(np.mean(v)) for g, v in values.items()}


def comparisons(tables: dict, chosen: Mapping[str, str], n_resamples: int) -> dict:
    """Each learned run's demo-chosen column over seeds against the baselines' chosen columns
    (``best_column_over_seeds``), and every run's AUROC by lesion variant (:func:`variant_aurocs`)."""
    from mri_anomaly.evaluation.metrics import auroc

    tables = chosen_only(tables, chosen)
    learned = {s: {r: t for r, t in by_run.items() if r not in BASELINES} for s, by_run in tables.items()}
    baselines = {r: t for r, t in tables.get(0, {}).items() if r in BASELINES}
    result = best_column_over_seeds(learned, baselines, n_resamples)
    for run, t in baselines.items():
        y = t["volume"]["label"].to_numpy(dtype=int)
        result[run] = {"column": chosen[run], "seeds": [0],
                       "auroc": [float(auroc(y, t["volume"][chosen[run]].to_numpy(np.float64)))]}  # fmt: skip
    for run, entry in result.items():
        by_seed = [baselines[run]] if run in baselines else [learned[s][run] for s in entry["seeds"]]
        entry["by_variant"] = variant_aurocs(by_seed, entry["column"])
    return result


def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _versus(entry: Mapping[str, Any], baseline: str) -> str:
    c = entry.get("vs_baselines", {}).get(baseline)
    if not c:
        return "–"
    ci = c["pooled"]["difference_ci"]
    return f"{c['mean']['difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] ({'beats' if c['verdict'] == 'holds' else 'does not beat'})"


def to_markdown(result: Mapping[str, Any]) -> str:
    meta = result["meta"]
    demo_name, twin_name = result["imaging"]["demo"], result["imaging"]["twin"]
    keys = ("ap", "chance", "above_q99", "contrast_iqr", "inner_ap")
    lines = [
        "# Lesion conspicuity on the model grid: real lesions and the demo's, imaged with partial volume or full contrast",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['load']}; {meta['date']}; {meta['seconds']:.0f} s "
        f"(scoring {result['scoring_seconds']:.0f} s).",
        "",
        "Every scan through the demo runs' preprocessing (anti-aliasing, 4 mm, brain median at 0.5). Per scan: the voxel "
        "AP of the intensity alone for lesion against healthy brain voxels (chance: the lesion fraction), the share of "
        "lesion voxels above the healthy brain's 99th percentile, (lesion median − healthy median) / healthy IQR, and "
        "the AP inside the brain minus 8 mm (where the maps are scored). Demo groups: median over their scans.",
        "",
    ]
    header = [
        "scans",
        "n",
        "lesion voxels",
        "intensity AP",
        "chance",
        "lesion voxels > healthy q99",
        "contrast (IQR)",
        "AP inside −8 mm",
    ]
    rows = [[r["subject_id"], 1, r["lesion_voxels"], *[_f(r[k]) for k in keys]] for r in result["real"]]
    for label, groups in ((f"demo ({demo_name})", result["demo_groups"]), (twin_name, result["twin_groups"])):
        rows += [[f"{label}: {g['group']} {g['size_stratum']}", g["n"], _f(g["lesion_voxels"], 0), *[_f(g[k]) for k in keys]]
                 for g in groups]  # fmt: skip
    lines += [markdown_table(header, rows), ""]
    lines += [
        "## The runs on both test sets",
        "",
        f"Volume AUROC of each run's column chosen on the demo (its best there), on the demo's test set ({demo_name}) "
        f"and on the same scans with the lesions imaged with {twin_name} (the 80 healthy test scans are the same files "
        "in both). Learned runs: mean ± "
        "SD over the seeds scored; against each baseline's chosen column: the mean paired difference and the pooled "
        "95 % CI over seeds, and whether it beats it (every seed ahead and the CI above 0). By lesion variant: each "
        "variant's scans against all healthy scans, mean over seeds.",
        "",
    ]
    header = [
        "run",
        "column",
        "test set",
        "volume AUROC",
        "vs intensity",
        "vs normative",
        "MS",
        "tumour",
        "focal",
        "dark focal",
    ]
    rows = []
    for run, both in result["runs"].items():
        for name, key in ((f"demo ({demo_name})", "demo"), (twin_name, "twin")):
            e = both.get(key)
            if not e:
                continue
            values = e["auroc"]
            auc = (
                f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else _f(values[0])
            )
            bv = e["by_variant"]
            rows.append([run, f"`{e['column']}`", name, auc, _versus(e, "intensity"), _versus(e, "normative"),
                         *[_f(bv.get(g)) for g in GROUP_ORDER]])  # fmt: skip
    lines += [markdown_table(header, rows), ""]
    if result.get("maps"):
        lines += [
            "## The maps on the demo's test lesions",
            "",
            "The same measures for every voxel map the demo's runs (seed 0) wrote for the demo's anomalous test scans, "
            "on the scan's grid, inside the brain minus 8 mm (the maps' scored region), beside the image itself in the "
            "same region: does a map make the lesion stand out more than the image? Median over the scans of each "
            "lesion variant (all sizes): voxel AP / share of lesion voxels above the healthy voxels' 99th percentile.",
            "",
        ]
        header = ["map", *GROUP_LABELS]
        rows = [[m["map"], *[f"{_f(m[g]['ap'])} / {_f(m[g]['above_q99'], 2)}" if g in m else "–" for g in GROUP_ORDER]]
                for m in result["maps"]]  # fmt: skip
        lines += [markdown_table(header, rows), ""]
    if result.get("response"):
        lines += [
            "## How far a lesion moves each map",
            "",
            "The demo's anomalous test subjects made again without the lesion's intensity (the same anatomy, noise, "
            "bias, mask and mass effect; `lesion_free_twins`) and scored by the same runs (seed 0). Per scan, inside the "
            "brain minus 8 mm: the median over the lesion's voxels of (map with the lesion − map without it), divided "
            "by the healthy voxels' 99th percentile minus their median in the map without it: the share of the way to "
            "the healthy top percentile a lesion moves its voxels (1: there). Median over the scans of each variant. "
            "A map that thresholds well on a lesion kind moves it far; a low value is a weak response to the lesion, "
            "a wide healthy range, or both.",
            "",
        ]
        header = ["map", *GROUP_LABELS]
        rows = [
            [m["map"], *[_f(m[g]["response"], 2) if g in m else "–" for g in GROUP_ORDER]]
            for m in result["response"]
        ]
        lines += [markdown_table(header, rows), ""]
    if result.get("glow_parts"):
        lines += [
            "## Where in a Glow's log-density a lesion shows",
            "",
            "The same pairs (each anomalous test scan and its lesion-free twin), through the seed-0 Glow runs' "
            "preprocessing, on the model grid inside the brain minus one voxel: the in-distribution Glow's −log-density "
            "map (`nll`, here in nats per voxel) split into each scale's prior term (−log density of its latents under "
            "the learned prior, spread over the block it comes from) and its steps' term (−log-det of its flow steps: "
            "the coupling log-scales there, plus a share of the actnorm and 1×1 log-dets that is the same at every "
            "location). Per part: the response (as above, median over the variant's scans), the healthy spread "
            "(99th percentile − median of the healthy voxels, nats per voxel; median over MS scans) and the Pearson "
            "correlation of the healthy voxels' values with the image's gradient magnitude (its edges; median over MS "
            "scans). `best latent`: the standardised latent channel of that scale (repeated over its block) whose median "
            "response over the variant's scans is largest in either sign (its number of channels in brackets); under "
            "the prior each channel is N(0, 1) at every location, so its healthy spread is about symmetric.",
            "",
        ]
        header = ["run", "part", *GROUP_LABELS,
                  "healthy spread (MS)", "edge correlation (MS)"]  # fmt: skip
        rows, image_shown = [], False
        for m in result["glow_parts"]:
            if m["part"] == "image":  # the same pairs for every run: show it once
                if image_shown:
                    continue
                image_shown = True
            cells = []
            for g in GROUP_ORDER:
                e = m.get(g)
                if not e:
                    cells.append("–")
                elif "channel" in e:
                    cells.append(f"{_f(e['response'], 2)} (ch {e['channel']} of {e['channels']})")
                else:
                    cells.append(_f(e["response"], 2))
            ms = m.get("ms", {})
            rows.append([m["run"], m["part"], *cells, _f(ms.get("spread"), 2), _f(ms.get("edges"), 2)])
        lines += [markdown_table(header, rows), ""]
    lines += reading_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__, seeds=True, real_flag="--real")
    p.add_argument("--out", type=Path, default=Path("/tmp/mri-anomaly-lesion-conspicuity"))
    p.add_argument("--n-bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    from mri_anomaly.training.config import config_from_yaml

    demo = args.demo.resolve()
    config = config_from_yaml((demo / "runs" / "glow2d-ratio" / "config.yaml").read_text())
    flair = [c for c in real_cases(args.real) if c["subject_id"].startswith(("ms-", "brats-"))]
    real = preprocessed_conspicuity(flair, config["preprocessing"])
    print("real cases done", flush=True)
    data = make_twin_cohort(demo, args.out)
    demo_rows = preprocessed_conspicuity(anomalous_test_items(demo / "data"), config["preprocessing"])
    twin_rows = preprocessed_conspicuity(anomalous_test_items(data), config["preprocessing"])
    keys = ("lesion_voxels", "ap", "chance", "above_q99", "contrast_iqr", "inner_ap")
    seeds = demo_seeds(args)
    scoring = score_twin(demo, data, args.out, seeds)
    chosen = demo_chosen_columns(demo)
    runs = (*RUNS, *BASELINES)
    on_demo = comparisons(load_seed_tables(demo, seeds, runs), chosen, args.n_bootstrap)
    on_twin = comparisons(twin_tables(demo, args.out, seeds, runs), chosen, args.n_bootstrap)
    demo_pv = partial_volume_of(demo / "data")
    maps = map_summary(map_conspicuity(demo, runs))
    free = lesion_free_twins(demo, args.out)
    score_lesion_free(demo, free, args.out / "lesion-free-scores", runs)
    response = map_summary(
        response_rows(demo, free, args.out / "lesion-free-scores", runs), keys=("response",)
    )
    parts_file = args.out / "glow-parts.json"
    if not parts_file.is_file():
        rows = glow_part_rows(demo, free, [r for r in RUNS if r.startswith("glow")])
        parts_file.write_text(json.dumps(rows) + "\n")
    glow = glow_part_summary(json.loads(parts_file.read_text()))
    result = {
        "imaging": {"demo": IMAGINGS[demo_pv], "twin": IMAGINGS[not demo_pv]},
        "maps": maps,
        "response": response,
        "glow_parts": glow,
        "real": real,
        "demo_groups": group_medians(demo_rows, keys),
        "twin_groups": group_medians(twin_rows, keys),
        "runs": {r: {"demo": on_demo.get(r), "twin": on_twin.get(r)} for r in runs},
        "scoring_seconds": scoring,
        "reading": args.reading.read_text().strip() if args.reading else "",
    }
    result["meta"] = {**run_meta("lesion_conspicuity.py", argv, load_start, t0), "seconds": time.time() - t0}
    write_doc(args.docs, "lesion_conspicuity", to_markdown(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
