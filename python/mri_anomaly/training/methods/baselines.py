"""The two baselines every learned method must beat: ``intensity`` and ``normative``.

* ``intensity`` (Meissen et al., BrainLes 2021, "Challenging current semi-supervised anomaly segmentation
  methods for brain MRI"): the preprocessed image itself is the anomaly map. In FLAIR, lesions are
  hyperintense, and thresholding the image beat most published unsupervised methods there.
* ``normative``: a voxel-wise normative model on the common grid. Every training volume is preprocessed onto
  the same fixed grid; the per-voxel median and spread (1.4826 × median absolute deviation, floored at
  ``min_std``) of the healthy training volumes give a map ``abs_z = |x − median| / spread`` (channels
  averaged). This is the classical reference a learned model of healthy anatomy has to beat.

Both have one phase, ``"fit"``, with no optimiser steps (``train.phases.fit.steps: 0``): ``intensity`` needs
nothing; ``normative`` computes its statistics in :meth:`NormativeMethod.begin_phase` from the batches the
trainer hands it (``train.init_batches`` batches; the shipped config asks for a whole epoch of the training
section). Calibration (thresholds, slice norms) runs as for every method.

Each returns only its map; the volume scores are the map's 99.9th percentile and the mean of its highest 200 mm³
over the brain minus ``score.map_erosion_mm`` (``<map>_q999``, ``<map>_top200mm3``), made by the scoring layer for
every method's maps alike (:mod:`mri_anomaly.scoring.maps`), and so is the slice profile ``<map>_slice_top200mm3``
(the mean of the map's highest 200 mm³ in each slice's part of that region, as for the learned methods' maps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from mri_anomaly.training.methods.base import AnomalyMethod, Batch, BatchScores, batch_images, register_method

__all__ = ["IntensityMethod", "NormativeMethod"]


class _FitOnly(AnomalyMethod):
    """A method without trainable parameters: its one phase, ``"fit"``, takes no optimiser steps."""

    phases = ("fit",)

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        raise RuntimeError(
            f"method {self.name!r} has no trainable parameters: set train.phases.fit.steps to 0"
        )

    def _images(self, batch: Batch) -> torch.Tensor:
        device = next(iter(self.buffers()), torch.zeros(())).device
        return batch_images(batch, self.spatial_dims, self.in_channels, device)


@register_method
class IntensityMethod(_FitOnly):
    """The image as its own anomaly map (see the module docstring).

    Map ``intensity`` (N, 1, *spatial): the image, channels averaged (volume scores ``intensity_q999``,
    ``intensity_top200mm3``).
    """

    name = "intensity"
    score_names = ()
    map_names = ("intensity",)

    def __init__(self, spatial_dims: int, in_channels: int = 1) -> None:
        super().__init__(spatial_dims, in_channels)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def begin_phase(self, phase: str, batches: Iterable[Batch]) -> None:
        self.check_phase(phase)

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        x = self._images(batch)
        intensity = x.mean(dim=1, keepdim=True)
        return BatchScores(scores={}, maps={"intensity": intensity})


@register_method
class NormativeMethod(_FitOnly):
    """Voxel-wise normative model: per-voxel median and robust spread of healthy training volumes.

    Args:
        spatial_dims: 3 (whole volumes on one fixed grid, ``preprocessing.spatial_size``).
        in_channels: image channels.
        min_std: floor of the per-voxel spread (images are in [0, 1]), so voxels that are background in almost
            every training volume do not divide by ~0.

    Map ``abs_z`` (N, 1, *spatial) = ``|x − median| / spread`` averaged over channels (volume score
    ``abs_z_q999``, ``abs_z_top200mm3``). Buffers ``center`` and ``spread`` (C, *spatial) are saved with the run.

    The model has a norm for brain tissue only where the median healthy volume is brain (``center > 0``: brain
    in at least half of the training volumes). Outside that support the map is 0 (the least anomalous value):
    without registration, a larger or shifted brain would otherwise light up wherever it
    extends past the median brain (the spread there is the ``min_std`` floor), so the scores would measure
    brain size (slice scores tracked the slice's brain fraction, ρ ≈ 0.21 over random calibration splits,
    ``docs/benchmarks/detection.md``).

    Raises:
        ValueError: ``min_std`` <= 0.
    """

    name = "normative"
    score_names = ()
    map_names = ("abs_z",)

    def __init__(self, spatial_dims: int, in_channels: int = 1, min_std: float = 0.05) -> None:
        super().__init__(spatial_dims, in_channels)
        if spatial_dims != 3:
            raise ValueError(
                f"the normative model is voxel-wise on whole volumes: spatial_dims must be 3, got {spatial_dims}"
            )
        if not min_std > 0:
            raise ValueError(f"min_std must be > 0, got {min_std!r}")
        self.min_std = float(min_std)
        self.register_buffer("center", torch.zeros(0))
        self.register_buffer("spread", torch.zeros(0))
        self.register_buffer("n_fitted", torch.tensor(0, dtype=torch.long))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The statistics' shape is the model grid, known only once fitted: take the saved shape.
        for name in ("center", "spread"):
            if prefix + name in state_dict:
                setattr(
                    self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def begin_phase(self, phase: str, batches: Iterable[Batch]) -> None:
        """Per-voxel median and spread over every image of ``batches`` (unless already fitted).

        Raises:
            ValueError: no images, or images of different grids.
        """
        self.check_phase(phase)
        if int(self.n_fitted) > 0:
            return
        images = [self._images(b).cpu() for b in batches]
        if not images:
            raise ValueError("the normative model needs training images: begin_phase received no batches")
        shapes = {tuple(x.shape[1:]) for x in images}
        if len(shapes) != 1:
            raise ValueError(
                f"the normative model needs one fixed grid (preprocessing.spatial_size); got {sorted(shapes)}"
            )
        stack = torch.cat(images).double().numpy()  # (n, C, *spatial)
        center = np.median(stack, axis=0)  # the midpoint for an even n (torch.median takes the lower value)
        spread = 1.4826 * np.median(np.abs(stack - center), axis=0)
        device = self.center.device
        self.center = torch.from_numpy(center).float().to(device)
        self.spread = torch.from_numpy(spread).clamp_min(self.min_std).float().to(device)
        self.n_fitted.fill_(stack.shape[0])

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        if int(self.n_fitted) == 0:
            raise RuntimeError("the normative model is not fitted: train it first (phase 'fit')")
        x = self._images(batch)
        if tuple(x.shape[1:]) != tuple(self.center.shape):
            raise ValueError(
                f"image grid {tuple(x.shape[1:])} differs from the normative model's {tuple(self.center.shape)}: "
                "score with the run's preprocessing (fixed spatial_size)"
            )
        support = (self.center > 0).any(dim=0, keepdim=True)  # (1, *spatial): the median volume's brain
        abs_z = ((x - self.center) / self.spread).abs().mean(dim=1, keepdim=True) * support
        return BatchScores(scores={}, maps={"abs_z": abs_z})
