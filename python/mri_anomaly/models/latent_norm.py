"""Latent-norm ("targeted collapse", Toll) autoencoder of Ghafourian et al. (arXiv 2306.12627).

Loss and anomaly score are the same per-sample expression, with plain (not squared) Euclidean norms:

    s(x) = ‖x − x̂‖₂ + β ‖z‖₂,      z = E(x), x̂ = D(z),

the reconstruction norm taken over all voxels of the sample. Training pulls the codes of normal data
towards the origin; unseen anomalies get larger codes and larger residuals. ``|x − x̂|`` is the voxel map.

β trades the two terms and its meaning depends on the input scale and size: for our [0, 1] inputs
‖x − x̂‖₂ grows like the square root of the number of voxels (a per-voxel error of 0.05 gives about 2.2 on
a 40×48 slice and 14 on a 40×48×40 volume), while ‖z‖₂ does not depend on the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mri_anomaly.models.bias_free import BiasFreeAutoEncoder

__all__ = ["LatentNormAutoEncoder", "latent_norm_score"]


def latent_norm_score(x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-sample ``‖x − x̂‖₂ + β‖z‖₂`` (N,); the training loss is its mean.

    Args:
        x: (N, C, H, W[, D]) input.
        x_hat: reconstruction, same shape as ``x``.
        z: (N, latent_dim) code.
        beta: weight of the latent norm, >= 0.

    Raises:
        ValueError: on mismatched shapes or a negative ``beta``.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat must have the shape of x {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    if z.ndim != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"z must have shape (N={x.shape[0]}, latent_dim), got {tuple(z.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    reconstruction = torch.linalg.vector_norm((x - x_hat).flatten(1), ord=2, dim=1)
    return reconstruction + beta * torch.linalg.vector_norm(z, ord=2, dim=1)


class LatentNormAutoEncoder(BiasFreeAutoEncoder):
    """Autoencoder trained with the latent-norm loss; scores and residual maps per sample.

    ``forward(x)`` returns ``(x_hat, z)``: ``x_hat`` (N, out_channels, H, W[, D]) in (0, 1), ``z`` (N, latent_dim).
    The reconstruction's target is ``x`` itself, or, with fewer ``out_channels``, the ``target`` passed to
    :meth:`loss` / :meth:`score_and_residual` (2.5D: the centre slice of a stack).

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels: image channels.
        latent_dim: size of the code z.
        beta: weight of ``‖z‖₂`` in loss and score (see the module docstring for its scale).
        out_channels: channels of ``x_hat`` (default ``in_channels``).
        channels, kernel_size, pooled_size, negative_slope, norm_eps: of the bias-free encoder and of the decoder
            (which has biases: see :class:`~mri_anomaly.models.BiasFreeDecoder`'s ``with_bias``).

    Raises:
        ValueError: for a negative ``beta`` or an invalid network argument.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        latent_dim: int = 32,
        beta: float = 1.0,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        pooled_size: int | Sequence[int] = 4,
        negative_slope: float = 0.01,
        norm_eps: float = 1e-4,
        out_channels: int | None = None,
    ) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        # The decoder has biases and no BatchNorm on the code's linear map: with the bias-free decoder x_hat did not
        # depend on the scale of z, so beta * ||z|| was minimised for free by shrinking one weight matrix.
        super().__init__(
            spatial_dims,
            in_channels,
            latent_dim,
            channels,
            kernel_size,
            pooled_size,
            negative_slope,
            norm_eps,
            decoder_bias=True,
            out_channels=out_channels,
        )
        self.beta = float(beta)

    def _target(self, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            if self.out_channels != self.in_channels:
                raise ValueError(
                    f"the model reconstructs {self.out_channels} of its {self.in_channels} input channels: pass target"
                )
            return x
        return target

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss (0-dim): the batch mean of :func:`latent_norm_score` (against ``target``, default ``x``)."""
        x_hat, z = self(x)
        return latent_norm_score(self._target(x, target), x_hat, z, self.beta).mean()

    @torch.no_grad()
    def score(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Anomaly score (N,) ``‖target − x̂‖₂ + β‖z‖₂`` in eval mode (``target`` default ``x``)."""
        return self.score_and_residual(x, target)[0]

    @torch.no_grad()
    def residual_map(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Voxel map ``|target − x̂|`` with the shape of ``x_hat``, in eval mode (``target`` default ``x``)."""
        return self.score_and_residual(x, target)[1]

    @torch.no_grad()
    def score_and_residual(
        self, x: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score (N,), |target − x̂| like x_hat)`` from one eval-mode forward pass (``target`` default ``x``)."""
        target = self._target(x, target)
        was_training = self.training
        self.eval()
        try:
            x_hat, z = self(x)
        finally:
            self.train(was_training)
        return latent_norm_score(target, x_hat, z, self.beta), (target - x_hat).abs()
