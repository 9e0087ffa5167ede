"""``latent-norm-ae``: the latent-norm ("targeted collapse", Toll) autoencoder of Ghafourian et al.

One phase, ``"train"``, minimising the batch mean of ``‖x − x̂‖₂ + β‖z‖₂``. Scores ``latent_norm`` (the
same expression per sample, with the residual taken over brain voxels only, :mod:`mri_anomaly.scoring.brain`)
and the voxel map ``residual`` (averaged over channels): ``|x − x̂|`` by default; ``residual: positive`` keeps
``max(x − x̂, 0)``, voxels brighter than the reconstruction, for contrasts whose lesions are hyperintense
(FLAIR: MS plaques, tumour oedema; DWI: acute stroke), as in Baur et al.'s comparison (MedIA 2021).
Measured on the demo's test scans (FLAIR, trained model of the first detection benchmark, maps restricted
to the brain minus 8 mm): volume AUROC of ``residual_q999`` 0.512 with ``|x − x̂|`` and 0.727 with the positive
part, voxel AP 0.109 and 0.568. ``negative`` is for hypointense lesions (T1).

``residual_tolerance_mm`` compares each voxel with the reconstruction's range over a box of that radius
around it (in the slice for 2D, in the volume for 3D): ``max(x − max_box x̂, 0)`` for the positive part,
``max(min_box x̂ − x, 0)`` for the negative one. A reconstruction that draws an edge a few millimetres off
(ventricles, sulci: the code is 32 numbers for a whole slice) then leaves no residual along it, while a
lesion brighter than every healthy voxel nearby keeps its own. Measured on the demo's test scans, the
2D FLAIR model's three seeds: ``residual_top200mm3`` 0.914 / 0.819 / 0.648 voxel by voxel, 0.927 / 0.920 /
0.826 at 8 mm when trained with Adam at 1e-3; 0.906 / 0.898 / 0.908 and 0.918 / 0.931 / 0.927 at the shipped
3e-4 (``docs/benchmarks/residual_tolerance.md``). The price: the map ranks scans more like the image's
intensity does (Spearman 0.93 → 0.97 at seed 0; the 3D model's 0.90 → 1.00), so it can approach
thresholding but not pass it.
With several contrasts the map is the channels' mean. On the two-contrast demo (FLAIR + T1, three seeds,
``docs/benchmarks/residual_tolerance-multicontrast.md``) ``|x − x̂|`` ranked scans at 0.52–0.63 whatever the
tolerance (both channels' negative side, x̂ above dark CSF and sulci, is as high in healthy scans as in
anomalous ones); positive at 8 mm 0.933–0.949: the shipped two-contrast config's setting.

β: for our [0, 1] inputs the default ``beta = 1.0`` is meant for 40×48 slices. Measured on the demo
cohort's slices (``latent_dim`` 32, channels 16/32/64, 150 Adam steps at 1e-3, batch 32): ‖x − x̂‖₂ ≈ 6,
and ‖z‖₂ ≈ 17.6 without the penalty (β = 0) but ≈ 1.0 with β = 1, i.e. β = 1 already collapses the codes
while leaving the reconstruction term dominant in the score. On volumes ‖x − x̂‖₂ is ~√(number of
slices) times larger (≈ 6× for 40 slices), so β must grow by that factor for the same balance
(``configs/latent-norm-ae-3d.yaml`` uses 6). See :mod:`mri_anomaly.models.latent_norm`.

``input_noise_std`` > 0 trains it as a denoising autoencoder with coarse noise (Kascenas et al., MIDL 2022):
the encoder sees ``x + n`` inside the brain, ``n`` Gaussian noise of that standard deviation drawn on a grid of
``input_noise_mm`` cells and upsampled (a blob the size of a lesion, not a voxel's speckle), and the loss
compares x̂ with the clean ``x``; the model learns to put healthy tissue where a blob of wrong intensity was.
Scoring never adds noise. The noise comes from torch's global generator, which checkpoints keep, so
``--resume`` stays exact. Off (0) in the shipped configs: on the demo's three seeds it gains nothing at the shipped
8 mm tolerance (volume AUROC 0.855 with 16 mm cells, 0.842 with 8 mm, against 0.859) and nothing on the lesions
within the healthy intensity range (``docs/benchmarks/denoising_ae.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

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

__all__ = ["LatentNormMethod", "RESIDUAL_SIGNS", "coarse_noise", "signed_residual"]

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
        residual_tolerance_mm: radius in mm of the box the map compares each voxel's reconstruction over
            (0: voxel by voxel); rounded to whole voxels of the model grid per axis.
        model_spacing: the model grid's voxel size in mm (from the config's ``preprocessing.spacing``).
        input_noise_std: standard deviation of the coarse noise added to the training inputs inside the brain
            (0: a plain autoencoder); the loss compares x̂ with the clean input.
        input_noise_mm: cell size in mm of the grid that noise is drawn on (rounded to whole voxels, >= 1).
        slice_context: 2D only: neighbouring slices on each side the input stacks as channels (the config's
            ``slices.context``, :func:`~mri_anomaly.data.slice_stacks`): the network sees
            ``in_channels · (2·slice_context + 1)`` channels and reconstructs the centre slice's ``in_channels``,
            which loss, score and map compare against (2.5D). 0: plain slices.

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
        residual_tolerance_mm: float = 0.0,
        model_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        input_noise_std: float = 0.0,
        input_noise_mm: float = 16.0,
        slice_context: int = 0,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        if isinstance(slice_context, bool) or int(slice_context) != slice_context or slice_context < 0:
            raise ValueError(f"slice_context must be a whole number >= 0, got {slice_context!r}")
        if slice_context and spatial_dims != 2:
            raise ValueError(
                f"slice_context is for 2D slices (spatial_dims 2), got spatial_dims {spatial_dims}"
            )
        self.slice_context = int(slice_context)
        if not input_noise_std >= 0:
            raise ValueError(f"input_noise_std must be >= 0, got {input_noise_std}")
        if not input_noise_mm > 0:
            raise ValueError(f"input_noise_mm must be > 0, got {input_noise_mm}")
        if residual not in RESIDUAL_SIGNS:
            raise ValueError(f"residual must be one of {RESIDUAL_SIGNS}, got {residual!r}")
        if not residual_tolerance_mm >= 0:
            raise ValueError(f"residual_tolerance_mm must be >= 0, got {residual_tolerance_mm}")
        if len(model_spacing) != 3 or not all(float(s) > 0 for s in model_spacing):
            raise ValueError(f"model_spacing must be three positive sizes in mm, got {tuple(model_spacing)}")
        self.residual = residual
        self.residual_tolerance_mm = float(residual_tolerance_mm)
        # 2D slices are axial: their (H, W) are the volume's first two axes.
        self.residual_tolerance = tuple(
            int(round(self.residual_tolerance_mm / float(s))) for s in model_spacing[:spatial_dims]
        )
        self.input_noise_std = float(input_noise_std)
        self.input_noise_mm = float(input_noise_mm)
        self.input_noise_cells = tuple(
            max(1, int(round(self.input_noise_mm / float(s)))) for s in model_spacing[:spatial_dims]
        )
        self.net = LatentNormAutoEncoder(
            spatial_dims,
            in_channels * (2 * self.slice_context + 1),
            latent_dim,
            beta=beta,
            channels=tuple(channels),
            kernel_size=kernel_size,
            pooled_size=pooled_size,
            negative_slope=negative_slope,
            out_channels=in_channels,
        )

    def _images(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's slices with their neighbours (N, C·(2r+1), *spatial) and the centre slice (N, C, *spatial),
        the target."""
        channels = self.in_channels * (2 * self.slice_context + 1)
        try:
            x = batch_images(batch, self.spatial_dims, channels, next(self.net.parameters()).device)
        except ValueError as err:
            if not self.slice_context:
                raise
            raise ValueError(
                f"{err} (slice_context {self.slice_context}: each slice with its neighbours, "
                f"{self.in_channels} channel(s) x {2 * self.slice_context + 1} slices, as slice_stacks builds them)"
            ) from err
        first = self.slice_context * self.in_channels
        return x, x[:, first : first + self.in_channels]

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """Batch mean of ``‖x − x̂‖₂ + β‖z‖₂``; x̂ and z from the noisy input when ``input_noise_std`` > 0."""
        self.check_phase(phase)
        x, target = self._images(batch)
        if self.input_noise_std == 0:
            return self.net.loss(x, target)
        x_hat, z = self.net(self.noisy_input(x))
        return latent_norm_score(target, x_hat, z, self.net.beta).mean()

    def noisy_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, *spatial) with coarse noise of ``input_noise_std`` added inside its brain (``x`` itself at 0)."""
        if self.input_noise_std == 0:
            return x
        noise = coarse_noise(x.shape, self.input_noise_cells, self.input_noise_std, x.dtype, x.device)
        return x + noise * brain_mask(x).to(x.dtype)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂ (N, C, *spatial) of the network input ``x`` and its code z (N, latent_dim): what scoring compares."""
        return self.net(x)

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        """``latent_norm`` (N,) and the map ``residual`` (N, 1, *spatial), of the centre slice with ``slice_context``."""
        x, target = self._images(batch)
        was_training = self.net.training
        self.net.eval()
        try:
            x_hat, z = self.reconstruct(x)
        finally:
            self.net.train(was_training)
        brain = brain_mask(target).to(x.dtype)
        score = latent_norm_score(target * brain, x_hat * brain, z, self.net.beta)
        difference = signed_residual(target, x_hat, self.residual, self.residual_tolerance)
        return BatchScores(
            scores={"latent_norm": score}, maps={"residual": difference.mean(dim=1, keepdim=True)}
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.net.beta}, residual={self.residual!r}, residual_tolerance_mm={self.residual_tolerance_mm}, "
            f"input_noise_std={self.input_noise_std}, input_noise_mm={self.input_noise_mm}, "
            f"slice_context={self.slice_context}"
        )


def coarse_noise(
    shape: Sequence[int],
    cells: Sequence[int],
    std: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Gaussian noise of ``shape`` (N, C, *spatial): drawn with standard deviation ``std`` on a grid ``cells`` voxels
    coarser per spatial axis (``ceil(size / cell)`` points) and upsampled to ``shape`` (bilinear / trilinear, corners
    not aligned); from torch's global generator."""
    spatial = tuple(int(n) for n in shape[2:])
    if len(cells) != len(spatial) or len(spatial) not in (2, 3):
        raise ValueError(
            f"cells needs one size per spatial axis (2 or 3), got {tuple(cells)} for {tuple(shape)}"
        )
    coarse = tuple(max(1, math.ceil(n / int(c))) for n, c in zip(spatial, cells))
    noise = torch.randn(int(shape[0]), int(shape[1]), *coarse, dtype=dtype, device=device) * std
    if coarse == spatial:
        return noise
    return F.interpolate(
        noise, size=spatial, mode="bilinear" if len(spatial) == 2 else "trilinear", align_corners=False
    )


def signed_residual(
    x: torch.Tensor, x_hat: torch.Tensor, sign: str, tolerance: Sequence[int] | None = None
) -> torch.Tensor:
    """The residual map of ``x`` (N, C, *spatial) against its reconstruction ``x_hat`` (same shape).

    ``sign``: ``"positive"`` ``max(x − hi, 0)``, ``"negative"`` ``max(lo − x, 0)``, ``"absolute"`` their sum
    (one of the two is 0 wherever ``lo <= hi``), where ``hi`` / ``lo`` are the maximum / minimum of ``x_hat``
    over a box of ``tolerance`` voxels' radius per spatial axis (``x_hat`` itself for radius 0 or ``None``).
    """
    if sign not in RESIDUAL_SIGNS:
        raise ValueError(f"residual must be one of {RESIDUAL_SIGNS}, got {sign!r}")
    radius = tuple(tolerance or (0,) * (x.ndim - 2))
    if len(radius) != x.ndim - 2:
        raise ValueError(f"tolerance needs one radius per spatial axis ({x.ndim - 2}), got {radius}")
    hi = lo = x_hat
    if any(radius):
        pool = torch.nn.functional.max_pool2d if x.ndim == 4 else torch.nn.functional.max_pool3d
        kernel = tuple(2 * r + 1 for r in radius)
        hi = pool(x_hat, kernel, stride=1, padding=radius)
        lo = -pool(-x_hat, kernel, stride=1, padding=radius)
    positive = (x - hi).clamp_min(0.0)
    negative = (lo - x).clamp_min(0.0)
    if sign == "positive":
        return positive
    if sign == "negative":
        return negative
    return positive + negative
