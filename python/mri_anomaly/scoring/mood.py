"""The Medical Out-of-Distribution (MOOD) challenge layout, written from a score folder: ``score --format mood``.

MOOD (MICCAI, http://medicalood.dkfz.de) evaluates two tasks on one folder of input volumes, each from its own
output folder (as in the organisers' ``docker_example/scripts/pred_simple.py``):

``OUT/mood/sample/<input file name>.txt``
    the sample-level score of the input ``<input file name>`` (e.g. ``00001.nii.gz`` -> ``00001.nii.gz.txt``):
    one number on one line.
``OUT/mood/pixel/<input file name>``
    the pixel-level map: a NIfTI with exactly the input's shape and affine (float32).

Both come from what ``mri-anomaly score`` wrote into ``OUT``: the sample score is the run's primary score
column of ``scores.csv`` (the first score column, as :class:`mri_anomaly.Detector` uses) and the pixel map is
the method's first voxel map from ``OUT/maps`` (``nll`` for Glow, ``llr`` for the likelihood ratio,
``residual`` for the latent-norm autoencoder). Methods without voxel maps (Deep SAD/SVDD) give the slice
score painted over each axial slice of the model grid, taken back to the input grid (2D runs), or the volume
score everywhere (3D runs).

**Values.** MOOD's evaluator clips every prediction to [0, 1] before computing average precision
(``scripts/evalresults.py`` of MIC-DKFZ/mood), so raw scores such as bits/dim (about 5) would all become 1.
``values="unit"`` (the default) therefore writes ``u(s - t)`` with the strictly increasing map
``u(d) = 0.5 + 0.5 d / (1 + |d|)`` into (0, 1): rankings (and so AP) are unchanged, 0.5 is the run's
threshold ``t`` for sample scores (``t = 0`` for maps and runs without thresholds), and the raw value comes
back as ``t + (2u - 1) / (1 - |2u - 1|)`` (:func:`from_unit`). ``values="raw"`` writes the scores unchanged.
``OUT/mood/mood_meta.json`` records the column, the map, the values mode and ``t``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mri_anomaly.errors import MissingInputError, UserInputError

__all__ = ["MOOD_DIR", "MOOD_VALUES", "to_unit", "from_unit", "write_mood_outputs"]

MOOD_DIR = "mood"
MOOD_VALUES = ("unit", "raw")


def to_unit(values: np.ndarray | float, center: float = 0.0) -> np.ndarray:
    """``0.5 + 0.5 d / (1 + |d|)`` with ``d = values - center``: strictly increasing into (0, 1), float64."""
    d = np.asarray(values, dtype=np.float64) - center
    return 0.5 + 0.5 * d / (1.0 + np.abs(d))


def from_unit(values: np.ndarray | float, center: float = 0.0) -> np.ndarray:
    """The inverse of :func:`to_unit`."""
    e = 2.0 * np.asarray(values, dtype=np.float64) - 1.0
    return center + e / (1.0 - np.abs(e))


def _read_meta(out: Path) -> dict[str, Any]:
    from mri_anomaly.scoring.tables import META_FILE

    path = out / META_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; {out} is not a folder written by `mri-anomaly score`")
    return json.loads(path.read_text())


def _painted_slices(
    slice_scores: np.ndarray, item: Mapping[str, Any], config: Mapping[str, Any]
) -> np.ndarray:
    """(X, Y, Z) on the input grid: each axial slice of the model grid filled with its score, taken back."""
    import torch

    from mri_anomaly.data import VolumeDataset, invert_to_input_space

    dataset = VolumeDataset(
        [dict(item)], preprocessing_config=config.get("preprocessing") or {}, cache="none"
    )
    data = dataset[0]
    grid = data["image"].shape[1:]
    if len(slice_scores) != grid[-1]:
        raise ValueError(
            f"{item['image']}: {len(slice_scores)} slice scores for a model grid of {grid[-1]} slices"
        )
    painted = (
        torch.tensor(np.asarray(slice_scores, dtype=np.float32))
        .reshape(1, 1, 1, -1)
        .expand(1, *grid)
        .contiguous()
    )
    return invert_to_input_space(painted, data, dataset.transform).detach().cpu().numpy()[0]


def write_mood_outputs(
    out_dir: str | os.PathLike, values: str = "unit", score_column: str | None = None
) -> Path:
    """Write ``OUT/mood/{sample,pixel}/`` from the tables and maps ``mri-anomaly score`` wrote in ``out_dir``.

    Args:
        out_dir: a score folder (``scores.csv``, ``score_meta.json``, ``maps/`` for methods with maps).
        values: ``"unit"`` (mapped into (0, 1), see the module docstring) or ``"raw"``.
        score_column: the sample-level score (default: the first score column).

    Returns:
        the ``OUT/mood`` folder.

    Raises:
        ValueError: unknown ``values``/column, two inputs with the same file name, or a missing map.
        FileNotFoundError: ``out_dir`` is not a score folder.
    """
    import pandas as pd

    if values not in MOOD_VALUES:
        raise UserInputError(f"values must be one of {MOOD_VALUES}, got {values!r}")
    out = Path(out_dir)
    meta = _read_meta(out)
    table = pd.read_csv(out / "scores.csv", dtype={"subject_id": str, "image": str})
    columns = list(meta["score_columns"])
    column = score_column or columns[0]
    if column not in columns:
        raise UserInputError(f"{column!r} is not a score column of {out} (columns: {', '.join(columns)})")
    names = [Path(p).name for p in table["image"]]
    seen: dict[str, str] = {}
    for name, image in zip(names, table["image"]):
        if name in seen and seen[name] != image:
            raise UserInputError(
                f"the MOOD layout names outputs by input file name, and {seen[name]} and {image} share "
                f"the name {name!r}: score them into separate folders"
            )
        seen[name] = image
    threshold = float(meta.get("thresholds", {}).get(column, 0.0)) if values == "unit" else 0.0
    map_names = list(meta.get("map_names") or [])
    map_name = map_names[0] if map_names else None
    run_config = None
    if map_name is None and meta.get("spatial_dims") == 2:
        from mri_anomaly.training.checkpoint import load_checkpoint
        from mri_anomaly.training.config import config_from_yaml

        run_config = config_from_yaml(
            load_checkpoint(Path(meta["run"]) / "checkpoint.pt", map_location="cpu")["config"]
        )
        slices = pd.read_csv(out / "slice_scores.csv", dtype={"subject_id": str})
        slice_column = next(s for s in meta["slice_score_columns"] if column.startswith(f"{s}_"))

    mood = out / MOOD_DIR
    (mood / "sample").mkdir(parents=True, exist_ok=True)
    (mood / "pixel").mkdir(parents=True, exist_ok=True)
    for name, (_, row) in zip(names, table.iterrows()):
        score = float(row[column])
        sample = float(to_unit(score, threshold)) if values == "unit" else score
        (mood / "sample" / f"{name}.txt").write_text(f"{sample!r}\n")

        source = nib.load(row["image"])
        if map_name is not None:
            rel = row.get(f"map:{map_name}")
            if not isinstance(rel, str) or not (out / rel).is_file():
                raise UserInputError(
                    f"{row['image']}: no {map_name!r} map in {out / 'maps'} (score without --no-maps)"
                )
            voxels = np.asarray(nib.load(out / rel).dataobj, dtype=np.float64)
        elif run_config is not None:
            own = slices[(slices["subject_id"] == row["subject_id"]) & (slices["section"] == row["section"])]
            voxels = _painted_slices(
                own.sort_values("slice")[slice_column].to_numpy(), {"image": row["image"]}, run_config
            )
        else:  # a 3D method without maps: its volume score everywhere
            voxels = np.full(source.shape, score, dtype=np.float64)
        if tuple(voxels.shape) != tuple(source.shape):
            raise ValueError(
                f"{row['image']}: map shape {voxels.shape} differs from the input's {source.shape}"
            )
        pixel = to_unit(voxels) if values == "unit" else voxels
        image = nib.Nifti1Image(pixel.astype(np.float32), source.affine)
        image.set_qform(source.affine, code=1)
        image.set_sform(source.affine, code=1)
        nib.save(image, str(mood / "pixel" / name))
    info = {"sample_score": column, "pixel_map": map_name or ("slice scores painted on their slices" if run_config
            else "volume score everywhere"), "values": values, "sample_center": threshold,
            "unit_map": "u = 0.5 + 0.5 d / (1 + |d|), d = value - center (center 0 for pixel maps)",
            "inputs": len(table)}  # fmt: skip
    (mood / "mood_meta.json").write_text(json.dumps(info, indent=2))
    return mood
