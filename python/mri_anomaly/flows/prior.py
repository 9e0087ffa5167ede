"""Unconditional latent prior of one Glow scale: an actnorm then N(0, I)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["LatentPrior", "PRIOR_TYPES"]

PRIOR_TYPES = ("per_dimension", "per_channel")

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class LatentPrior(nn.Module):
    """``u = exp(log_scale) * z + shift``, then ``u ~ N(0, I)``: the density of one scale's latent.

    Unconditional (it does not look at other scales' latents), so each scale's log-likelihood
    contribution is well defined (Schirrmeister et al. 2020): ``log p(z) = sum(log_scale) + log N(u; 0, I)``.

    ``per_dimension`` gives every latent dimension (channel and location) its own scale and bias, as in
    the paper; its parameters take their shape from the first :meth:`initialize` batch (or from a loaded
    checkpoint), so the model accepts one spatial size. ``per_channel`` shares them over locations and
    accepts any spatial size. The shift is applied after scaling, so an optimiser step moves ``u`` by the
    same amount whatever the dimension's scale (near-constant background dimensions get scales up to
    ``1 / min_std``; a bias added before the scale would make their loss jump at every step).

    Args:
        num_channels: C of the latent.
        spatial_dims: number of spatial axes of the latent.
        prior: ``"per_dimension"`` or ``"per_channel"``.
        min_std: floor on the std used by :meth:`initialize`, in latent units (the flow's actnorms make latents
            about unit scale). Dimensions that are near-constant in the init batch (MRI background, brain edges
            that happen to agree in a few volumes) would otherwise get scales of 1/std and make unseen volumes
            look extremely unlikely: on the demo cohort (3D, 8 init volumes) the held-out bits/dim right after
            init was 11.7 with a floor of 0.01 and 6.1 with 0.05.
        shrinkage: ``per_dimension`` only: a pseudo-count ``k`` of samples that pulls each dimension's init
            moments towards its channel's (pooled over locations): with ``n`` init samples the mean is
            ``w·mean_dim + (1 − w)·mean_channel`` and the log-std ``w·log std_dim + (1 − w)·log std_channel``,
            ``w = n / (n + k)``. A per-dimension prior initialised on a handful of scans is a voxel-wise atlas of
            those scans; shrinking it (James–Stein style) keeps it from calling every held-out healthy scan
            unlikely. 0: the unshrunk per-dimension moments (the paper); large ``k``: the per-channel prior.
            Training then fits the parameters by gradient as before. Measured on the demo (3D,
            ``docs/benchmarks/glow_prior.md``): shrinkage narrows the init-vs-held-out gap but *raises* held-out
            bits/dim at 8 and at 32 init scans (the per-location moments carry real anatomy), while initialising
            on 32 scans instead of 8 lowers it from 5.41 to 4.88 (on the smooth-anatomy cohort of before, 6.05 to
            5.45); so the default stays 0 and the 3D configs initialise on more scans.

    Raises:
        ValueError: unknown ``prior``, ``min_std <= 0`` or ``shrinkage < 0``.
    """

    def __init__(
        self,
        num_channels: int,
        spatial_dims: int,
        prior: str = "per_dimension",
        min_std: float = 0.05,
        shrinkage: float = 0.0,
    ) -> None:
        super().__init__()
        if prior not in PRIOR_TYPES:
            raise ValueError(f"prior must be one of {PRIOR_TYPES}, got {prior!r}")
        if not min_std > 0:
            raise ValueError(f"min_std must be > 0, got {min_std!r}")
        if not (math.isfinite(shrinkage) and shrinkage >= 0):
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage!r}")
        self.num_channels = num_channels
        self.spatial_dims = spatial_dims
        self.prior = prior
        self.min_std = float(min_std)
        self.shrinkage = float(shrinkage)
        shape = (num_channels,) + (1,) * spatial_dims if prior == "per_channel" else (0,)
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.shift = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def is_sized(self) -> bool:
        return self.log_scale.numel() > 0

    def _resize(self, shape: tuple[int, ...]) -> None:
        # Replace .data, not the Parameter, so an optimiser built before sizing still holds these tensors.
        self.log_scale.data = torch.zeros(shape, dtype=self.log_scale.dtype, device=self.log_scale.device)
        self.shift.data = torch.zeros(shape, dtype=self.shift.dtype, device=self.shift.device)

    def _check(self, z: torch.Tensor, name: str) -> None:
        if z.dim() != self.spatial_dims + 2 or z.shape[1] != self.num_channels:
            raise ValueError(
                f"{name} must have shape (N, {self.num_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(z.shape)}"
            )
        if not torch.compiler.is_exporting() and not bool(self.initialized):  # checked before export
            raise RuntimeError(
                "LatentPrior is not initialised: call Glow.initialize(batch) before using the model"
            )
        if self.prior == "per_dimension" and tuple(z.shape[1:]) != tuple(self.log_scale.shape):
            raise ValueError(
                f"{name} has latent shape {tuple(z.shape[1:])} but this per-dimension prior was initialised for "
                f"{tuple(self.log_scale.shape)}: the model accepts inputs of the spatial size it was initialised on "
                "(use prior='per_channel' for varying sizes)"
            )

    @torch.no_grad()
    def initialize(self, z: torch.Tensor, force: bool = False) -> bool:
        """Data-dependent init: afterwards ``u`` has zero mean and unit std per dimension (or channel).

        Moments in float64, all-reduced over ``torch.distributed`` when it is initialised. Does nothing
        when already initialised (e.g. after a checkpoint load) unless ``force``.

        Args:
            z: ``(N, C, *spatial)`` latents of this scale.

        Returns:
            Whether the parameters were (re)initialised.
        """
        if bool(self.initialized) and not force:
            return False
        if z.dim() != self.spatial_dims + 2 or z.shape[1] != self.num_channels:
            raise ValueError(f"z must have shape (N, {self.num_channels}, *spatial), got {tuple(z.shape)}")
        z64 = z.detach().to(torch.float64)
        reduce_dims = (0,) if self.prior == "per_dimension" else (0, *range(2, z.dim()))
        count = torch.tensor(
            float(math.prod(z.shape[d] for d in reduce_dims)), dtype=torch.float64, device=z.device
        )
        moments = torch.stack([z64.sum(reduce_dims), (z64 * z64).sum(reduce_dims)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
            dist.all_reduce(count)
        mean = moments[0] / count
        var = (moments[1] / count - mean * mean).clamp_min(0.0)
        std = var.sqrt().clamp_min(self.min_std)
        if self.prior == "per_dimension" and self.shrinkage > 0:
            # the channel's moments pooled over locations (from the same sums, so also across ranks)
            locations = float(math.prod(z.shape[2:]))
            pooled = moments.flatten(2).sum(2) / (count * locations)  # (2, C)
            channel_mean = pooled[0]
            channel_std = (
                (pooled[1] - channel_mean * channel_mean).clamp_min(0.0).sqrt().clamp_min(self.min_std)
            )
            shape = (-1,) + (1,) * (z.dim() - 2)
            w = float(count) / (float(count) + self.shrinkage)
            mean = w * mean + (1 - w) * channel_mean.reshape(shape)
            std = torch.exp(w * std.log() + (1 - w) * channel_std.reshape(shape).log())
        if not bool(torch.isfinite(mean).all() & torch.isfinite(std).all()):
            raise ValueError("z has non-finite values; cannot initialise the latent prior from it")
        if self.prior == "per_dimension":
            self._resize(tuple(z.shape[1:]))
        else:
            mean, std = mean.reshape(self.log_scale.shape), std.reshape(self.log_scale.shape)
        self.shift.copy_(-mean / std)
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(True)
        return True

    def forward_with_log_prob_map(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``(N, C, *spatial)`` -> ``(u, log_prob_map)``, the log-density per location ``(N, *spatial)``
        (summed over channels; includes the actnorm log-determinant)."""
        self._check(z, "z")
        log_scale = self.log_scale.to(z.dtype)
        u = torch.exp(log_scale) * z + self.shift.to(z.dtype)
        density = log_scale - 0.5 * u * u - _HALF_LOG_2PI
        return u, density.sum(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``(N, C, *spatial)`` -> ``(u, log_prob)``: the standardised latent and ``log p(z)`` ``(N,)`` in nats."""
        u, log_prob_map = self.forward_with_log_prob_map(z)
        return u, log_prob_map.reshape(z.shape[0], -1).sum(1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Standardised latent ``u`` -> ``z = (u - shift) * exp(-log_scale)``."""
        self._check(u, "u")
        return (u - self.shift.to(u.dtype)) * torch.exp(-self.log_scale.to(u.dtype))

    def latent_shape(self) -> tuple[int, ...] | None:
        """``(C, *spatial)`` for a sized per-dimension prior, else None."""
        return tuple(self.log_scale.shape) if self.prior == "per_dimension" and self.is_sized else None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A per-dimension prior is sized by its data; size it from the checkpoint before loading.
        key = prefix + "log_scale"
        if (
            self.prior == "per_dimension"
            and key in state_dict
            and tuple(state_dict[key].shape) != tuple(self.log_scale.shape)
        ):
            self._resize(tuple(state_dict[key].shape))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"num_channels={self.num_channels}, prior={self.prior!r}, shape={tuple(self.log_scale.shape)}, "
            f"shrinkage={self.shrinkage}"
        )
