"""``Detector``: the estimator API (PyOD / scikit-learn conventions) over the same code path as the CLI.

```python
from mri_anomaly import Detector

det = Detector("glow2d-slices", max_steps=None, device="auto", **{"train.batch_size": 16})
det.fit(train_images, validation_images)   # healthy NIfTI paths (or a datalist); calibrates the thresholds
det.decision_function(images)              # (N,) the run's primary score, higher = more anomalous
det.predict(images)                        # (N,) 0/1: primary score > det.threshold_
det.score_table(images)                    # DataFrame: every score column, flags, slice profiles
det.anomaly_maps(images, out_dir)          # voxel maps as NIfTI in each input's space
det.save(run_dir); Detector.load(run_dir)  # the run folder `mri-anomaly train` writes and `score` reads
```

Nothing here scores or trains by itself: :meth:`Detector.fit` is ``mri-anomaly train`` (a
:class:`~mri_anomaly.training.Trainer` on a datalist written from the given files), and every scoring call is
``mri-anomaly score`` (:func:`~mri_anomaly.scoring.runner.score_datalist` into a folder, whose ``scores.csv``
is read back). So the numbers and flags are those of the CLI on the same run, and errors are the CLI's: a
bad config or datalist raises its ``ConfigError`` / ``DatalistError``; a scan that cannot be read raises a
``ValueError`` naming each such file and its problem (the CLI records the same lines in ``errors.csv``).

The **primary score** is the first score column of the run (``score_meta.json``'s ``score_columns``): for
2D runs the slice mean of the method's first score (``nll_bpd_mean``, ``latent_norm_mean``, ...), for 3D runs
the method's first score (``nll_bpd``, ``llr``, ``deep_sad_dist``, ...). ``Detector(..., score="...")`` picks
another column.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mri_anomaly.data.datalist import ImagesLike, first_image, is_datalist_path, items_from_images
from mri_anomaly.errors import MissingInputError, OutputExistsError, UserInputError

__all__ = ["Detector", "ImagesLike", "resolve_device"]


_RUN_FILES = ("config.yaml", "checkpoint.pt", "train_log.csv", "thresholds.json")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is present, else ``"cpu"``; anything else unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _override_text(key: str, value: Any) -> str:
    """``("train__batch_size", 8)`` -> ``"train.batch_size=8"`` (the CLI's ``--set``; JSON values are YAML)."""
    return f"{key.replace('__', '.')}={json.dumps(value)}"


class Detector:
    """An anomaly detector trained on healthy scans, with thresholds calibrated on healthy validation scans.

    Args:
        config: a shipped config by name (``"glow2d-slices"``, ``"glow3d"``, ``"deep-sad-2d"``, ...) or the path
            of a YAML config.
        max_steps: stop training after this many optimiser steps in total (``train --max-steps``).
        device: ``"auto"`` (GPU when present), ``"cpu"`` or ``"cuda"``.
        score: the score column that ``decision_function``/``predict`` use (default: the run's primary score).
        run_dir: where ``fit`` trains (default: a new temporary folder, removed with the detector; ``save``
            copies it).
        progress: progress bars of training and scoring.
        **overrides: config values by dotted key (``**{"train.batch_size": 8}``) or with ``__`` for the dots
            (``train__batch_size=8``): the CLI's ``--set``.

    Attributes (after ``fit`` or ``load``):
        run_dir: the run folder. config_: the run's validated config. threshold_: the threshold of the
        primary score (None without validation scans). thresholds_: every column's threshold.
        score_name_: the primary score column.
    """

    def __init__(
        self,
        config: str | os.PathLike = "glow2d-slices",
        max_steps: int | None = None,
        device: str = "auto",
        score: str | None = None,
        run_dir: str | os.PathLike | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> None:
        from mri_anomaly.training import load_config
        from mri_anomaly.training.config import resolve_config_path

        self.config_path = resolve_config_path(config)  # a shipped name or a file; ConfigError otherwise
        self.overrides = [_override_text(k, v) for k, v in overrides.items()]
        self.config_ = load_config(self.config_path, self.overrides)  # a bad value fails now, not after fit
        self.max_steps = max_steps
        self.device = resolve_device(device)
        self.score = score
        self.progress = progress
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self._temporary: Path | None = None

    # ------------------------------------------------------------------------------------------ state
    @property
    def specificity(self) -> float:
        """The specificity the thresholds are calibrated at (config ``score.specificity``)."""
        return float(self.config_["score"]["specificity"])

    @property
    def thresholds_(self) -> dict[str, float]:
        """``{score column: threshold}`` of the run (``RUN/thresholds.json``); empty when it has none."""
        from mri_anomaly.evaluation.thresholds import load_thresholds

        stored = load_thresholds(self._run())
        return dict(stored["thresholds"]) if stored is not None else {}

    @property
    def score_name_(self) -> str:
        """The score column ``decision_function`` returns."""
        columns = self.score_columns_
        if self.score is not None:
            if self.score not in columns:
                raise UserInputError(
                    f"score {self.score!r} is not a score column of this run (columns: {', '.join(columns)})"
                )
            return self.score
        return columns[0]

    @property
    def score_columns_(self) -> list[str]:
        """Every volume score column of the run, in ``scores.csv`` order."""
        from mri_anomaly.scoring.volume import volume_score_columns_of
        from mri_anomaly.training.methods import get_method_class

        return volume_score_columns_of(get_method_class(self.config_["method"]), self.config_)

    @property
    def threshold_(self) -> float | None:
        """The primary score's threshold (flag when the score is above it), or None when none was calibrated."""
        return self.thresholds_.get(self.score_name_)

    def _run(self) -> Path:
        if self.run_dir is None or not (self.run_dir / "checkpoint.pt").is_file():
            raise RuntimeError(
                "this Detector is not fitted: call fit(train, validation) or Detector.load(run_dir)"
            )
        return self.run_dir

    def __repr__(self) -> str:
        state = f"run_dir={str(self.run_dir)!r}" if self.run_dir is not None else "not fitted"
        return f"Detector({self.config_['method']!r}, spatial_dims={self.config_['spatial_dims']}, {state})"

    # -------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        train_images: ImagesLike,
        validation_images: ImagesLike | None = None,
        general_images: ImagesLike | None = None,
    ) -> Detector:
        """Train on healthy ``train_images`` and calibrate the thresholds on healthy ``validation_images``.

        Args:
            train_images: healthy NIfTI paths, or a datalist (then its sections are used: ``training``,
                ``validation``, ``general``, unless given here).
            validation_images: healthy scans for the thresholds (at :attr:`specificity`); None: no thresholds
                (``predict`` then refuses).
            general_images: a broader distribution (the ``general`` section; ``glow3d-ratio`` needs it).

        Returns:
            self.

        Raises:
            ConfigError, DatalistError: as ``mri-anomaly train`` (every problem listed).
            FileExistsError: ``run_dir`` already holds a run.
        """
        from mri_anomaly.data import write_datalist
        from mri_anomaly.training import Trainer

        sections: dict[str, list[dict[str, Any]]] = {}
        if is_datalist_path(train_images):
            from mri_anomaly.data import load_datalist

            sections = {
                k: list(v)
                for k, v in load_datalist(train_images, check_files=False, check_headers=False).items()
                if k in ("training", "validation", "general")
            }
        else:
            sections["training"] = items_from_images(train_images, "training", "train_images")
        if validation_images is not None:
            sections["validation"] = items_from_images(validation_images, "validation", "validation_images")
        if general_images is not None:
            sections["general"] = items_from_images(general_images, "general", "general_images")
        if self.run_dir is None or self.run_dir == self._temporary:
            self._new_temporary_run_dir()
        assert self.run_dir is not None
        with tempfile.TemporaryDirectory(prefix="mri-anomaly-fit-") as tmp:
            datalist = write_datalist(sections, Path(tmp) / "datalist.json", relative=False)
            Trainer(
                self.config_,
                datalist,
                self.run_dir,
                device=self.device,
                max_steps=self.max_steps,
                progress=self.progress,
            ).fit()
        return self

    def _new_temporary_run_dir(self) -> None:
        self._temporary = Path(tempfile.mkdtemp(prefix="mri-anomaly-run-")) / "run"
        weakref.finalize(self, shutil.rmtree, str(self._temporary.parent), True)
        self.run_dir = self._temporary

    # ----------------------------------------------------------------------------------------- scoring
    def _score_into(self, images: ImagesLike, out_dir: Path, save_maps: bool, section: str) -> pd.DataFrame:
        """``mri-anomaly score`` of ``images`` into ``out_dir``; ``scores.csv`` rows in the order of ``images``.

        Raises:
            ValueError: some scans could not be scored (each file and its problem listed).
        """
        from mri_anomaly.data import write_datalist
        from mri_anomaly.scoring.runner import score_datalist
        from mri_anomaly.scoring.tables import ERRORS_FILE, SCORES_FILE

        run = self._run()
        items = items_from_images(images, section, "images")
        out_dir.mkdir(parents=True, exist_ok=True)
        datalist = write_datalist({"test": items}, out_dir / "datalist.json", relative=False)
        score_datalist(
            run,
            datalist,
            out_dir,
            sections=("test",),
            device=self.device,
            save_maps=save_maps,
            progress=self.progress,
        )
        errors = (
            pd.read_csv(out_dir / ERRORS_FILE, dtype=str)
            if (out_dir / ERRORS_FILE).is_file()
            else pd.DataFrame()
        )
        if len(errors):
            lines = "\n  ".join(str(e) for e in errors["error"])
            raise UserInputError(f"{len(errors)} of {len(items)} scan(s) could not be scored:\n  {lines}")
        table = pd.read_csv(out_dir / SCORES_FILE, dtype={"subject_id": str, "image": str})
        from mri_anomaly.data import load_datalist

        order = [
            first_image(it) for it in load_datalist(datalist, check_files=False, check_headers=False)["test"]
        ]
        return table.set_index("image", drop=False).loc[order].reset_index(drop=True)

    def _scored(
        self, images: ImagesLike, section: str = "test", save_maps: bool = False
    ) -> tuple[pd.DataFrame, Path]:
        tmp = Path(tempfile.mkdtemp(prefix="mri-anomaly-score-"))
        try:
            return self._score_into(images, tmp, save_maps, section), tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def decision_function(self, images: ImagesLike, section: str = "test") -> np.ndarray:
        """Anomaly scores of ``images``: (N,) float64, the primary score column, higher = more anomalous.

        ``section``: which section to score when ``images`` is a datalist file.
        """
        table, tmp = self._scored(images, section)
        shutil.rmtree(tmp, ignore_errors=True)
        return table[self.score_name_].to_numpy(dtype=np.float64)

    def predict(self, images: ImagesLike, section: str = "test") -> np.ndarray:
        """(N,) int 0/1: 1 when the primary score is above :attr:`threshold_` (``scores.csv``'s ``flag:`` column).

        Raises:
            ValueError: the run has no threshold for the primary score (fitted without validation scans).
        """
        if self.threshold_ is None:
            from mri_anomaly.evaluation.thresholds import load_thresholds

            refused = (load_thresholds(self._run()) or {}).get("refused")
            raise UserInputError(
                f"{self.run_dir}: no threshold for {self.score_name_!r}: "
                + (refused if refused else "fit with validation_images (healthy scans) to calibrate one")
            )
        table, tmp = self._scored(images, section)
        shutil.rmtree(tmp, ignore_errors=True)
        return table[f"flag:{self.score_name_}"].to_numpy(dtype=np.int64)

    def score_table(self, images: ImagesLike, section: str = "test") -> pd.DataFrame:
        """One row per image: ``scores.csv``'s columns (every score, ``flag:<column>``) plus the slice profiles.

        Profiles (arrays over the axial slices of the model grid, from ``slice_scores.csv``): ``slices:<column>``
        for every slice score column, and ``slices:brain_fraction`` / ``slices:counted``.
        """
        from mri_anomaly.scoring.tables import SLICE_SCORES_FILE

        table, tmp = self._scored(images, section)
        try:
            slices = pd.read_csv(tmp / SLICE_SCORES_FILE, dtype={"subject_id": str})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        table = table.drop(columns=[c for c in table.columns if c.startswith("map:")])
        columns = [c for c in slices.columns if c not in ("subject_id", "section", "slice", "slice_label")]
        grouped = {sid: g.sort_values("slice") for sid, g in slices.groupby("subject_id", sort=False)}
        for c in columns:
            table[f"slices:{c}"] = [grouped[sid][c].to_numpy() for sid in table["subject_id"]]
        return table

    def anomaly_maps(
        self, images: ImagesLike, out_dir: str | os.PathLike, section: str = "test"
    ) -> list[dict[str, Path]]:
        """Write the voxel maps of ``images`` into ``out_dir`` (``mri-anomaly score``'s layout: ``maps/test/``).

        Returns:
            per image, ``{map name: path}`` of float32 NIfTI maps on the input's grid with its affine.

        Raises:
            ValueError: the method has no voxel maps (Deep SAD/SVDD).
        """
        from mri_anomaly.training.methods import get_method_class

        names = get_method_class(self.config_["method"]).map_names
        if not names:
            raise UserInputError(
                f"method {self.config_['method']!r} has no voxel maps (only volume/slice scores)"
            )
        out = Path(out_dir)
        table = self._score_into(images, out, True, section)
        return [{m: (out / row[f"map:{m}"]).resolve() for m in names} for _, row in table.iterrows()]

    # ------------------------------------------------------------------------------------- persistence
    def save(self, run_dir: str | os.PathLike) -> Path:
        """Copy the run to ``run_dir`` (the folder ``mri-anomaly score --run`` reads); the detector now uses it.

        Raises:
            FileExistsError: ``run_dir`` already holds a run.
        """
        source = self._run()
        target = Path(run_dir)
        if (target / "checkpoint.pt").exists():
            raise OutputExistsError(
                f"{target} already holds a training run (checkpoint.pt); choose another folder"
            )
        if target.resolve() == source.resolve():
            return target
        target.mkdir(parents=True, exist_ok=True)
        for name in _RUN_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        self.run_dir = target
        return target

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike,
        device: str = "auto",
        score: str | None = None,
        progress: bool = False,
    ) -> Detector:
        """The detector of a run folder written by ``mri-anomaly train`` or :meth:`save`.

        Raises:
            FileNotFoundError: no ``checkpoint.pt`` in ``run_dir``.
        """
        from mri_anomaly.training.checkpoint import load_checkpoint
        from mri_anomaly.training.config import config_from_yaml

        run = Path(run_dir)
        if not (run / "checkpoint.pt").is_file():
            raise MissingInputError(
                f"{run_dir}: no checkpoint.pt (train a model there first with `mri-anomaly train`)"
            )
        det = cls.__new__(cls)
        det.config_path = run / "config.yaml"
        det.overrides = []
        det.config_ = config_from_yaml(load_checkpoint(run / "checkpoint.pt", map_location="cpu")["config"])
        det.max_steps = None
        det.device = resolve_device(device)
        det.score = score
        det.progress = progress
        det.run_dir = run
        det._temporary = None
        return det
