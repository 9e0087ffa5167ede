"""A peer for the benchmarks: the U-Net denoising autoencoder of Kascenas et al. (MIDL 2022).

Kascenas, Pugeault and O'Neil train a U-Net on healthy brain slices with coarse Gaussian noise added to the
brain (standard deviation 0.2 on a grid of 16-voxel cells of 128² slices) and the clean slice as the target of
an L2 loss; the residual ``|x − x̂|`` is the anomaly map. Their point: the skip connections keep healthy detail
sharp, so the residual is small everywhere but where the network replaced a blob of wrong intensity with healthy
tissue, and it beat the bottleneck autoencoders and VAEs of Baur et al.'s comparison on BraTS.

Here it is :class:`UNetDenoisingMethod` (``method: unet-dae``), registered when this module is imported: the
latent-norm method's training and scoring (its coarse noise, residual sign and tolerance, brain mask, 2D slices)
with a MONAI :class:`~monai.networks.nets.UNet` in place of the bottleneck autoencoder and the batch MSE as the
loss. The per-slice score ``latent_norm`` is then ``‖x − x̂‖₂`` over the brain (no code, so no latent term). It is
a benchmark peer, not a method of the package: ``benchmarks/denoising_ae.py --name unet_dae`` trains it beside the
latent-norm autoencoder, ``--variant NAME=method=unet-dae;model.input_noise_std=0.2``. The latent-norm config's
code keys (``latent_dim``, ``beta``, ``channels``, ...) are accepted and unused, so
the variant is the autoencoder's config with the method swapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from mri_anomaly.training.methods.base import Batch, register_method
from mri_anomaly.training.methods.latent_norm import LatentNormMethod
from torch import nn

__all__ = ["DenoisingUNet", "UNetDenoisingMethod"]


class DenoisingUNet(nn.Module):
    """A U-Net ``x (N, C_in, H, W) -> (x̂ (N, C_out, H, W), z (N, 0))``: the latent-norm network's interface with an
    empty code, so the latent-norm method's scoring runs unchanged (``beta`` 0)."""

    beta = 0.0

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        num_res_units: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.unet = UNet(
            spatial_dims,
            in_channels,
            out_channels,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=num_res_units,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.unet(x), x.new_zeros(x.shape[0], 0)


@register_method
class UNetDenoisingMethod(LatentNormMethod):
    """U-Net denoising autoencoder (Kascenas et al. 2022) as an :class:`AnomalyMethod`, for the benchmarks.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes); sizes divisible by ``2 ** (len(unet_channels) - 1)``.
        in_channels: image channels.
        unet_channels: the U-Net's feature channels per level (each level after the first halves every axis).
        num_res_units: residual units per level (MONAI ``UNet``).
        residual, residual_tolerance_mm, model_spacing, input_noise_std, input_noise_mm, slice_context: the
            latent-norm method's (:class:`~mri_anomaly.training.methods.latent_norm.LatentNormMethod`).
        latent_dim, beta, channels, kernel_size, pooled_size, negative_slope: the latent-norm config's code keys,
            accepted and unused (the U-Net has no code).
    """

    name = "unet-dae"

    @classmethod
    def grid_divisor(cls, model: dict[str, Any]) -> tuple[int, str]:
        levels = len(cls.model_argument(model, "unet_channels"))
        return 2 ** (
            levels - 1
        ), f"unet_channels has {levels} levels (each after the first halves every axis)"

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        unet_channels: Sequence[int] = (16, 32, 64, 128),
        num_res_units: int = 1,
        residual: str = "absolute",
        residual_tolerance_mm: float = 0.0,
        model_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        input_noise_std: float = 0.2,
        input_noise_mm: float = 16.0,
        slice_context: int = 0,
        latent_dim: Any = None,
        beta: Any = None,
        channels: Any = None,
        kernel_size: Any = None,
        pooled_size: Any = None,
        negative_slope: Any = None,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            residual=residual,
            residual_tolerance_mm=residual_tolerance_mm,
            model_spacing=model_spacing,
            input_noise_std=input_noise_std,
            input_noise_mm=input_noise_mm,
            slice_context=slice_context,
        )
        self.net = DenoisingUNet(
            spatial_dims,
            in_channels * (2 * self.slice_context + 1),
            in_channels,
            tuple(int(c) for c in unet_channels),
            int(num_res_units),
        )

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """Batch MSE of x̂ against the clean centre slice; x̂ from the input with coarse noise in the brain."""
        self.check_phase(phase)
        x, target = self._images(batch)
        x_hat, _ = self.net(self.noisy_input(x))
        return F.mse_loss(x_hat, target)
