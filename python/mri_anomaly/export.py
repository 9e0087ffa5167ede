"""``mri-anomaly export``: a trained run as one ``torch.export`` program that keeps its thresholds.

The file (``model.pt2``, :func:`torch.export.save`) holds

* the **program**: the method's scoring on the model grid, ``image (N, C, *grid) in [0, 1] -> (scores {name: (N,)},
  maps {name: (N, 1, *grid)})`` — the on-grid part of the preprocessing (quantisation to 256 levels and
  dequantisation for flows), the network and the method's score arithmetic, with the fused flow-step ops as
  ``torch.ops.mri_anomaly.*`` nodes. 2D runs take a dynamic number of slices N (a 2.5D run, ``slices.context`` r,
  each slice with its r neighbours on each side as channels: C·(2r+1), ``model_input.slice_context``, as
  :func:`mri_anomaly.data.slice_stacks` builds them); 3D runs a batch of N >= 2 volumes;
* **metadata** (``extra_files["mri_anomaly.json"]``): the run's resolved config (preprocessing parameters,
  slice rule, top-k), the score columns and the primary one, the map names, the calibrated **thresholds** and
  how they were calibrated, the run fingerprint and the versions that exported it.

:func:`load_exported` returns an :class:`ExportedScorer` with the :class:`~mri_anomaly.Detector` scoring API
(``decision_function``, ``predict``, ``score_table``) that works from NIfTI paths without a run folder or
the training code: each file is preprocessed with the run's config by the package's preprocessing
(:class:`~mri_anomaly.data.VolumeDataset`, the chain ``mri-anomaly score`` uses) and scored by
:func:`mri_anomaly.scoring.volume.score_volume` with the program in place of the method, so slice
aggregation, slice rules and non-finite handling are exactly ``score``'s. A scan is flagged when its score is
above its column's threshold, as in ``scores.csv``.

**ONNX** (``--out model.onnx``): the same program with the fused flow-step ops replaced by their pure-PyTorch
reference (:mod:`mri_anomaly.ops.reference`, the same maths in ``aten`` ops) through
``ExportedProgram.run_decompositions``, translated by ``torch.onnx.export`` (needs ``onnx`` and ``onnxscript``).
Inputs ``image``; outputs ``score:<name>`` and ``map:<name>``; the same metadata JSON in the model's
``metadata_props["mri_anomaly"]``. :func:`load_exported` runs it with ``onnxruntime`` on the CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mri_anomaly.errors import MissingInputError, UserInputError
from mri_anomaly.files import atomic_write_with, jsonable
from mri_anomaly.scoring.slice_norms import check_map_profile
from mri_anomaly.training.config import slice_context

__all__ = [
    "METADATA_FILE",
    "FORMAT",
    "export_run",
    "load_exported",
    "with_reference_ops",
    "ExportedScorer",
    "OnnxProgram",
]

METADATA_FILE = "mri_anomaly.json"
FORMAT = "mri-anomaly exported scorer v1"


class _ScoreProgram(nn.Module):
    """The method's ``score`` as a module with tensor inputs and outputs (what ``torch.export`` traces)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out = self.method.score({"image": image})
        return dict(out.scores), dict(out.maps)


def export_run(run_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Export the run in ``run_dir`` to ``out_path`` (``.pt2``) with its thresholds and preprocessing.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        ValueError: the run's preprocessing has no fixed grid (``preprocessing.spatial_size: null``), or the
            exported program disagrees with the model on the example input.
    """
    from mri_anomaly.data.preprocessing import resolve_preprocessing_config
    from mri_anomaly.evaluation.thresholds import load_thresholds
    from mri_anomaly.runs import load_run, run_fingerprint, run_slice_norms
    from mri_anomaly.training.checkpoint import versions
    from mri_anomaly.training.config import config_to_yaml

    run = Path(run_dir)
    method, config, checkpoint = load_run(run, "cpu")
    pre = resolve_preprocessing_config(config.get("preprocessing"))
    if pre["spatial_size"] is None:
        raise UserInputError(
            f"{run}: preprocessing.spatial_size is null (the grid varies per scan); an exported program "
            "needs a fixed model grid: train with preprocessing.spatial_size set"
        )
    grid = [int(s) for s in pre["spatial_size"]]
    context = slice_context(config)
    channels = int(config["in_channels"]) * (2 * context + 1)  # 2.5D: each slice with its neighbours
    generator = torch.Generator().manual_seed(0)
    if config["spatial_dims"] == 2:
        example = torch.rand(3, channels, *grid[:2], generator=generator)
        dynamic: Any = ({0: torch.export.Dim("slices", min=1, max=65536)},)
    else:
        # a batch of volumes: the scorer never runs a 3D batch of one (see scoring.volume.raw_volume_scores_batch)
        example = torch.rand(2, channels, *grid, generator=generator)
        dynamic = ({0: torch.export.Dim("volumes", min=2, max=1024)},)
    program = _ScoreProgram(method).eval()
    with torch.no_grad():
        eager = program(example)  # runs the eager checks (initialised, finite) the traced program skips
        exported = torch.export.export(program, (example,), dynamic_shapes=dynamic)
        traced = exported.module()(example)
    for kind, a, b in (("score", eager[0], traced[0]), ("map", eager[1], traced[1])):
        for name in a:
            if not torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6):
                raise ValueError(
                    f"{run}: the exported {kind} {name!r} differs from the model's on the example input"
                )
    stored = load_thresholds(run)
    if stored is not None:
        thresholds = dict(stored["thresholds"])
        calibration = {k: v for k, v in stored.items() if k not in ("thresholds", "slice_norms")}
    else:
        thresholds = {k: float(v) for k, v in (checkpoint.get("thresholds") or {}).items()}
        calibration = {
            k: v for k, v in (checkpoint.get("threshold_info") or {}).items() if k != "slice_norms"
        }
    # the per-position slice norms fitted on the healthy validation scans (score_volume standardises with them)
    slice_norms = run_slice_norms(run, checkpoint)
    cls = type(method)
    from mri_anomaly.scoring.volume import volume_score_columns_of

    columns = volume_score_columns_of(cls, config)
    metadata = {
        "format": FORMAT,
        "method": config["method"],
        "spatial_dims": config["spatial_dims"],
        "config": config_to_yaml(config),
        "preprocessing": pre,
        "model_input": {
            "shape": ["N", channels, *grid[:2]] if config["spatial_dims"] == 2 else [1, channels, *grid],
            "range": [0.0, 1.0],
            "axial_axis": "last spatial axis of the preprocessed volume",
            "slice_context": context,
        },
        "score_names": list(cls.score_names),
        "slice_statistic": getattr(cls, "slice_statistic", "mean"),
        "slice_norms": slice_norms,
        "score_columns": columns,
        "primary_score": columns[0],
        "map_names": list(cls.map_names),
        "thresholds": dict(thresholds),
        "threshold_calibration": calibration,
        "flag_rule": "flag when score > threshold",
        "run": str(run.resolve()),
        "run_fingerprint": run_fingerprint(checkpoint),
        "versions": versions(),
    }
    out = Path(out_path)
    text = json.dumps(jsonable(metadata), indent=2, default=str)
    if out.suffix.lower() == ".onnx":
        names = [f"score:{n}" for n in eager[0]] + [f"map:{n}" for n in eager[1]]
        return atomic_write_with(out, lambda tmp: _save_onnx(exported, example, names, text, tmp))
    return atomic_write_with(
        out, lambda tmp: torch.export.save(exported, str(tmp), extra_files={METADATA_FILE: text})
    )


def with_reference_ops(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every fused flow-step op replaced by its pure-PyTorch reference (plain ``aten`` ops).

    Raises:
        ValueError: a custom op without a reference is left in the program.
    """
    from mri_anomaly.ops import reference

    table = torch.export.default_decompositions()
    custom = getattr(torch.ops, "mri_anomaly", None)
    if custom is not None and hasattr(custom, "flow_step"):  # absent without the compiled extension
        table[torch.ops.mri_anomaly.flow_step.default] = reference.flow_step
    decomposed = program.run_decompositions(table)
    left = sorted({str(n.target) for n in decomposed.graph.nodes if str(n.target).startswith("mri_anomaly.")})
    if left:
        raise ValueError(
            f"custom ops without a pure-PyTorch reference remain in the program: {', '.join(left)}"
        )
    return decomposed


def _save_onnx(
    exported: torch.export.ExportedProgram,
    example: torch.Tensor,
    output_names: list[str],
    metadata: str,
    path: Path,
) -> None:
    """The program as ONNX: custom flow-step ops decomposed into the reference maths, then translated."""
    try:
        import onnx
    except ImportError as err:
        raise UserInputError(
            "ONNX export needs the onnx and onnxscript packages (pip install onnx onnxscript)"
        ) from err
    decomposed = with_reference_ops(exported)
    program = torch.onnx.export(
        decomposed, (example,), input_names=["image"], output_names=output_names, dynamo=True, verbose=False
    )
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = "mri_anomaly", metadata
    onnx.save(model, str(path))


@dataclass
class _ProgramScores:
    """What :func:`~mri_anomaly.scoring.volume.score_volume` reads from ``method.score``."""

    scores: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


class _ProgramMethod:
    """The exported program behind the ``method.score(batch)`` interface ``score_volume`` calls (a subclass per
    program carries the method's class attributes: ``name``, ``score_names``, ``map_names``, ``slice_statistic``)."""

    def __init__(self, module: Any, device: torch.device) -> None:
        self.module = module
        self.device = device

    def score(self, batch: Mapping[str, Any]) -> _ProgramScores:
        image = batch["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        scores, maps = self.module(image.to(self.device, torch.float32).contiguous())
        return _ProgramScores(dict(scores), dict(maps))


class ExportedScorer:
    """Scores NIfTI files with an exported program, its preprocessing config and its thresholds.

    Args:
        program: the loaded :class:`torch.export.ExportedProgram`, or an :class:`OnnxProgram` (ONNX Runtime).
        metadata: its ``mri_anomaly.json``.
        device: ``"cpu"`` or ``"cuda"`` (the program is moved there).
        score: the score column of ``decision_function``/``predict`` (default: the primary score).
        reference_ops: run the fused flow steps as their pure-PyTorch reference (default: only on a device the
            compiled ops have no kernel for, e.g. CUDA with a CPU-only build).
    """

    def __init__(
        self,
        program: Any,
        metadata: Mapping[str, Any],
        device: str = "cpu",
        score: str | None = None,
        reference_ops: bool | None = None,
    ) -> None:
        from mri_anomaly.ops import extension_available
        from mri_anomaly.training.config import config_from_yaml

        self.metadata = dict(metadata)
        self.config_ = config_from_yaml(self.metadata["config"])
        self.device = torch.device(device)
        if isinstance(program, torch.export.ExportedProgram):
            if (
                reference_ops is None
            ):  # the compiled ops have no kernel for this device: their reference maths
                reference_ops = not extension_available(self.device.type)
            if reference_ops:
                program = with_reference_ops(program)
            if self.device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, self.device)
            module = program.module()
        else:
            module = program
        self.program = program
        method_class = type(
            "ExportedMethod",
            (_ProgramMethod,),
            {
                "name": self.metadata["method"],
                "score_names": tuple(self.metadata["score_names"]),
                "map_names": tuple(self.metadata["map_names"]),
                "slice_statistic": self.metadata.get("slice_statistic", "mean"),
            },
        )
        self._method = method_class(module, self.device)
        norms = self.metadata.get("slice_norms")
        from mri_anomaly.scoring.volume import slice_score_columns_of

        check_map_profile(norms, "the exported program", slice_score_columns_of(method_class, self.metadata))
        self._score_volume_options = {"slice_norms": norms} if norms else {}
        self.score_columns_ = list(self.metadata["score_columns"])
        if score is not None and score not in self.score_columns_:
            raise UserInputError(
                f"score {score!r} is not one of the program's columns ({', '.join(self.score_columns_)})"
            )
        self.score_name_ = score or str(self.metadata["primary_score"])
        self.thresholds_ = {k: float(v) for k, v in self.metadata["thresholds"].items()}

    @property
    def threshold_(self) -> float | None:
        """The threshold of :attr:`score_name_` (flag when above), None when the run had no validation scans."""
        return self.thresholds_.get(self.score_name_)

    def __repr__(self) -> str:
        return f"ExportedScorer({self.metadata['method']!r}, spatial_dims={self.metadata['spatial_dims']}, score={self.score_name_!r})"

    def score_table(self, images: Any, section: str = "test"):
        """One row per image: ``subject_id, image``, every score column and ``flag:<column>`` (as ``scores.csv``).

        Raises:
            ValueError: some files could not be read or preprocessed (each file and its problem listed).
        """
        import pandas as pd

        from mri_anomaly.data import VolumeDataset, unwrap_input_error
        from mri_anomaly.data.datalist import first_image, items_from_images
        from mri_anomaly.scoring.volume import score_volume

        items = items_from_images(images, section, "images")
        dataset = VolumeDataset(
            items,
            preprocessing_config=self.config_.get("preprocessing") or {},
            cache="none",
            on_error="return",
        )
        rows, errors = [], []
        for i, item in enumerate(items):
            try:
                data = dataset[i]
            except Exception as err:  # noqa: BLE001 - reported with the file below
                found = unwrap_input_error(err)
                data = {
                    "error": str(found)
                    if found is not None
                    else f"{item.get('image')}: {type(err).__name__}: {err}"
                }
            if "error" in data:
                errors.append(str(data["error"]).splitlines()[0])
                continue
            result = score_volume(
                self._method,
                self.config_,
                data,
                device=self.device,
                want_maps=False,
                **self._score_volume_options,
            )
            row: dict[str, Any] = {"subject_id": data.get("subject_id", ""), "image": first_image(item)}
            row.update({c: result.scores[c] for c in self.score_columns_})
            row.update(
                {
                    f"flag:{c}": int(result.scores[c] > t)
                    for c, t in self.thresholds_.items()
                    if c in result.scores
                }
            )
            rows.append(row)
        if errors:
            raise UserInputError(
                f"{len(errors)} of {len(items)} scan(s) could not be scored:\n  " + "\n  ".join(errors)
            )
        return pd.DataFrame(rows)

    def decision_function(self, images: Any, section: str = "test") -> np.ndarray:
        """(N,) float64 scores of :attr:`score_name_`, higher = more anomalous."""
        return self.score_table(images, section)[self.score_name_].to_numpy(dtype=np.float64)

    def predict(self, images: Any, section: str = "test") -> np.ndarray:
        """(N,) int 0/1: score above :attr:`threshold_`.

        Raises:
            ValueError: the program carries no threshold for :attr:`score_name_`.
        """
        if self.threshold_ is None:
            raise UserInputError(
                f"the exported run has no threshold for {self.score_name_!r} (it was trained without "
                "validation scans)"
            )
        return self.score_table(images, section)[f"flag:{self.score_name_}"].to_numpy(dtype=np.int64)


class OnnxProgram:
    """An exported ONNX model run by ONNX Runtime (CPU), called like the exported program's module.

    ``program(image (N, C, *grid))`` -> ``(scores {name: (N,)}, maps {name: (N, 1, *grid)})`` as tensors.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        values = self.session.run(None, {self.input_name: image.detach().cpu().float().numpy()})
        scores, maps = {}, {}
        for name, value in zip(self.output_names, values):
            kind, _, key = name.partition(":")
            (scores if kind == "score" else maps)[key] = torch.from_numpy(np.asarray(value))
        return scores, maps


def _load_onnx(p: Path) -> tuple[OnnxProgram, dict[str, Any]]:
    try:
        import onnxruntime
    except ImportError as err:
        raise UserInputError(
            f"{p}: running an ONNX export needs onnxruntime (pip install onnxruntime)"
        ) from err
    try:
        session = onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - any failure to read it is the file's problem
        raise UserInputError(f"{p}: not an ONNX model ({type(err).__name__}: {err})") from err
    text = session.get_modelmeta().custom_metadata_map.get("mri_anomaly", "")
    return OnnxProgram(session), (json.loads(text) if text else {})


def load_exported(
    path: str | os.PathLike, device: str = "cpu", score: str | None = None, reference_ops: bool | None = None
) -> ExportedScorer:
    """The :class:`ExportedScorer` of a file written by ``mri-anomaly export`` (``.pt2``, or ``.onnx``: CPU).

    Raises:
        FileNotFoundError: no such file. ValueError: not an mri-anomaly export (no metadata).
    """
    import mri_anomaly.ops  # noqa: F401 - registers torch.ops.mri_anomaly.*, which the program calls

    p = Path(path)
    if not p.is_file():
        raise MissingInputError(
            f"{p}: no such exported model (write one with `mri-anomaly export --run RUN --out {p}`)"
        )
    if p.suffix.lower() == ".onnx":
        if torch.device(device).type != "cpu":
            raise UserInputError(
                f"{p}: ONNX exports run on the CPU here (ONNX Runtime); use the .pt2 export for {device}"
            )
        onnx_program, metadata = _load_onnx(p)
        if metadata.get("format") != FORMAT:
            raise UserInputError(
                f"{p}: an ONNX model without mri-anomaly metadata (export it with `mri-anomaly export`)"
            )
        return ExportedScorer(onnx_program, metadata, device="cpu", score=score)
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(str(p), extra_files=extra)
    except Exception as err:  # noqa: BLE001 - any failure to read it is the file's problem
        raise UserInputError(f"{p}: not a torch.export program ({type(err).__name__}: {err})") from err
    if not extra[METADATA_FILE]:
        raise UserInputError(
            f"{p}: a torch.export program without mri-anomaly metadata ({METADATA_FILE}); export it with "
            "`mri-anomaly export`"
        )
    metadata = json.loads(extra[METADATA_FILE])
    if metadata.get("format") != FORMAT:
        raise UserInputError(
            f"{p}: unknown export format {metadata.get('format')!r} (this version reads {FORMAT!r})"
        )
    return ExportedScorer(program, metadata, device=device, score=score, reference_ops=reference_ops)
