"""Multi-scale Glow for 2D slices and 3D volumes with per-scale likelihood contributions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mri_anomaly.flows.actnorm_invconv import ActNormInvConv
from mri_anomaly.flows.coupling import COUPLING_TYPES, Coupling
from mri_anomaly.flows.dequantization import N_BINS, discrete_bits_per_dim
from mri_anomaly.flows.invertible_chain import InvertibleChain
from mri_anomaly.flows.prior import PRIOR_TYPES, LatentPrior
from mri_anomaly.flows.squeeze import squeeze, unsqueeze

__all__ = ["FlowStep", "Glow", "GlowOutput"]


class FlowStep(InvertibleChain):
    """One Glow step: :class:`~mri_anomaly.flows.ActNormInvConv` (actnorm + invertible 1x1(x1) conv), then a
    :class:`~mri_anomaly.flows.coupling.Coupling`.

    Args:
        spatial_dims: 2 or 3.
        num_channels: C of the input.
        hidden_channels: coupling NN width.
        coupling: ``"affine"`` or ``"additive"``.
    """

    def __init__(
        self, spatial_dims: int, num_channels: int, hidden_channels: int, coupling: str = "affine"
    ) -> None:
        super().__init__(
            [ActNormInvConv(num_channels), Coupling(spatial_dims, num_channels, hidden_channels, coupling)]
        )

    @property
    def actnorm_invconv(self) -> ActNormInvConv:
        return self.layers[0]

    @property
    def coupling(self) -> Coupling:
        return self.layers[1]

    def forward_with_logdet_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y, logdet (N,), logdet_map (N, *spatial))``; the map sums to ``logdet`` over locations."""
        h, logdet_mix = self.actnorm_invconv(x)
        y, coupling_map = self.coupling.forward_with_logdet_map(h)
        locations = math.prod(x.shape[2:])
        logdet_map = coupling_map + (logdet_mix / locations).reshape(-1, *([1] * (x.dim() - 2)))
        return y, logdet_mix + coupling_map.reshape(x.shape[0], -1).sum(1), logdet_map


@dataclass
class GlowOutput:
    """What :meth:`Glow.forward` returns (log-densities in nats, of the continuous input).

    Attributes:
        z: one standardised latent per scale, ``(N, C_i, *spatial_i)``; N(0, I) under the model.
        log_prob: ``(N,)`` ``log p(x)``.
        contributions: ``(N, levels)``; ``contributions.sum(1) == log_prob``. Scale i's contribution is
            the log-dets of its flow steps + its prior's actnorm log-det + ``log N(z_i; 0, I)``.
        log_density_maps: ``(N, levels, *spatial)`` on the input grid when asked for, else None
            (see :meth:`Glow.log_density_maps`).
        flow_log_det_maps: ``(N, levels, *spatial)`` when asked for (``split_maps``), else None: the part of
            each scale's map that comes from its flow steps' log-dets; ``log_density_maps - flow_log_det_maps`` is
            its prior's (which half of a scale's density an anomaly moves).
    """

    z: list[torch.Tensor]
    log_prob: torch.Tensor
    contributions: torch.Tensor
    log_density_maps: torch.Tensor | None = None
    flow_log_det_maps: torch.Tensor | None = None


class Glow(nn.Module):
    """Multi-scale Glow (Kingma & Dhariwal 2018) with unconditional per-scale priors (Schirrmeister et al. 2020).

    For each scale i = 0..levels-1: squeeze 2x2(x2), ``steps`` flow steps (actnorm + invertible
    1x1(x1) conv + coupling), then, except at the last scale, the first half of the channels is split
    off as latent z_i and the rest continues. Each latent goes through its own actnorm and is scored
    under N(0, I), so ``log p(x) = sum_i c_i`` with well-defined per-scale contributions c_i.

    The input is continuous (dequantise [0, 1] images with
    :func:`~mri_anomaly.flows.dequantization.dequantize`). Data-dependent init is explicit: call
    :meth:`initialize` on a batch before training (and before DistributedDataParallel); the persistent
    ``initialized`` buffer means a loaded checkpoint is never re-initialised.

    Args:
        spatial_dims: 2 (slices ``(N, C, H, W)``) or 3 (volumes ``(N, C, H, W, D)``).
        in_channels: C of the input.
        levels: number of scales L >= 1; every spatial size must be divisible by ``2**levels``.
        steps: flow steps K per scale (an int, or one per scale).
        hidden_channels: coupling NN width.
        coupling: ``"affine"`` (scale ``sigmoid(raw + 2)``) or ``"additive"``.
        memory_efficient: each scale's chain of steps keeps only its output and rebuilds its activations in
            backward (:class:`~mri_anomaly.flows.InvertibleChain`), so activation memory does not grow with ``steps``.
        prior: ``"per_dimension"`` (paper; fixes the input size at :meth:`initialize`) or ``"per_channel"``.
        prior_min_std: floor on the latent std at the priors' data-dependent init (see
            :class:`~mri_anomaly.flows.LatentPrior`).
        prior_shrinkage: pseudo-count pulling a per-dimension prior's init towards per-channel moments (see
            :class:`~mri_anomaly.flows.LatentPrior`; 0: none).

    Raises:
        ValueError: invalid arguments (named in the message).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        levels: int,
        steps: int | Sequence[int],
        hidden_channels: int,
        coupling: str = "affine",
        memory_efficient: bool = False,
        prior: str = "per_dimension",
        prior_min_std: float = 0.05,
        prior_shrinkage: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if int(in_channels) != in_channels or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        if int(levels) != levels or levels < 1:
            raise ValueError(f"levels must be a positive integer, got {levels!r}")
        steps_per_level = [steps] * levels if isinstance(steps, int) else list(steps)
        if len(steps_per_level) != levels or any(int(k) != k or k < 1 for k in steps_per_level):
            raise ValueError(f"steps must be a positive integer or {levels} of them, got {steps!r}")
        if int(hidden_channels) != hidden_channels or hidden_channels < 1:
            raise ValueError(f"hidden_channels must be a positive integer, got {hidden_channels!r}")
        if coupling not in COUPLING_TYPES:
            raise ValueError(f"coupling must be one of {COUPLING_TYPES}, got {coupling!r}")
        if prior not in PRIOR_TYPES:
            raise ValueError(f"prior must be one of {PRIOR_TYPES}, got {prior!r}")
        if not prior_min_std > 0:
            raise ValueError(f"prior_min_std must be > 0, got {prior_min_std!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = int(in_channels)
        self.levels = int(levels)
        self.steps = steps_per_level
        self.hidden_channels = int(hidden_channels)
        self.coupling = coupling
        self.prior = prior
        self.chains = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.latent_channels: list[int] = []
        channels = self.in_channels
        for level in range(self.levels):
            channels *= 2**spatial_dims
            self.chains.append(
                InvertibleChain(
                    [
                        FlowStep(spatial_dims, channels, self.hidden_channels, coupling)
                        for _ in range(steps_per_level[level])
                    ],
                    memory_efficient,
                )
            )
            latent = channels // 2 if level < self.levels - 1 else channels
            self.latent_channels.append(latent)
            self.priors.append(
                LatentPrior(latent, spatial_dims, prior, min_std=prior_min_std, shrinkage=prior_shrinkage)
            )
            channels -= latent
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("input_size", torch.zeros(spatial_dims, dtype=torch.long))

    # --- configuration ---

    @property
    def memory_efficient(self) -> bool:
        return all(chain.memory_efficient for chain in self.chains)

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        for chain in self.chains:
            chain.memory_efficient = bool(value)

    def num_dims(self, spatial_size: Sequence[int]) -> int:
        """D = C times the voxels of an input of ``spatial_size``."""
        return self.in_channels * math.prod(int(s) for s in spatial_size)

    def latent_dims(self, spatial_size: Sequence[int]) -> list[int]:
        """Dimensions of each scale's latent for an input of ``spatial_size`` (they sum to :meth:`num_dims`)."""
        voxels = math.prod(int(s) for s in spatial_size)
        return [c * voxels // 2 ** (self.spatial_dims * (i + 1)) for i, c in enumerate(self.latent_channels)]

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"x must have shape (N, C, *spatial) with {self.spatial_dims} spatial dims, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels but the Glow was built with in_channels={self.in_channels}"
            )
        factor = 2**self.levels
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"every spatial size of x must be divisible by 2**levels = {factor} (levels={self.levels}), "
                f"got {tuple(x.shape[2:])}; pad or crop the input"
            )

    def _check_initialized(self) -> None:
        # (an exported program cannot branch on a buffer; the exporter checks this before tracing)
        if not torch.compiler.is_exporting() and not bool(self.initialized):
            raise RuntimeError("Glow is not initialised: call initialize(batch) (data-dependent init) first")

    # --- data-dependent init ---

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, force: bool = False) -> bool:
        """Run every data-dependent init (each step's actnorm, each latent prior) on one batch, in order.

        Call it explicitly before training and before any distributed wrapping (moments are all-reduced
        when ``torch.distributed`` is initialised). Use a dequantised (noisy) batch so that constant
        background does not give zero variance.

        Args:
            x: ``(N, C, *spatial)`` continuous input batch (a few batches concatenated is better).
            force: re-initialise an initialised model.

        Returns:
            Whether the model was (re)initialised (False when already initialised, e.g. after loading).
        """
        if bool(self.initialized) and not force:
            return False
        self._check_input(x)
        h = x
        for level, (chain, prior) in enumerate(zip(self.chains, self.priors)):
            h = squeeze(h, self.spatial_dims)
            for step in chain.layers:
                step.actnorm_invconv.initialize(h, force=True)
                h, _ = step(h)
            latent = self.latent_channels[level]
            prior.initialize(h[:, :latent], force=True)
            h = h[:, latent:]
        self.input_size.copy_(torch.tensor(x.shape[2:], dtype=torch.long))
        self.initialized.fill_(True)
        return True

    # --- density ---

    def forward(self, x: torch.Tensor, return_maps: bool = False, split_maps: bool = False) -> GlowOutput:
        """Latents, log-density and per-scale contributions of a continuous input.

        Args:
            x: ``(N, C, *spatial)``, each spatial size divisible by ``2**levels``.
            return_maps: also compute :attr:`GlowOutput.log_density_maps` (runs the steps one by one).
            split_maps: with ``return_maps``, also :attr:`GlowOutput.flow_log_det_maps` (a diagnostic; scoring
                does not need it).

        Returns:
            :class:`GlowOutput` (nats).

        Raises:
            ValueError: wrong shape, channels, or indivisible spatial size. RuntimeError: not initialised.
        """
        self._check_input(x)
        self._check_initialized()
        h = x
        latents, contributions, maps, flow_maps = [], [], [], []
        for level, (chain, prior) in enumerate(zip(self.chains, self.priors)):
            h = squeeze(h, self.spatial_dims)
            if return_maps:
                flow_logdet = h.new_zeros(h.shape[0])
                flow_map = h.new_zeros((h.shape[0], *h.shape[2:]))
                for step in chain.layers:
                    h, step_logdet, step_map = step.forward_with_logdet_map(h)
                    flow_logdet = flow_logdet + step_logdet
                    flow_map = flow_map + step_map
            else:
                h, flow_logdet = chain(h)
            latent = self.latent_channels[level]
            z, h = h[:, :latent], h[:, latent:]
            if return_maps:
                u, prior_map = prior.forward_with_log_prob_map(z)
                prior_log_prob = prior_map.reshape(z.shape[0], -1).sum(1)
                maps.append(self._to_input_grid(flow_map + prior_map, level))
                if split_maps:
                    flow_maps.append(self._to_input_grid(flow_map, level))
            else:
                u, prior_log_prob = prior(z)
            latents.append(u)
            contributions.append(flow_logdet + prior_log_prob)
        contribution = torch.stack(contributions, 1)
        return GlowOutput(
            z=latents,
            log_prob=contribution.sum(1),
            contributions=contribution,
            log_density_maps=torch.stack(maps, 1) if return_maps else None,
            flow_log_det_maps=torch.stack(flow_maps, 1) if flow_maps else None,
        )

    def _to_input_grid(self, location_map: torch.Tensor, level: int) -> torch.Tensor:
        # Each location of scale `level` covers a block of 2**(level+1) input voxels per axis: spread its
        # value evenly over the block so that the map still sums to the scale's contribution.
        factor = 2 ** (level + 1)
        for axis in range(1, location_map.dim()):
            location_map = location_map.repeat_interleave(factor, dim=axis)
        return location_map / factor**self.spatial_dims

    def log_density_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location log-density of each scale, on the input grid.

        At scale i, each latent location gets the log-density of its channels under the prior (including
        the prior actnorm's log-det) plus the log-dets of scale i's steps at that location (coupling
        log-scales there, and the actnorm/1x1 conv log-det shared equally by all locations); its value is
        spread evenly over the ``2**(i+1)``-wide input block it comes from. Hence
        ``maps[:, i].sum(spatial) == contributions[:, i]`` and a 3D model gives a voxel map (and, summed
        over the first two spatial axes, a per-slice profile along the last one).

        Args:
            x: ``(N, C, *spatial)`` continuous input.

        Returns:
            ``(N, levels, *spatial)`` in nats per input voxel.
        """
        maps = self.forward(x, return_maps=True).log_density_maps
        assert maps is not None
        return maps

    def bits_per_dim(self, x: torch.Tensor, n_bins: int = N_BINS) -> torch.Tensor:
        """``(N,)`` bits/dim of the quantised data, ``(-log p(x) + D ln n_bins) / (D ln 2)``, for the dequantised ``x``."""
        return discrete_bits_per_dim(self.forward(x).log_prob, self.num_dims(x.shape[2:]), n_bins)

    # --- generation ---

    def inverse(self, z: Sequence[torch.Tensor]) -> torch.Tensor:
        """Rebuild ``x`` from the standardised latents (as in :attr:`GlowOutput.z`).

        Args:
            z: ``levels`` tensors ``(N, C_i, *spatial_i)``.

        Returns:
            ``(N, C, *spatial)``.

        Raises:
            ValueError: wrong number of latents or shapes.
        """
        if len(z) != self.levels:
            raise ValueError(f"z must hold one latent per scale ({self.levels}), got {len(z)}")
        self._check_initialized()
        h: torch.Tensor | None = None
        for level in reversed(range(self.levels)):
            latent = self.priors[level].inverse(z[level])
            if h is not None and h.shape[2:] != latent.shape[2:]:
                raise ValueError(
                    f"z[{level}] has spatial shape {tuple(latent.shape[2:])}, expected {tuple(h.shape[2:])}"
                )
            h = latent if h is None else torch.cat([latent, h], 1)
            h = unsqueeze(self.chains[level].inverse(h), self.spatial_dims)
        assert h is not None
        return h

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``n`` samples at the spatial size the model was initialised on.

        Args:
            n: number of samples.
            temperature: std of the standardised latents (< 1 gives smoother, more typical samples).
            generator: optional RNG.

        Returns:
            ``(n, C, *spatial)`` continuous samples (dequantised scale: about [0, 1]).
        """
        self._check_initialized()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        param = self.priors[0].log_scale
        size = [int(s) for s in self.input_size]
        z = []
        for level, channels in enumerate(self.latent_channels):
            shape = (n, channels, *(s // 2 ** (level + 1) for s in size))
            z.append(
                torch.randn(shape, generator=generator, dtype=param.dtype, device=param.device) * temperature
            )
        return self.inverse(z)

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}, levels={self.levels}, "
            f"steps={self.steps}, hidden_channels={self.hidden_channels}, coupling={self.coupling!r}, "
            f"prior={self.prior!r}, memory_efficient={self.memory_efficient}"
        )
