"""Deep SAD (Ruff et al., ICLR 2020) and Deep SVDD (Ruff et al., ICML 2018): network, centre and losses.

The network φ is a :class:`~mri_anomaly.models.bias_free.BiasFreeEncoder`; the anomaly score is the squared
distance ``‖φ(x) − c‖²`` to a centre c that is computed once after autoencoder pretraining (mean embedding
in eval mode, coordinates with ``|c_k| < 0.1`` pushed to ±0.1) and then kept fixed as a buffer.

Two pitfalls of the reference code are handled here: the pretrained encoder weights are copied with a
strict ``load_state_dict`` between two modules of the same class (the reference matched no keys and kept
φ random), and the centre is a buffer, never a parameter (a trainable or zero centre lets φ collapse).

With ``patch=True`` φ embeds every cell of the encoder's last grid (a patch of ``2 ** len(channels)`` voxels per
axis, seen through a wider receptive field) and one centre c serves all cells: the per-cell squared distance
is a coarse anomaly map, the slice's (volume's) distance its brain-weighted mean over cells. Deep SVDD then
asks every healthy patch, not the whole slice, to sit near c: a focal lesion moves the embedding of the few
cells that hold it instead of being averaged into one vector of the whole slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from monai.networks.layers import Pool
from torch import nn

from mri_anomaly.models.bias_free import BiasFreeAutoEncoder, BiasFreeEncoder

__all__ = ["DeepSAD", "deep_sad_loss", "soft_boundary_loss", "soft_boundary_radius"]


def _check_dist(dist: torch.Tensor) -> None:
    if not isinstance(dist, torch.Tensor) or dist.ndim != 1:
        raise ValueError(
            f"dist must be a 1-D tensor of squared distances (N,), got {getattr(dist, 'shape', dist)}"
        )


def deep_sad_loss(
    dist: torch.Tensor,
    semi_target: torch.Tensor,
    eta: float = 1.0,
    eps: float = 1e-6,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deep SAD loss, the mean over the batch of per-sample terms (weighted mean with ``weight``).

    Per sample: ``dist`` if ``semi_target == 0`` (unlabelled), ``eta * (dist + eps) ** semi_target`` if
    ``semi_target`` is +1 (known normal: pulled in) or −1 (known anomaly: pushed out, the inverse distance).
    With all targets 0 it is the one-class Deep SVDD loss.

    Args:
        dist: (N,) squared distances ``‖φ(x) − c‖²``.
        semi_target: (N,) values in {−1, 0, +1}.
        eta: weight of the labelled terms, > 0.
        eps: added to the distance inside the power so the −1 term stays finite at c, > 0.
        weight: optional (N,) non-negative weights of the terms (the patch variant's brain fraction per cell).

    Returns:
        0-dim tensor.

    Raises:
        ValueError: if shapes disagree, a target is not in {−1, 0, 1}, or ``eta``/``eps`` are not positive.
    """
    _check_dist(dist)
    if eta <= 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    semi_target = torch.as_tensor(semi_target, device=dist.device)
    if semi_target.shape != dist.shape:
        raise ValueError(
            f"semi_target must have shape {tuple(dist.shape)} like dist, got {tuple(semi_target.shape)}"
        )
    if not bool(((semi_target == -1) | (semi_target == 0) | (semi_target == 1)).all()):
        raise ValueError(f"semi_target values must be -1, 0 or 1, got {semi_target.unique().tolist()}")
    semi_target = semi_target.to(dist.dtype)
    labelled = eta * (dist + eps) ** semi_target
    terms = torch.where(semi_target == 0, dist, labelled)
    if weight is None:
        return terms.mean()
    weight = torch.as_tensor(weight, device=dist.device, dtype=dist.dtype)
    if weight.shape != dist.shape or bool((weight < 0).any()):
        raise ValueError(
            f"weight must be non-negative with shape {tuple(dist.shape)} like dist, got {tuple(weight.shape)}"
        )
    return (terms * weight).sum() / weight.sum().clamp_min(torch.finfo(dist.dtype).tiny)


def soft_boundary_loss(dist: torch.Tensor, radius: torch.Tensor | float, nu: float) -> torch.Tensor:
    """Soft-boundary Deep SVDD loss ``R² + mean(max(0, dist − R²)) / nu`` (R is not optimised by gradient).

    Args:
        dist: (N,) squared distances.
        radius: the current radius R (0-dim tensor or float).
        nu: in (0, 1], the bound on the fraction of training samples outside the sphere.

    Raises:
        ValueError: if ``nu`` is outside (0, 1] or ``dist`` is not 1-D.
    """
    _check_dist(dist)
    if not 0 < nu <= 1:
        raise ValueError(f"nu must be in (0, 1], got {nu}")
    r2 = torch.as_tensor(radius, dtype=dist.dtype, device=dist.device).detach() ** 2
    return r2 + torch.clamp(dist - r2, min=0).mean() / nu


def soft_boundary_radius(dist: torch.Tensor, nu: float) -> torch.Tensor:
    """The radius that leaves a fraction ``nu`` of the batch outside: the (1 − nu)-quantile of ``sqrt(dist)``."""
    _check_dist(dist)
    if not 0 < nu <= 1:
        raise ValueError(f"nu must be in (0, 1], got {nu}")
    return torch.quantile(dist.detach().sqrt(), 1 - nu)


class DeepSAD(nn.Module):
    """Deep SAD / Deep SVDD network: bias-free encoder φ, fixed centre c, squared-distance score.

    Args:
        spatial_dims: 2 (slices, (N, C, H, W)) or 3 (volumes, (N, C, H, W, D)).
        in_channels: image channels C.
        rep_dim: embedding size.
        channels, kernel_size, pooled_size, negative_slope, norm_eps: of the
            :class:`~mri_anomaly.models.bias_free.BiasFreeEncoder` (and its autoencoder).
        patch: one embedding per cell of the encoder's last grid, one shared centre (module docstring).

    Buffers:
        ``center`` (rep_dim,): c, zero until :meth:`init_center`; ``center_initialized`` (bool);
        ``radius`` (0-dim): R of the soft-boundary variant (0 for one-class/semi-supervised).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        rep_dim: int = 32,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        pooled_size: int | Sequence[int] = 4,
        negative_slope: float = 0.01,
        norm_eps: float = 1e-4,
        patch: bool = False,
    ) -> None:
        super().__init__()
        self._options = dict(
            channels=tuple(channels),
            kernel_size=kernel_size,
            pooled_size=pooled_size,
            negative_slope=negative_slope,
            norm_eps=norm_eps,
            patch=bool(patch),
        )
        self.patch = bool(patch)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.rep_dim = rep_dim
        self.encoder = BiasFreeEncoder(spatial_dims, in_channels, rep_dim, **self._options)
        self.register_buffer("center", torch.zeros(rep_dim))
        self.register_buffer("center_initialized", torch.tensor(False))
        self.register_buffer("radius", torch.tensor(0.0))

    def autoencoder(self) -> BiasFreeAutoEncoder:
        """A new (untrained) autoencoder whose encoder has exactly this network's architecture."""
        return BiasFreeAutoEncoder(self.spatial_dims, self.in_channels, self.rep_dim, **self._options)

    def load_pretrained_encoder(self, autoencoder: BiasFreeAutoEncoder) -> None:
        """Copy every encoder tensor (weights and BatchNorm running statistics) of ``autoencoder`` into φ.

        Strict: a missing or unexpected key raises instead of silently keeping the random init.

        Raises:
            RuntimeError: if the architectures differ.
        """
        self.encoder.load_state_dict(autoencoder.encoder.state_dict(), strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W[, D]) -> embedding φ(x) (N, rep_dim) (``patch``: (N, rep_dim, *grid))."""
        return self.encoder(x)

    def cell_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``patch``: the brain fraction (voxels > 0 in any channel) of each cell of ``x``'s grid, (N, *grid)."""
        brain = (x > 0).any(dim=1, keepdim=True).to(x.dtype)
        divisor = self.encoder.size_divisor
        return Pool[Pool.AVG, self.spatial_dims](divisor)(brain)[:, 0]

    def distance_map(self, x: torch.Tensor) -> torch.Tensor:
        """``patch``: squared distance of each cell's embedding to c, (N, *grid) (differentiable)."""
        if not self.patch:
            raise RuntimeError("distance_map needs patch=True (one embedding per cell)")
        center = self.center.view(1, -1, *([1] * self.spatial_dims))
        return ((self.encoder(x) - center) ** 2).sum(dim=1)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Squared distance ``‖φ(x) − c‖²`` (N,) (differentiable; used by the losses). ``patch``: the mean of
        :meth:`distance_map` over the cells weighted by :meth:`cell_weights` (uniform for an image without brain)."""
        if not self.patch:
            return ((self.encoder(x) - self.center) ** 2).sum(dim=1)
        return self.cell_mean(self.distance_map(x), x)

    def cell_mean(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``patch``: the mean of per-cell ``values`` (N, *grid) of images ``x`` weighted by :meth:`cell_weights`
        (uniform for an image without brain), (N,)."""
        values = values.flatten(1)
        weight = self.cell_weights(x).flatten(1)
        weight = torch.where(weight.sum(dim=1, keepdim=True) > 0, weight, torch.ones_like(weight))
        return (values * weight).sum(dim=1) / weight.sum(dim=1)

    @torch.no_grad()
    def init_center(self, batches: Iterable[torch.Tensor], eps: float = 0.1) -> torch.Tensor:
        """Set c to the mean embedding of ``batches`` (each (N, C, H, W[, D])) in eval mode (``patch``: the mean
        over cells weighted by their brain fraction).

        Under ``torch.distributed`` the sums are all-reduced, so every rank gets the same centre.

        Coordinates with ``|c_k| < eps`` are pushed to ``±eps`` (sign kept, exact zeros to ``+eps``): a
        zero coordinate can be reached by a bias-free network with all-zero weights, i.e. collapse.
        The network's train/eval mode is restored afterwards.

        Returns:
            the centre (rep_dim,).

        Raises:
            ValueError: if ``batches`` is empty or ``eps`` is negative.
        """
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        was_training = self.training
        self.eval()
        total = torch.zeros(self.rep_dim, dtype=torch.float64, device=self.center.device)
        count = 0.0
        for x in batches:
            x = x.to(self.center.device)
            embedding = self.encoder(x).double()
            if self.patch:  # every cell counts by its brain fraction
                weight = self.cell_weights(x).double().unsqueeze(1)
                total += (embedding * weight).flatten(2).sum(dim=(0, 2))
                count += float(weight.sum())
            else:
                total += embedding.sum(dim=0)
                count += x.shape[0]
        self.train(was_training)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Under torchrun every rank sees its own batches: the centre is the mean over all of them.
            totals = torch.cat(
                [total, torch.tensor([float(count)], dtype=torch.float64, device=total.device)]
            )
            torch.distributed.all_reduce(totals)
            total, count = totals[:-1], float(totals[-1].item())
        if count == 0:
            raise ValueError(
                "batches is empty (or, with patch, has no brain voxel): the centre needs a training sample"
            )
        center = (total / count).to(self.center.dtype)
        small = center.abs() < eps
        center[small & (center < 0)] = -eps
        center[small & (center >= 0)] = eps
        self.center.copy_(center)
        self.center_initialized.fill_(True)
        return self.center.clone()

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score (N,): the squared distance to c (higher = more anomalous), in eval mode.

        Raises:
            RuntimeError: if the centre was never initialised.
        """
        if not torch.compiler.is_exporting() and not bool(self.center_initialized):  # checked before export
            raise RuntimeError("the centre c is not initialised: call init_center() after pretraining")
        was_training = self.training
        self.eval()
        try:
            return self.distance(x)
        finally:
            self.train(was_training)
