"""The MONAI bundle of a run: the folder writer, the scoring loop and the metadata writer.

:func:`write_bundle_folder` (``mri-anomaly bundle --run RUN --out DIR``) writes the standard layout::

    DIR/configs/metadata.json     MONAI's metadata + ``mri_anomaly``: the run's config, score columns, thresholds
    DIR/configs/inference.yaml    configs/bundle/inference.yaml: the scoring workflow
    DIR/models/model.pt           the weights (a plain state dict; torch.load(weights_only=True))
    DIR/docs/README.md            what the bundle scores and how to run it

The workflow (``configs/bundle/inference.yaml``) is assembled from MONAI components (``monai.data.Dataset``,
``monai.transforms.Invertd``/``SaveImaged`` for the maps) and our classes by full dotted ``_target_`` paths;
the loop that ties them together is :class:`BundleScorer`, which scores each preprocessed item with
:func:`mri_anomaly.scoring.volume.score_volume` (the same function ``mri-anomaly score`` uses), runs the
bundle's postprocessing on the maps, and writes ``scores.csv`` (with ``flag:<column>`` against the
thresholds in ``metadata.json``) and ``slice_scores.csv``.

:func:`write_bundle_metadata` writes a ``metadata.json`` for a trained run: MONAI's required fields plus an
``mri_anomaly`` section with the run's method, score columns, preprocessing and calibrated thresholds.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mri_anomaly.data.datalist import subject_id_of
from mri_anomaly.errors import MissingInputError, OutputExistsError
from mri_anomaly.files import atomic_write, atomic_write_json

__all__ = ["BundleScorer", "write_bundle_folder", "write_bundle_metadata"]


class BundleScorer:
    """Score a dataset of preprocessed items with a trained method and write the tables (and maps).

    Args:
        network: the trained :class:`~mri_anomaly.training.methods.AnomalyMethod` (weights loaded).
        config: the run's validated config.
        dataset: items after the preprocessing ``Compose`` (e.g. ``monai.data.Dataset``).
        output_dir: where ``scores.csv`` and ``slice_scores.csv`` go (created).
        postprocessing: applied to ``{**item, "<map>_map": map}`` per item (e.g. ``Invertd`` + ``SaveImaged``);
            None: no maps.
        thresholds: ``{score column: threshold}``; a scan is flagged when its score is > the threshold.
        slice_norms: the run's per-position slice norms (``metadata.json``'s ``mri_anomaly.slice_norms``).
        device: where the network runs.
        map_suffix: the item key of map ``m`` is ``m + map_suffix``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        config: Mapping[str, Any],
        dataset: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        postprocessing: Callable[[dict], Any] | None = None,
        thresholds: Mapping[str, float] | None = None,
        device: str | torch.device = "cpu",
        map_suffix: str = "_map",
        slice_norms: Mapping[str, Any] | None = None,
    ) -> None:
        self.network = network
        self.config = config
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.postprocessing = postprocessing
        self.thresholds = {k: float(v) for k, v in (thresholds or {}).items()}
        self.device = torch.device(device)
        self.map_suffix = map_suffix
        self.slice_norms = dict(slice_norms) if slice_norms else None

    def run(self) -> Path:
        """Score every item; returns the path of ``scores.csv``."""
        from monai.data import MetaTensor

        from mri_anomaly.scoring.volume import score_volume

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.network.to(self.device).eval()
        rows, slice_rows = [], []
        n = len(self.dataset)
        for i in range(n):
            item = dict(self.dataset[i])
            image = item["image"]
            path = image.meta.get("filename_or_obj", "") if isinstance(image, MetaTensor) else ""
            subject = subject_id_of({"subject_id": item.get("subject_id"), "image": str(path)})
            result = score_volume(
                self.network,
                self.config,
                item,
                self.device,
                want_maps=self.postprocessing is not None,
                slice_norms=self.slice_norms,
            )
            row: dict[str, Any] = {"subject_id": subject, "image": str(path)}
            if isinstance(item.get("label"), (int, float)):
                row["label"] = int(item["label"])
            row.update(result.scores)
            for column, t in self.thresholds.items():
                if column in result.scores:
                    row[f"flag:{column}"] = int(result.scores[column] > t)
            rows.append(row)
            slice_rows += [{"subject_id": subject, **r} for r in result.slices]
            if self.postprocessing is not None and result.maps:
                for name, m in result.maps.items():
                    item[f"{name}{self.map_suffix}"] = MetaTensor(m.float(), meta=copy.deepcopy(image.meta))
                self.postprocessing(item)
            print(f"[bundle] {i + 1}/{n} {subject}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.scores.items()),
                  file=sys.stderr, flush=True)  # fmt: skip
        path = self.output_dir / "scores.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        pd.DataFrame(slice_rows).to_csv(self.output_dir / "slice_scores.csv", index=False)
        return path


def write_bundle_metadata(
    run_dir: str | os.PathLike, path: str | os.PathLike, template: str | os.PathLike | None = None
) -> Path:
    """Write the bundle's ``metadata.json`` for the run in ``run_dir``.

    Starts from ``template`` (default: the ``configs/bundle/metadata.json`` of the checkout) and fills in the
    versions, the input grid, the score/map outputs, and ``mri_anomaly``: method, spatial dims, score
    columns, preprocessing, thresholds (``RUN/thresholds.json`` if present, else the checkpoint's) and their
    rule.

    Raises:
        FileNotFoundError: ``run_dir`` has no checkpoint.
    """
    import monai
    import numpy as np

    from mri_anomaly._version import __version__
    from mri_anomaly.data.preprocessing import resolve_preprocessing_config
    from mri_anomaly.evaluation.thresholds import FLAG_RULE, load_thresholds
    from mri_anomaly.runs import CHECKPOINT_NAME
    from mri_anomaly.training.checkpoint import load_checkpoint
    from mri_anomaly.training.config import config_from_yaml
    from mri_anomaly.training.methods import get_method_class

    run = Path(run_dir)
    ckpt_path = run / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise MissingInputError(f"{run}: no {CHECKPOINT_NAME}; train a run first")
    checkpoint = load_checkpoint(ckpt_path)
    config = config_from_yaml(checkpoint["config"])
    cls = get_method_class(config["method"])
    if template is None:
        from mri_anomaly.training.config import configs_dir

        template = configs_dir() / "bundle" / "metadata.json"
    meta = json.loads(Path(template).read_text())
    from mri_anomaly.runs import run_slice_norms

    slice_norms = run_slice_norms(run, checkpoint)
    stored = load_thresholds(run)
    if stored is not None:
        thresholds, info = (
            stored["thresholds"],
            {k: stored.get(k) for k in ("specificity", "section", "n_healthy")},
        )
    else:
        thresholds = {k: float(v) for k, v in (checkpoint.get("thresholds") or {}).items()}
        info = dict(checkpoint.get("threshold_info") or {})
    pre = resolve_preprocessing_config(config.get("preprocessing"))
    from mri_anomaly.scoring.volume import volume_score_columns_of

    columns = volume_score_columns_of(cls, config)
    meta.update(
        {
            "monai_version": monai.__version__,
            "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": np.__version__,
        }
    )
    meta.setdefault("required_packages_version", {})["mri-anomaly"] = __version__
    shape = pre.get("spatial_size") or ["2**p*n", "2**p*n", "2**p*n"]
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = list(shape)
    if pre.get("contrasts"):  # one channel per contrast, the first the reference grid
        meta["network_data_format"]["inputs"]["image"]["num_channels"] = len(pre["contrasts"])
        meta["network_data_format"]["inputs"]["image"]["channel_def"] = {
            str(
                k
            ): f"MRI {c}, resampled onto the first contrast's grid, RAS, percentile-scaled inside the brain"
            for k, c in enumerate(pre["contrasts"])
        }
    outputs = {c: {"type": "score", "format": "anomaly score (higher = more anomalous)", "num_channels": 1,
                   "spatial_shape": [1], "dtype": "float32", "value_range": ["-inf", "inf"], "is_patch_data": False,
                   "channel_def": {"0": c}} for c in columns}  # fmt: skip
    for m in cls.map_names:
        outputs[f"{m}_map"] = {"type": "image", "format": "anomaly map in the input's space", "num_channels": 1,
                               "spatial_shape": list(shape), "dtype": "float32", "value_range": ["-inf", "inf"],
                               "is_patch_data": False, "channel_def": {"0": m}}  # fmt: skip
    meta["network_data_format"]["outputs"] = outputs
    meta["mri_anomaly"] = {
        "method": config["method"],
        "spatial_dims": config["spatial_dims"],
        "score_columns": columns,
        "map_names": list(cls.map_names),
        "preprocessing": pre,
        "thresholds": thresholds,
        "threshold_rule": FLAG_RULE,
        "config": config,
        "threshold_calibration": info,
        "slice_norms": slice_norms,
        "run": str(run.resolve()),
    }
    return atomic_write_json(path, meta)


_README = """# {name}

A MONAI bundle written by `mri-anomaly bundle` (mri-anomaly {version}) from the run `{run}`.

* method: `{method}` ({dims}D{slicewise}); score columns (higher = more anomalous): {columns}
* voxel maps: {maps}
* thresholds (flag when score > threshold; calibrated on healthy validation scans{calibration}): {thresholds}
* preprocessing: {spacing} mm, {orientation}, model grid {grid}, intensity percentiles {lower}-{upper}

## Score a datalist

```bash
python -m monai.bundle run --bundle_root {bundle} --config_file {bundle}/configs/inference.yaml \\
    --datalist DATALIST.json --section test --output_dir OUT
```

`OUT/scores.csv` (one row per scan: the score columns and `flag:<column>`), `OUT/slice_scores.csv` (one row
per axial slice of the model grid) and `OUT/maps/<image>_<map>_map.nii.gz` (float32, the input's grid and
affine). The numbers are those of `mri-anomaly score --run RUN` (the same scoring function runs).
Needs the `mri-anomaly` package (and `fire` for the command line). Not a medical device.

## Files

* `configs/metadata.json`: MONAI's metadata; `mri_anomaly` holds the run's config, score columns and thresholds.
* `configs/inference.yaml`: the scoring workflow (MONAI `Dataset`, the run's invertible preprocessing,
  `Invertd` + `SaveImaged` for the maps, `mri_anomaly.bundle.BundleScorer`).
* `models/model.pt`: the weights, a plain state dict (`torch.load(..., weights_only=True)`).
"""


def write_bundle_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the standard MONAI bundle folder of the run in ``run_dir`` into ``out_dir`` (layout: module docstring).

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: ``run_dir`` has no checkpoint. FileExistsError: ``out_dir`` already holds a bundle.
    """
    import shutil

    from mri_anomaly._version import __version__
    from mri_anomaly.runs import CHECKPOINT_NAME
    from mri_anomaly.training.checkpoint import load_checkpoint
    from mri_anomaly.training.config import configs_dir

    run, out = Path(run_dir), Path(out_dir)
    if not (run / CHECKPOINT_NAME).is_file():
        raise MissingInputError(
            f"{run}: no {CHECKPOINT_NAME}; train a run first (mri-anomaly train ... --out {run})"
        )
    if (out / "configs" / "metadata.json").exists():
        raise OutputExistsError(
            f"{out} already holds a bundle (configs/metadata.json); choose another --out or delete it"
        )
    meta_path = write_bundle_metadata(run, out / "configs" / "metadata.json")
    shutil.copyfile(configs_dir() / "bundle" / "inference.yaml", out / "configs" / "inference.yaml")
    checkpoint = load_checkpoint(run / CHECKPOINT_NAME, map_location="cpu")
    (out / "models").mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "models" / "model.pt", "wb") as f:
        torch.save({k: v.detach().cpu() for k, v in checkpoint["state_dict"].items()}, f)
    meta = json.loads(meta_path.read_text())
    ours = meta["mri_anomaly"]
    pre = ours["preprocessing"]
    calibration = ours.get("threshold_calibration") or {}
    readme = _README.format(
        name=meta.get("name", "mri-anomaly"),
        version=__version__,
        run=run.resolve(),
        method=ours["method"],
        dims=ours["spatial_dims"],
        slicewise=", slice-wise, aggregated per volume" if ours["spatial_dims"] == 2 else "",
        columns=", ".join(f"`{c}`" for c in ours["score_columns"]),
        maps=", ".join(f"`{m}`" for m in ours["map_names"]) or "none (scores only)",
        calibration=(
            f" at specificity {calibration.get('specificity')}, n = {calibration.get('n_healthy')}"
            if calibration.get("specificity") is not None
            else ""
        ),
        thresholds=", ".join(f"`{k}` = {v:.6g}" for k, v in ours["thresholds"].items())
        or "none (no validation scans)",
        spacing=pre.get("spacing"),
        orientation=pre.get("orientation"),
        grid=pre.get("spatial_size"),
        lower=pre["intensity"]["lower"],
        upper=pre["intensity"]["upper"],
        bundle=out,
    )
    (out / "docs").mkdir(parents=True, exist_ok=True)
    (out / "docs" / "README.md").write_text(readme)
    return out
