"""``latent-norm-ae``: the latent-norm ("targeted collapse", Toll) autoencoder of Ghafourian et al.

One phase, ``"train"``, minimising the batch mean of ``‖x − x̂‖₂ + β‖z‖₂``. Scores ``latent_norm`` (the
same expression per sample, with the residual taken over brain voxels only, :mod:`mri_anomaly.scoring.brain`)
and the voxel map ``residual`` (averaged over channels): ``|x − x̂|`` by default; ``residual: positive`` keeps
``max(x − x̂, 0)``, voxels brighter than the reconstruction, for contrasts whose lesions are hyperintense
(FLAIR: MS plaques, tumour oedema; DWI: acute stroke), as in Baur et al.'s comparison (MedIA 2021).
Measured on the demo's test scans (FLAIR, trained model of the first detection benchmark, maps restricted
to the brain minus 8 mm): volume AUROC of ``residual_q999`` 0.512 with ``|x − x̂|`` and 0.727 with the positive
part, voxel AP 0.109 and 0.568. ``negative`` is for hypointense lesions (T1).

β: for our [0, 1] inputs the default ``beta = 1.0`` is meant for 40×48 slices. Measured on the demo
cohort's slices (``latent_dim`` 32, channels 16/32/64, 150 Adam steps at 1e-3, batch 32): ‖x − x̂‖₂ ≈ 6,
and ‖z‖₂ ≈ 17.6 without the penalty (β = 0) but ≈ 1.0 with β = 1, i.e. β = 1 already collapses the codes
while leaving the reconstruction term dominant in the score. On volumes ‖x − x̂‖₂ is ~√(number of
slices) times larger (≈ 6× for 40 slices), so β must grow by that factor for the same balance
(``configs/latent-norm-ae-3d.yaml`` uses 6). See :mod:`mri_anomaly.models.latent_norm`.
"""

from __future__ import annotations

import torch

from mri_anomaly.models import LatentNormAutoEncoder
from mri_anomaly.models.latent_norm import latent_norm_score
from mri_anomaly.scoring.brain import brain_mask
from mri_anomaly.training.methods.base import (
    AnomalyMethod,
    Batch,
    BatchScores,
    batch_images,
    encoder_grid_divisor,
    register_method,
)

__all__ = ["LatentNormMethod", "RESIDUAL_SIGNS"]

RESIDUAL_SIGNS = ("absolute", "positive", "negative")


@register_method
class LatentNormMethod(AnomalyMethod):
    """Latent-norm autoencoder as an :class:`AnomalyMethod`.

    Args:
        spatial_dims: 2 (slices (N, C, H, W)) or 3 (volumes (N, C, H, W, D)); sizes divisible by
            ``2 ** len(channels)``.
        in_channels: image channels.
        latent_dim: size of the code z.
        beta: weight of ``‖z‖₂`` (>= 0).
        channels, kernel_size, pooled_size, negative_slope: of the bias-free encoder/decoder.
        residual: the voxel map: ``"absolute"`` ``|x − x̂|``, ``"positive"`` ``max(x − x̂, 0)`` (hyperintense
            lesions) or ``"negative"`` ``max(x̂ − x, 0)`` (hypointense lesions). The score is unchanged.

    Raises:
        ValueError: for an argument out of range, naming it.
    """

    name = "latent-norm-ae"
    phases = ("train",)
    score_names = ("latent_norm",)
    map_names = ("residual",)

    grid_divisor = classmethod(encoder_grid_divisor)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        latent_dim: int = 32,
        beta: float = 1.0,
        channels: list[int] | tuple[int, ...] = (16, 32, 64),
        kernel_size: int = 3,
        pooled_size: int | list[int] = 4,
        negative_slope: float = 0.01,
        residual: str = "absolute",
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        if residual not in RESIDUAL_SIGNS:
            raise ValueError(f"residual must be one of {RESIDUAL_SIGNS}, got {residual!r}")
        self.residual = residual
        self.net = LatentNormAutoEncoder(
            spatial_dims,
            in_channels,
            latent_dim,
            beta=beta,
            channels=tuple(channels),
            kernel_size=kernel_size,
            pooled_size=pooled_size,
            negative_slope=negative_slope,
        )

    def _images(self, batch: Batch) -> torch.Tensor:
        return batch_images(batch, self.spatial_dims, self.in_channels, next(self.net.parameters()).device)

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """Batch mean of ``‖x − x̂‖₂ + β‖z‖₂``."""
        self.check_phase(phase)
        return self.net.loss(self._images(batch))

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        """``latent_norm`` (N,) and the map ``residual`` (N, 1, *spatial)."""
        x = self._images(batch)
        was_training = self.net.training
        self.net.eval()
        try:
            x_hat, z = self.net(x)
        finally:
            self.net.train(was_training)
        brain = brain_mask(x).to(x.dtype)
        score = latent_norm_score(x * brain, x_hat * brain, z, self.net.beta)
        difference = x - x_hat
        if self.residual == "absolute":
            difference = difference.abs()
        elif self.residual == "positive":
            difference = difference.clamp_min(0.0)
        else:
            difference = (-difference).clamp_min(0.0)
        return BatchScores(
            scores={"latent_norm": score}, maps={"residual": difference.mean(dim=1, keepdim=True)}
        )

    def extra_repr(self) -> str:
        return f"beta={self.net.beta}, residual={self.residual!r}"
