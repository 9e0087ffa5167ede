"""Which voxels a slice profile reads on the real FLAIR cases: lesion voxels, or others?

A map's slice profile (``<map>_slice_<statistic>``, :class:`~mri_anomaly.training.methods.base.AnomalyMethod`) is
a statistic of the map's highest voxels in the slice's scored part (the brain minus the ``score.map_erosion_mm``
rim; the slice's brain where the rim leaves nothing). A slice AUROC inside a scan says how well those values rank
the scan's lesion slices; it does not say that the voxels read are the lesion's. This script scores each real
FLAIR case of ``../shared/data`` with the demo's runs (and their retrained seeds), takes every map's highest
voxels per slice as ``top<V>mm3`` reads them (the package's profile; ``q99`` of a slice of 200–450 scored voxels
lies at about its 3rd to 5th highest), and reports per case and map:

* the counted lesion slices, those with a lesion voxel in the scored part (``seen``), and of the latter the share
  whose highest voxels include a lesion voxel and the share of all their highest voxels that are lesion voxels;
* the slice AUROC inside the scan of the profile as the package writes it (standardised per slice position), and
  of the scored part's size alone (how many voxels the profile chooses from: a control).

Usage::

    python benchmarks/profile_voxels.py --demo demo-out [--seeds 1 2] [--data ../shared/data]

Writes ``docs/benchmarks/profile_voxels.md`` and ``.json``; trains nothing, writes no maps.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

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
from detection import seed_folder  # noqa: E402
from lesion_conspicuity import BASELINES, RUNS  # noqa: E402
from real_data import FLAIR_CASES, real_cases  # noqa: E402


def top_voxel_indices(volume_map: np.ndarray, read: np.ndarray, n_top: int) -> list[np.ndarray]:
    """Per axial slice, the flat (H * W) indices of the ``n_top`` highest voxels of ``volume_map`` (H, W, D) among
    those ``read`` ((H, W, D) bool), highest first; ties at the cut broken by position, as any top-k is."""
    out = []
    for k in range(volume_map.shape[-1]):
        where = np.flatnonzero(read[..., k])
        values = volume_map[..., k].ravel()[where]
        out.append(where[np.argsort(-values, kind="stable")[: min(n_top, where.size)]])
    return out


def slice_top_voxels(
    volume_map: np.ndarray, read: np.ndarray, lesion: np.ndarray, n_top: int
) -> list[dict[str, int]]:
    """Per axial slice, how many of the ``n_top`` highest voxels of ``volume_map`` (H, W, D) among the voxels the
    profile reads (``read``, (H, W, D) bool: :func:`read_voxels`) are ``lesion`` voxels: ``{"n_read", "n_top",
    "top_on_lesion", "lesion_read"}`` (``lesion_read``: lesion voxels among those read)."""
    out = []
    for k, top in enumerate(top_voxel_indices(volume_map, read, n_top)):
        out.append(
            {
                "n_read": int(read[..., k].sum()),
                "n_top": int(top.size),
                "top_on_lesion": int(lesion[..., k].ravel()[top].sum()),
                "lesion_read": int((lesion[..., k] & read[..., k]).sum()),
            }
        )
    return out


def read_voxels(image: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    """(H, W, D) bool: the voxels a slice profile reads, per slice the ``region`` (1, H, W, D) or, in a slice
    without region voxels, the brain (:func:`mri_anomaly.scoring.brain.slice_brain_statistic`)."""
    from mri_anomaly.scoring.brain import brain_mask

    brain = brain_mask(torch.as_tensor(image)[None])[0, 0].numpy()  # (H, W, D)
    inner = torch.as_tensor(region)[0].bool().numpy()
    has_inner = inner.reshape(-1, inner.shape[-1]).any(axis=0)
    return np.where(has_inner[None, None, :], inner, brain)


def summarise(
    hits: Sequence[Mapping[str, int]], labels: np.ndarray, counted: np.ndarray, profile: np.ndarray
) -> dict[str, Any]:
    """The per-map row: counts of lesion slices, the shares of their highest voxels on the lesion, and the slice
    AUROCs inside the scan of the profile and of the read part's size (counted slices, lesion vs lesion-free)."""
    lesion_slices = [i for i in range(len(hits)) if counted[i] and labels[i] == 1]
    seen = [i for i in lesion_slices if hits[i]["lesion_read"] > 0]
    top_total = sum(hits[i]["n_top"] for i in seen)
    y = labels[counted]
    both = len(set(y.tolist())) == 2
    sizes = np.array([h["n_read"] for h in hits], float)
    return {
        "lesion_slices": len(lesion_slices),
        "lesion_free_slices": int((y == 0).sum()),
        "seen": len(seen),
        "slices_with_top_on_lesion": sum(hits[i]["top_on_lesion"] > 0 for i in seen),
        "top_on_lesion": sum(hits[i]["top_on_lesion"] for i in seen),
        "top_total": top_total,
        "auroc_profile": float(roc_auc_score(y, profile[counted])) if both else None,
        "auroc_size": float(roc_auc_score(y, sizes[counted])) if both else None,
    }


def score_case(run_dir: Path, case: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{map: summarise(...)}`` of one real case scored by one run (its preprocessing, its slice norms)."""
    from mri_anomaly.data import VolumeDataset
    from mri_anomaly.runs import load_run, run_slice_norms
    from mri_anomaly.scoring.brain import top_statistic_voxels
    from mri_anomaly.scoring.maps import erosion_voxels, map_region, model_spacing
    from mri_anomaly.scoring.volume import score_volume

    method, config, checkpoint = load_run(run_dir)
    item = {k: case[k] for k in ("subject_id", "image", "mask", "brain_mask", "label") if k in case}
    volume = VolumeDataset([item], preprocessing_config=config["preprocessing"], cache="none")[0]
    image = torch.as_tensor(volume["image"])
    result = score_volume(
        method, config, volume, want_maps=True, slice_norms=run_slice_norms(run_dir, checkpoint)
    )
    region = map_region(image, erosion_voxels(config))
    read = read_voxels(image, region)
    lesion = torch.as_tensor(volume["mask"])[0].numpy() > 0.5
    statistic = type(method).slice_statistic
    n_top = top_statistic_voxels(statistic, float(np.prod(model_spacing(config))))
    labels = np.array([s.get("slice_label", 0) for s in result.slices], float)
    counted = np.array([bool(s["counted"]) for s in result.slices])
    out = {}
    for name, m in result.maps.items():
        profile = np.array([s[f"{name}_slice_{statistic}"] for s in result.slices], float)
        hits = slice_top_voxels(m[0].double().numpy(), read, lesion, n_top)
        out[name] = {
            "column": f"{name}_slice_{statistic}",
            "n_top": n_top,
            **summarise(hits, labels, counted, profile),
        }
    return out


def to_markdown(result: Mapping[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Which voxels the slice profiles read on the real FLAIR cases",
        "",
        *meta_lines(meta),
        f"Demo: `{result['demo']}`; seeds {', '.join(map(str, result['seeds']))} (0: the demo's runs).",
        "",
        "Per case and map: lesion slices counted (with a lesion voxel in the scored part), at the demo's seed; of"
        " those seen, how many have a lesion voxel among the map's highest voxels of the slice (the voxels its"
        " `top200mm3` profile averages: 3 at 4 mm), and the share of all those highest voxels that are lesion"
        " voxels, both summed over the seeds (slices × seeds; the baselines have no seed); then the slice AUROC inside the scan of the profile (standardised, as `score` writes it; the demo's"
        " seed and, in brackets, the mean over seeds) and of the scored part's size alone (a control: lesion slices"
        " tend to be the larger, central ones).",
        "",
    ]
    header = ["case", "run / map", "lesion slices (seen)", "seen with a top voxel on the lesion", "top voxels on the lesion", "slice AUROC of the profile", "AUROC of the scored part's size"]  # fmt: skip
    rows = []
    for case in FLAIR_CASES:
        for key, by_seed in result["cases"].get(case, {}).items():
            seeds = sorted(by_seed, key=int)
            first = by_seed[seeds[0]]
            on = sum(by_seed[s]["slices_with_top_on_lesion"] for s in seeds)
            seen = sum(by_seed[s]["seen"] for s in seeds)
            top_on = sum(by_seed[s]["top_on_lesion"] for s in seeds)
            top_total = sum(by_seed[s]["top_total"] for s in seeds)
            aurocs = [by_seed[s]["auroc_profile"] for s in seeds if by_seed[s]["auroc_profile"] is not None]
            mean = f" ({np.mean(aurocs):.3f})" if len(aurocs) > 1 else ""
            rows.append(
                [
                    case,
                    f"{key} `{first['column']}`",
                    f"{first['lesion_slices']} ({first['seen']})",
                    f"{on} of {seen}" if seen else "–",
                    f"{top_on} of {top_total} ({top_on / top_total:.0%})" if top_total else "–",
                    f"{first['auroc_profile']:.3f}{mean}" if first["auroc_profile"] is not None else "–",
                    f"{first['auroc_size']:.3f}" if first["auroc_size"] is not None else "–",
                ]
            )
    lines += [markdown_table(header, rows), ""]
    lines += reading_lines(result)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = demo_benchmark_parser(__doc__, seeds=True, real_flag="--data")
    args = p.parse_args(argv)
    load_start, t0 = os.getloadavg()[0], time.time()
    torch.set_num_threads(1)
    demo = args.demo.resolve()
    seeds = demo_seeds(args)
    cases = [c for c in real_cases(args.data) if c["subject_id"] in FLAIR_CASES]
    if {c["subject_id"] for c in cases} != set(FLAIR_CASES):
        raise SystemExit(f"{args.data}: the real FLAIR cases {FLAIR_CASES} are not all there")
    result: dict[str, Any] = {"demo": str(demo), "seeds": seeds, "cases": {}}
    for seed in seeds:
        for run in (*RUNS, *BASELINES):
            run_dir = seed_folder(demo, seed) / "runs" / run
            if not (run_dir / "checkpoint.pt").is_file() or (seed and run in BASELINES):
                continue
            for case in cases:
                for name, row in score_case(run_dir, case).items():
                    result["cases"].setdefault(case["subject_id"], {}).setdefault(f"{run} / {name}", {})[
                        str(seed)
                    ] = row
            print(f"[profile-voxels] seed {seed} {run}: {time.time() - t0:.0f} s", file=sys.stderr)
    result["reading"] = args.reading.read_text().strip() if args.reading else ""
    result["meta"] = run_meta("profile_voxels.py", argv, load_start, t0)
    write_doc(args.docs, "profile_voxels", to_markdown(result), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
