"""Calibration of a trained run on healthy validation scans: slice norms and thresholds.

At the end of training (:class:`~mri_anomaly.training.Trainer`) the healthy ``validation`` section is scored
in memory (:func:`score_items_in_memory`, the same per-volume scoring as ``mri-anomaly score``), the
per-position slice norms are fitted on the raw slice scores (:mod:`mri_anomaly.scoring.slice_norms`), and one
threshold per volume score column is set at ``score.specificity`` (:mod:`mri_anomaly.evaluation.thresholds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mri_anomaly.data.datalist import first_image
from mri_anomaly.data.datasets import PreprocessedCache
from mri_anomaly.evaluation.thresholds import calibrate_thresholds, refuse_few_scans
from mri_anomaly.scoring.items import PreprocessedItems, iterate_preprocessed
from mri_anomaly.scoring.slice_norms import fit_slice_norms
from mri_anomaly.scoring.volume import finish_volume_scores, raw_volume_scores_of
from mri_anomaly.training import distributed
from mri_anomaly.training.methods import AnomalyMethod

__all__ = ["calibrate_run", "score_items_in_memory"]


def score_items_in_memory(
    method,
    config: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    progress: bool = False,
    preprocessed_cache: PreprocessedCache | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What the method says about this rank's shard of ``items`` (used for calibration at the end of training):
    raw slice scores and 3D volume scores, before slice standardisation (:func:`~mri_anomaly.scoring.volume.finish_volume_scores`).

    Returns:
        ``(rows, errors)``: ``[{"index", "subject_id", "output": RawVolumeScores}]`` and
        ``[{"index", "subject_id", "image", "error"}]`` of the items that could not be read.
    """
    r, w = distributed.rank(), distributed.world_size()
    shard = [(i, it) for i, it in enumerate(items) if i % w == r]
    out, errors = [], []
    iterator = iterate_preprocessed(PreprocessedItems([it for _, it in shard], config, preprocessed_cache), 0)
    if progress and distributed.is_main_process():
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(shard), desc="score validation", unit="vol", dynamic_ncols=True)
    for j, _, output, error in raw_volume_scores_of(method, config, iterator, device, want_maps=False):
        index, item = shard[j]
        if error is not None:
            print(f"warning: validation scan skipped: {error}")
            errors.append(
                {
                    "index": index,
                    "subject_id": item.get("subject_id"),
                    "image": str(first_image(item) or ""),
                    "error": error,
                }
            )
            continue
        out.append({"index": index, "subject_id": item.get("subject_id"), "output": output})
    return out, errors


def calibrate_run(
    method: AnomalyMethod,
    config: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    progress: bool = False,
    preprocessed_cache: PreprocessedCache | None = None,
) -> dict[str, Any] | None:
    """Score the healthy ``validation`` items: fit the per-position slice norms on their raw slice scores,
    then thresholds at ``score.specificity`` on their (standardised) volume scores.

    Every rank scores its shard; all ranks return the same calibration.

    Returns:
        :func:`~mri_anomaly.evaluation.thresholds.calibrate_thresholds`'s dict plus ``skipped`` (the scans that
        could not be read) and ``slice_norms``; None when there is nothing to calibrate on.
    """
    if not items:
        if distributed.is_main_process():
            print(
                "note: the datalist has no 'validation' section: no thresholds stored (score will not flag scans)"
            )
        return None
    was_training = method.training
    method.eval()
    rows, errors = score_items_in_memory(
        method, config, items, device=device, progress=progress, preprocessed_cache=preprocessed_cache
    )
    method.train(was_training)
    rows = sorted(
        (r for shard in distributed.all_gather_objects(rows) for r in shard), key=lambda r: r["index"]
    )
    errors = sorted(
        (e for shard in distributed.all_gather_objects(errors) for e in shard), key=lambda e: e["index"]
    )
    if not rows:
        if distributed.is_main_process():
            print("note: no validation scan could be scored: no thresholds stored")
        return None
    outputs = [r["output"] for r in rows]
    norms = (
        fit_slice_norms(
            [o.slice_scores for o in outputs],
            [o.fraction for o in outputs],
            counted=[o.counted for o in outputs],
        )
        if outputs[0].slice_scores
        else None
    )
    scores = [finish_volume_scores(o, config, norms).scores for o in outputs]
    healthy = {c: [s[c] for s in scores] for c in scores[0]}
    calibration = calibrate_thresholds(healthy, config["score"]["specificity"], section="validation")
    calibration = refuse_few_scans(
        calibration,
        bool(config["score"]["allow_few_calibration_scans"]),
        "score.allow_few_calibration_scans=true",
    )
    if "refused" in calibration and distributed.is_main_process():
        print(f"warning: {calibration['refused']}")
    calibration["skipped"] = [{k: e[k] for k in ("subject_id", "image", "error")} for e in errors]
    if norms is not None:
        calibration["slice_norms"] = norms
    return calibration
