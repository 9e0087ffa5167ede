"""Bias-free convolutional encoder, its mirrored decoder and the autoencoder made of both, in 2D and 3D.

"Bias-free" is what keeps Deep SVDD/SAD from collapsing (Ruff et al. 2018, Prop. 2): with a bias anywhere
(including an affine BatchNorm) the network can map every input to the centre c and reach zero loss.
So every convolution and linear layer has ``bias=False``, every BatchNorm has ``affine=False``, and the
activation is LeakyReLU (unbounded, Prop. 3). The decoder follows the same rules, as in the reference code,
so that the same encoder class serves Deep SAD pretraining and the latent-norm autoencoder.

The encoder has ``len(channels)`` levels of ``conv - BatchNorm - LeakyReLU - max-pool 2``, then an adaptive
average pool to a fixed ``pooled_size`` grid and a linear map to the embedding; the adaptive pool makes
the network independent of the input size (any size divisible by ``2 ** len(channels)``). With
``patch=True`` the pool and linear map are replaced by a bias-free 1×1 convolution: one embedding per cell of
the last level's grid (a patch of ``2 ** len(channels)`` voxels per axis with a wider receptive field), and
the decoder starts from that map of codes (patch-wise Deep SVDD/SAD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Norm, Pool
from torch import nn
from torch.nn import functional as F

__all__ = ["BiasFreeEncoder", "BiasFreeDecoder", "BiasFreeAutoEncoder", "check_image_batch"]


def _as_tuple(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims or any(v < 1 for v in value):
        raise ValueError(f"{name} must be a positive int or {spatial_dims} positive ints, got {value}")
    return value


def _check_common(spatial_dims: int, channels: Sequence[int], kernel_size: int) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    channels = tuple(int(c) for c in channels)
    if not channels or any(c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd int (so padding keeps the size), got {kernel_size}"
        )
    return channels


def check_image_batch(
    x: torch.Tensor, spatial_dims: int, in_channels: int, divisor: int, name: str = "x"
) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(N, in_channels, *spatial)`` with ``spatial_dims`` sizes divisible by ``divisor``.

    Raises:
        ValueError: naming ``name`` and what is wrong with its shape.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{name} must have shape (N, C, {'H, W' if spatial_dims == 2 else 'H, W, D'}) for spatial_dims="
            f"{spatial_dims}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(f"{name} must have {in_channels} channel(s), got shape {tuple(x.shape)}")
    if any(s % divisor for s in x.shape[2:]):
        raise ValueError(
            f"{name} spatial sizes must be divisible by {divisor} (2 ** number of levels), got {tuple(x.shape[2:])}"
        )


class BiasFreeEncoder(nn.Module):
    """Bias-free convolutional encoder ``(N, C, H, W[, D]) -> (N, out_features)``.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels: input channels C.
        out_features: size of the embedding.
        channels: output channels of each level; each level halves the spatial size.
        kernel_size: odd convolution kernel size.
        pooled_size: grid (int or one per spatial dim) of the adaptive average pool before the linear map.
        negative_slope: LeakyReLU slope.
        norm_eps: BatchNorm epsilon (1e-4 as in the Deep SAD reference).
        patch: no pool and linear map but a 1×1 convolution: ``(N, C, *spatial) -> (N, out_features, *grid)``
            with ``grid = spatial / 2 ** len(channels)`` (``pooled_size`` is then unused).

    Raises:
        ValueError: for an invalid argument, naming it.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_features: int,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        pooled_size: int | Sequence[int] = 4,
        negative_slope: float = 0.01,
        norm_eps: float = 1e-4,
        patch: bool = False,
    ) -> None:
        super().__init__()
        channels = _check_common(spatial_dims, channels, kernel_size)
        if in_channels < 1 or out_features < 1:
            raise ValueError(
                f"in_channels and out_features must be positive, got {in_channels}, {out_features}"
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_features = out_features
        self.channels = channels
        self.pooled_size = _as_tuple(pooled_size, spatial_dims, "pooled_size")
        conv_type = Conv[Conv.CONV, spatial_dims]
        norm_type = Norm[Norm.BATCH, spatial_dims]
        pool_type = Pool[Pool.MAX, spatial_dims]
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [
                conv_type(previous, width, kernel_size, padding=kernel_size // 2, bias=False),
                norm_type(width, eps=norm_eps, affine=False),
                nn.LeakyReLU(negative_slope),
                pool_type(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.patch = bool(patch)
        if self.patch:
            self.fc = conv_type(channels[-1], out_features, 1, bias=False)
        else:
            self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](self.pooled_size)
            self.fc = nn.Linear(channels[-1] * math.prod(self.pooled_size), out_features, bias=False)

    @property
    def size_divisor(self) -> int:
        """Input spatial sizes must be multiples of this (``2 ** len(channels)``)."""
        return 2 ** len(self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W[, D]) -> embedding (N, out_features), or (N, out_features, *grid) with ``patch``."""
        check_image_batch(x, self.spatial_dims, self.in_channels, self.size_divisor)
        if self.patch:
            return self.fc(self.features(x))
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class BiasFreeDecoder(nn.Module):
    """Bias-free decoder mirroring :class:`BiasFreeEncoder`: ``(N, in_features) -> (N, C, H, W[, D])`` in [0, 1].

    A linear map to ``channels[-1]`` maps on the ``pooled_size`` grid, (bi/tri)linear resizing to
    ``spatial_size / 2 ** len(channels)``, then per level (deepest first) nearest ×2 upsampling,
    ``conv - BatchNorm - LeakyReLU``, and a last convolution to ``out_channels`` with a sigmoid.

    Args:
        spatial_dims: 2 or 3.
        out_channels: image channels C.
        in_features: size of the code.
        channels: the encoder's ``channels`` (encoder order).
        kernel_size, pooled_size, negative_slope, norm_eps: as in :class:`BiasFreeEncoder`.
        with_bias: biases and affine BatchNorm in every layer and **no** BatchNorm right after the code's
            linear map. The bias-free default (Deep SAD's pretraining, Ruff et al.) normalises that map's output
            per channel, so its output does not depend on the scale of the code z; an autoencoder whose loss
            penalises ‖z‖ (the latent-norm autoencoder) would then shrink z for free.
        patch: the code is a map ``(N, in_features, *grid)`` (:class:`BiasFreeEncoder` with ``patch``), taken to
            ``channels[-1]`` maps by a 1×1 convolution; ``grid`` must be ``spatial_size / 2 ** len(channels)``.

    Raises:
        ValueError: for an invalid argument, naming it.
    """

    def __init__(
        self,
        spatial_dims: int,
        out_channels: int,
        in_features: int,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        pooled_size: int | Sequence[int] = 4,
        negative_slope: float = 0.01,
        norm_eps: float = 1e-4,
        with_bias: bool = False,
        patch: bool = False,
    ) -> None:
        super().__init__()
        channels = _check_common(spatial_dims, channels, kernel_size)
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.pooled_size = _as_tuple(pooled_size, spatial_dims, "pooled_size")
        self.patch = bool(patch)
        conv_type = Conv[Conv.CONV, spatial_dims]
        norm_type = Norm[Norm.BATCH, spatial_dims]
        if self.patch:
            self.fc = conv_type(in_features, channels[-1], 1, bias=with_bias)
        else:
            self.fc = nn.Linear(in_features, channels[-1] * math.prod(self.pooled_size), bias=with_bias)
        self.fc_norm = nn.Identity() if with_bias else norm_type(channels[-1], eps=norm_eps, affine=False)
        self.act = nn.LeakyReLU(negative_slope)
        self.levels = nn.ModuleList()
        for level in reversed(range(len(channels))):
            width_out = channels[level - 1] if level > 0 else channels[0]
            self.levels.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    conv_type(
                        channels[level], width_out, kernel_size, padding=kernel_size // 2, bias=with_bias
                    ),
                    norm_type(width_out, eps=norm_eps, affine=with_bias),
                    nn.LeakyReLU(negative_slope),
                )
            )
        self.head = conv_type(
            channels[0], out_channels, kernel_size, padding=kernel_size // 2, bias=with_bias
        )
        self._resize_mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, z: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """``z`` (N, in_features) (``patch``: (N, in_features, *grid)) -> image (N, out_channels, *spatial_size)
        with values in (0, 1)."""
        divisor = 2 ** len(self.channels)
        if len(spatial_size) != self.spatial_dims or any(int(s) % divisor for s in spatial_size):
            raise ValueError(
                f"spatial_size must be {self.spatial_dims} sizes divisible by {divisor}, got {spatial_size}"
            )
        coarse = tuple(int(s) // divisor for s in spatial_size)
        if self.patch:
            if tuple(z.shape[2:]) != coarse:
                raise ValueError(
                    f"a patch code for spatial_size {tuple(spatial_size)} must have the grid {coarse}, "
                    f"got shape {tuple(z.shape)}"
                )
            h = self.fc(z)
        else:
            h = self.fc(z).view(z.shape[0], self.channels[-1], *self.pooled_size)
        h = self.act(self.fc_norm(h))
        if not self.patch and coarse != self.pooled_size:
            h = F.interpolate(h, size=coarse, mode=self._resize_mode, align_corners=False)
        for level in self.levels:
            h = level(h)
        return torch.sigmoid(self.head(h))


class BiasFreeAutoEncoder(nn.Module):
    """:class:`BiasFreeEncoder` + :class:`BiasFreeDecoder`: ``x (N, C, H, W[, D]) -> (x_hat, z)``.

    ``x_hat`` has the shape of ``x`` with ``out_channels`` channels (values in (0, 1)); ``z`` is (N, latent_dim).
    Used to pretrain the Deep SAD encoder and as the network of the latent-norm autoencoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        latent_dim: size of the code z.
        channels, kernel_size, pooled_size, negative_slope, norm_eps: as in :class:`BiasFreeEncoder`.
        decoder_bias: the decoder's ``with_bias`` (:class:`BiasFreeDecoder`); the encoder stays bias-free.
        patch: a map of codes ``z`` (N, latent_dim, *grid) instead of one vector (see :class:`BiasFreeEncoder`).
        out_channels: channels of ``x_hat`` (default ``in_channels``); fewer when the input carries context the
            reconstruction leaves out (2.5D: neighbouring slices in, the centre slice out).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_dim: int,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        pooled_size: int | Sequence[int] = 4,
        negative_slope: float = 0.01,
        norm_eps: float = 1e-4,
        decoder_bias: bool = False,
        patch: bool = False,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else int(out_channels)
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        options = dict(
            channels=channels,
            kernel_size=kernel_size,
            pooled_size=pooled_size,
            negative_slope=negative_slope,
            norm_eps=norm_eps,
            patch=patch,
        )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_dim = latent_dim
        self.encoder = BiasFreeEncoder(spatial_dims, in_channels, latent_dim, **options)
        self.decoder = BiasFreeDecoder(
            spatial_dims, out_channels, latent_dim, with_bias=decoder_bias, **options
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, C, H, W[, D]) -> ``(x_hat, z)`` with ``x_hat`` (N, out_channels, H, W[, D]) and ``z``
        (N, latent_dim) (``patch``: (N, latent_dim, *grid))."""
        z = self.encoder(x)
        return self.decoder(z, x.shape[2:]), z
