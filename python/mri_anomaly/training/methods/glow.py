"""``glow`` and ``glow-ratio``: Glow likelihood scores (Schirrmeister et al., NeurIPS 2020) as trainer methods.

``glow`` (phase ``"train"``) trains one :class:`~mri_anomaly.flows.Glow` on the healthy ``training`` images.
``glow-ratio`` (phases ``"general"``, ``"in"``) first trains a Glow on the datalist's ``general`` section (a
broader distribution), then initialises the in-distribution Glow from it (all weights and actnorm state
copied, nothing re-initialised), freezes the general model, and fine-tunes the in-distribution model on
``training`` with the NLL plus, when ``outlier_weight > 0``, the outlier loss on ``general`` batches.

Units and conventions:

* Images arrive in [0, 1] and are quantised to ``n_bins`` levels (:func:`~mri_anomaly.flows.dequantize`):
  uniform dequantisation noise in training, the bin centre when scoring.
* Training loss: mean NLL in **bits per dimension** (size-independent, so one learning rate fits 2D and 3D).
* The outlier loss is ``w * softplus(Delta / T)`` with ``Delta = (log p_in(x) - log p_general(x)) / D`` in
  **nats per dimension** on general samples. The defaults ``w = 2.8``, ``T = 0.33`` are the paper's
  ``w = 6000``, ``T = 1000`` (whole-image nats for D = 3072 dims, loss in nats) converted to our per-dimension
  units: ``T = 1000 / 3072``, ``w = 6000 / (3072 ln 2)`` because our NLL is in bits/dim.

Scores (``(N,)``, higher = more anomalous; non-finite values become
:data:`~mri_anomaly.scoring.MOST_ANOMALOUS_SCORE`):

* ``nll_bpd``: ``(-log p(x) + D ln n_bins) / (D ln 2)``, bits/dim.
* ``final_scale``: the coarsest scale's NLL in bits per dimension **of that scale's latent**,
  ``(-c_L + D_L ln n_bins) / (D_L ln 2)`` (:func:`~mri_anomaly.scoring.final_scale_score`): the negated
  final-scale contribution, normalised by its own D_L dims and given its share of the dequantisation constant.
* ``llr`` (``glow-ratio``): ``(log p_general(x) - log p_in(x)) / (D ln 2)``, bits/dim (= ``bpd_in - bpd_general``).

Maps (``(N, 1, *spatial)`` on the model grid) come from :meth:`Glow.log_density_maps` and are in the same units
as their scores, per voxel (the mean of a map over *all* its voxels is the whole-image bits/dim): ``nll`` (all
scales), ``final_scale`` (last scale), ``llr`` (general minus in-distribution). **Each score is the mean of its
map over the brain voxels** (:mod:`mri_anomaly.scoring.brain`): averaged over the whole box, a slice's score
would also measure how much of it is brain (the background is modelled almost perfectly).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from mri_anomaly.flows import Glow, dequantize
from mri_anomaly.flows.dequantization import N_BINS
from mri_anomaly.scoring import bits_per_dim, nonfinite_to_most_anomalous, outlier_loss
from mri_anomaly.scoring.brain import brain_mask, brain_mean
from mri_anomaly.training.methods.base import AnomalyMethod, Batch, BatchScores, batch_images, register_method

__all__ = ["GlowMethod", "GlowRatioMethod"]


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


MAX_LEVELS = 16
"""Scales of a Glow at most (2**16 voxels per axis is beyond any MRI grid)."""


class _GlowScoring:
    @classmethod
    def grid_divisor(cls, model: Mapping[str, Any]) -> tuple[int, str]:
        """Each of the ``levels`` scales squeezes every axis by 2: sizes must be multiples of ``2**levels``."""
        levels = cls.model_argument(model, "levels")
        if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"model.levels: must be an integer from 1 to {MAX_LEVELS}, got {levels!r}")
        return 2**levels, f"model.levels={levels} (each level halves every axis)"

    """Shared per-batch computations of both Glow methods."""

    spatial_dims: int
    in_channels: int
    n_bins: int

    def _dequantized(self, model: Glow, batch: Batch, training: bool) -> torch.Tensor:
        return dequantize(
            batch_images(batch, self.spatial_dims, self.in_channels, _device(model)), training, self.n_bins
        )

    def _initialize(self, model: Glow, batches: Iterable[Batch]) -> bool:
        if bool(model.initialized):  # e.g. loaded from a checkpoint: never re-initialise
            return False
        images = [self._dequantized(model, batch, training=True) for batch in batches]
        if not images:
            raise ValueError("begin_phase received no batches: Glow's data-dependent init needs at least one")
        # noisy dequantisation so constant background does not give zero variance
        return model.initialize(torch.cat(images, 0))

    def _nll_bpd_loss(self, model: Glow, batch: Batch) -> torch.Tensor:
        x = self._dequantized(model, batch, training=True)
        return bits_per_dim(model(x).log_prob, model.num_dims(x.shape[2:]), self.n_bins).mean()

    def _scores_and_maps(
        self, model: Glow, x: torch.Tensor, brain: torch.Tensor
    ) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
        """Scores (means of the maps over ``brain`` (N, 1, *spatial)), maps, log p and per-scale density maps."""
        out = model(x, return_maps=True)
        spatial = x.shape[2:]
        latent_dims = model.latent_dims(spatial)
        voxels = math.prod(spatial)
        maps = out.log_density_maps  # (N, levels, *spatial), nats per voxel
        assert maps is not None
        ln_bins, ln2 = math.log(self.n_bins), math.log(2.0)
        channels = self.in_channels
        last = latent_dims[-1]
        score_maps = {
            "nll": (-maps.sum(1, keepdim=True) + channels * ln_bins) / (channels * ln2),
            "final_scale": (-maps[:, -1:] * voxels + last * ln_bins) / (last * ln2),
        }
        scores = {
            name: brain_mean(score_maps[m], brain)
            for name, m in (("nll_bpd", "nll"), ("final_scale", "final_scale"))
        }
        return scores, score_maps, out.log_prob, maps


def _finite(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: nonfinite_to_most_anomalous(value) for name, value in scores.items()}


@register_method
class GlowMethod(_GlowScoring, AnomalyMethod):
    """One Glow trained on healthy images; scores ``nll_bpd``, ``final_scale``; maps ``nll``, ``final_scale``.

    See the module docstring for units.

    Args:
        spatial_dims: 2 (slices (N, C, H, W)) or 3 (volumes (N, C, H, W, D)); sizes divisible by ``2**levels``.
        in_channels: image channels.
        levels: Glow scales L.
        steps: flow steps K per scale.
        hidden_channels: coupling NN width.
        coupling: ``"affine"`` or ``"additive"``.
        memory_efficient: invertible backprop (activation memory flat in ``steps``).
        prior: ``"per_dimension"`` (paper) or ``"per_channel"`` (any input size).
        prior_min_std: floor on the latent std at the priors' init (see :class:`~mri_anomaly.flows.LatentPrior`).
        prior_shrinkage: pseudo-count pulling a per-dimension prior's init towards per-channel moments (see
            :class:`~mri_anomaly.flows.LatentPrior`; 0: none).
        n_bins: quantisation levels of the [0, 1] images.

    Raises:
        ValueError: invalid Glow arguments (named).
    """

    name = "glow"
    phases = ("train",)
    score_names = ("nll_bpd", "final_scale")
    map_names = ("nll", "final_scale")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        levels: int = 3,
        steps: int = 8,
        hidden_channels: int = 64,
        coupling: str = "affine",
        memory_efficient: bool = False,
        prior: str = "per_dimension",
        prior_min_std: float = 0.05,
        prior_shrinkage: float = 0.0,
        n_bins: int = N_BINS,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        if int(n_bins) != n_bins or n_bins < 2:
            raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        self.n_bins = int(n_bins)
        self.glow = Glow(
            spatial_dims,
            in_channels,
            levels=levels,
            steps=steps,
            hidden_channels=hidden_channels,
            coupling=coupling,
            memory_efficient=memory_efficient,
            prior=prior,
            prior_min_std=prior_min_std,
            prior_shrinkage=prior_shrinkage,
        )

    def begin_phase(self, phase: str, batches: Iterable[Batch]) -> None:
        """Data-dependent init of the Glow on ``batches`` (dequantised with noise), unless already initialised."""
        self.check_phase(phase)
        self._initialize(self.glow, batches)

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """Mean NLL in bits/dim of the batch (uniform dequantisation noise)."""
        self.check_phase(phase)
        return self._nll_bpd_loss(self.glow, batch)

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        image = batch_images(batch, self.spatial_dims, self.in_channels, _device(self.glow))
        x = dequantize(image, False, self.n_bins)
        scores, maps, _, _ = self._scores_and_maps(self.glow, x, brain_mask(image))
        return BatchScores(scores=_finite(scores), maps=_finite(maps))


@register_method
class GlowRatioMethod(_GlowScoring, AnomalyMethod):
    """Log-likelihood ratio of an in-distribution Glow against a frozen Glow of a general distribution.

    Scores ``llr``, ``nll_bpd``, ``final_scale`` (the last two of the in-distribution model); maps ``llr``,
    ``nll``, ``final_scale``. See the module docstring for phases and units.

    Args:
        spatial_dims: 2 (slices (N, C, H, W)) or 3 (volumes (N, C, H, W, D)); sizes divisible by ``2**levels``.
        in_channels: image channels.
        levels: Glow scales L.
        steps: flow steps K per scale.
        hidden_channels: coupling NN width.
        coupling: ``"affine"`` or ``"additive"``.
        memory_efficient: invertible backprop (activation memory flat in ``steps``).
        prior: ``"per_dimension"`` (paper) or ``"per_channel"`` (any input size).
        prior_min_std: floor on the latent std at the priors' init (see :class:`~mri_anomaly.flows.LatentPrior`).
        prior_shrinkage: pseudo-count pulling a per-dimension prior's init towards per-channel moments (see
            :class:`~mri_anomaly.flows.LatentPrior`; 0: none).
        n_bins: quantisation levels of the [0, 1] images.
        outlier_weight: w of the outlier loss on general batches in phase ``"in"`` (0 disables it and the
            general batches).
        outlier_temperature: T, in nats per dimension.

    Raises:
        ValueError: invalid arguments (named).
    """

    name = "glow-ratio"
    phases = ("general", "in")
    score_names = ("llr", "nll_bpd", "final_scale")
    map_names = ("llr", "nll", "final_scale")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        levels: int = 3,
        steps: int = 8,
        hidden_channels: int = 64,
        coupling: str = "affine",
        memory_efficient: bool = False,
        prior: str = "per_dimension",
        prior_min_std: float = 0.05,
        prior_shrinkage: float = 0.0,
        n_bins: int = N_BINS,
        outlier_weight: float = 2.8,
        outlier_temperature: float = 0.33,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        if int(n_bins) != n_bins or n_bins < 2:
            raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        if not outlier_weight >= 0:
            raise ValueError(f"outlier_weight must be >= 0, got {outlier_weight!r}")
        if not outlier_temperature > 0:
            raise ValueError(f"outlier_temperature must be > 0, got {outlier_temperature!r}")
        self.n_bins = int(n_bins)
        self.outlier_weight = float(outlier_weight)
        self.outlier_temperature = float(outlier_temperature)
        glow_args = dict(
            levels=levels,
            steps=steps,
            hidden_channels=hidden_channels,
            coupling=coupling,
            memory_efficient=memory_efficient,
            prior=prior,
            prior_min_std=prior_min_std,
            prior_shrinkage=prior_shrinkage,
        )
        self.general = Glow(spatial_dims, in_channels, **glow_args)
        self.in_distribution = Glow(spatial_dims, in_channels, **glow_args)
        # Persistent: a resumed or loaded run never copies the general weights over the fine-tuned ones again.
        self.register_buffer("in_initialized_from_general", torch.tensor(False))

    def phase_data_section(self, phase: str) -> str:
        """``"general"`` trains on the datalist's ``general`` section, ``"in"`` on ``training``."""
        self.check_phase(phase)
        return "general" if phase == "general" else "training"

    def uses_general_data(self, phase: str) -> bool:
        """Phase ``"in"`` receives general batches for the outlier loss (when ``outlier_weight > 0``)."""
        self.check_phase(phase)
        return phase == "in" and self.outlier_weight > 0

    def begin_phase(self, phase: str, batches: Iterable[Batch]) -> None:
        """``"general"``: data-dependent init of the general Glow (unless initialised).
        ``"in"``: copy the general Glow into the in-distribution Glow (once; ``batches`` unused) and freeze it.

        Raises:
            RuntimeError: ``"in"`` begins before the general model was initialised/trained.
        """
        self.check_phase(phase)
        if phase == "general":
            self._initialize(self.general, batches)
            return
        if not bool(self.general.initialized):
            raise RuntimeError(
                "phase 'in' needs the general Glow: run phase 'general' first (or load its checkpoint)"
            )
        if not bool(self.in_initialized_from_general):
            self.in_distribution.load_state_dict(self.general.state_dict())
            self.in_initialized_from_general.fill_(True)
        self.general.requires_grad_(False)
        self.general.eval()

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        """``"general"``: the general Glow's parameters; ``"in"``: the in-distribution Glow's."""
        self.check_phase(phase)
        model = self.general if phase == "general" else self.in_distribution
        return (p for p in model.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> GlowRatioMethod:
        super().train(mode)
        if bool(self.in_initialized_from_general):
            self.general.eval()  # frozen reference
        return self

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """``"general"``: mean bits/dim of the general Glow on the batch. ``"in"``: mean bits/dim of the
        in-distribution Glow on the batch + the outlier loss on ``general_batch``.

        Raises:
            ValueError: ``"in"`` with ``outlier_weight > 0`` and no ``general_batch``.
        """
        self.check_phase(phase)
        if phase == "general":
            return self._nll_bpd_loss(self.general, batch)
        loss = self._nll_bpd_loss(self.in_distribution, batch)
        if self.outlier_weight > 0:
            if general_batch is None:
                raise ValueError(
                    "phase 'in' with outlier_weight > 0 needs general_batch (the datalist's 'general' section)"
                )
            x = self._dequantized(self.in_distribution, general_batch, training=True)
            num_dims = self.in_distribution.num_dims(x.shape[2:])
            with torch.no_grad():
                log_prob_general = self.general(x).log_prob
            log_prob_in = self.in_distribution(x).log_prob
            loss = loss + outlier_loss(
                log_prob_in / num_dims,
                log_prob_general / num_dims,
                self.outlier_weight,
                self.outlier_temperature,
            )
        return loss

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        image = batch_images(batch, self.spatial_dims, self.in_channels, _device(self.in_distribution))
        x = dequantize(image, False, self.n_bins)
        brain = brain_mask(image)
        scores, maps, _, maps_in = self._scores_and_maps(self.in_distribution, x, brain)
        out_general = self.general(x, return_maps=True)
        assert out_general.log_density_maps is not None
        llr_map = (out_general.log_density_maps.sum(1, keepdim=True) - maps_in.sum(1, keepdim=True)) / (
            self.in_channels * math.log(2.0)
        )
        scores = {"llr": brain_mean(llr_map, brain), **scores}
        maps = {"llr": llr_map, **maps}
        return BatchScores(scores=_finite(scores), maps=_finite(maps))
