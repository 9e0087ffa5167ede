"""A peer for the benchmarks: a U-Net that inpaints each cell of a slice from the cells around it.

Why: the demo's volume and slice misses are the lesions within their scan's healthy intensity range
(``docs/benchmarks/ceilings.md``). A reconstruction that has seen the lesion can draw part of it back (the
latent-norm autoencoder's x̂, the U-Net denoiser's skip connections), and the 8 mm tolerance then hides what is
left. A model that never sees a voxel when predicting it cannot: it can only draw what the healthy surroundings
imply. That is the context-prediction idea of Zimmerer et al.'s context-encoding VAE (2019) and of the patched
diffusion models of Behrendt et al. (2023), here with a plain U-Net trained on the healthy slices.

:class:`InpaintingUNetMethod` (``method: unet-inpaint``, registered when this module is imported): the slice is
cut into cells of ``inpaint_cell_mm`` (rounded to whole voxels); one of four checkerboard phases of the cells (a
cell whose row and column parity match the phase) is set to 0 and marked in a second input channel, and the
U-Net (:class:`~unet_dae.DenoisingUNet`) predicts the slice. Training: a random phase and grid shift per slice
(torch's global generator, which checkpoints keep) and the MSE over the masked brain voxels. Scoring: the four
phases at shift 0, each keeping its masked cells' prediction, so x̂ of every voxel comes from a pass that did not
see its cell (the eight cells around a masked cell are never masked with it). The latent-norm method's map
follows (residual sign, tolerance; ``latent_norm`` is ``‖x − x̂‖₂`` over the brain, no code). 2D slices only.

It is a benchmark peer, not a method of the package: ``benchmarks/denoising_ae.py --name unet_inpaint
--variant NAME=method=unet-inpaint`` trains it from the latent-norm config with the method swapped (the
config's code keys are accepted and unused, as by ``unet-dae``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from mri_anomaly.scoring.brain import brain_mask
from mri_anomaly.training.methods.base import Batch, register_method

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unet_dae import DenoisingUNet, UNetDenoisingMethod  # noqa: E402

__all__ = ["InpaintingUNetMethod", "PHASES", "checkerboard_cells"]

PHASES = 4


def checkerboard_cells(
    shape: Sequence[int], cell: int, phase: torch.Tensor, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """The masked cells of one checkerboard phase per sample: (N, 1, H, W) of 0 / 1 for ``shape`` (N, C, H, W).

    Cells are ``cell`` voxels square; the cell of voxel (h, w) is ``((h + shift_h) // cell, (w + shift_w) //
    cell)``, masked when its (row % 2, column % 2) is ``divmod(phase, 2)``. ``phase`` (N,) in 0..3, ``shift`` (N, 2)
    (default 0). The four phases cover every voxel exactly once."""
    n, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
    shift = torch.zeros(n, 2, dtype=torch.long) if shift is None else shift.long()
    rows = torch.div(torch.arange(h).view(1, h) + shift[:, :1], cell, rounding_mode="floor") % 2
    cols = torch.div(torch.arange(w).view(1, w) + shift[:, 1:], cell, rounding_mode="floor") % 2
    phase = phase.long().view(n, 1, 1)
    masked = (rows.unsqueeze(2) == phase // 2) & (cols.unsqueeze(1) == phase % 2)
    return masked.unsqueeze(1).float()


@register_method
class InpaintingUNetMethod(UNetDenoisingMethod):
    """U-Net inpainting each cell from its surroundings, as an :class:`AnomalyMethod`, for the benchmarks.

    Args:
        spatial_dims: 2 (slices (N, C, H, W)); sizes divisible by ``2 ** (len(unet_channels) - 1)``.
        in_channels: image channels (the network sees one more: the mask).
        unet_channels, num_res_units: of the U-Net (:class:`~unet_dae.DenoisingUNet`).
        inpaint_cell_mm: the cells' side in mm on the model grid (rounded to whole voxels, >= 1).
        residual, residual_tolerance_mm, model_spacing: the latent-norm method's map.
        input_noise_std, input_noise_mm: accepted for the shared config; the noise must be 0 (the cells are
            removed, not noised).
        slice_context: must be 0.
        unused: the latent-norm config's code keys (``latent_dim``, ``beta``, ...), accepted and unused.

    Raises:
        ValueError: for 3D, neighbouring slices, input noise or a cell size out of range.
    """

    name = "unet-inpaint"

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        unet_channels: Sequence[int] = (16, 32, 64, 128),
        num_res_units: int = 1,
        inpaint_cell_mm: float = 16.0,
        residual: str = "absolute",
        residual_tolerance_mm: float = 0.0,
        model_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        input_noise_std: float = 0.0,
        input_noise_mm: float = 16.0,
        slice_context: int = 0,
        **unused: Any,
    ) -> None:
        if spatial_dims != 2 or slice_context:
            raise ValueError(
                f"unet-inpaint takes 2D slices without neighbours, got spatial_dims {spatial_dims}, "
                f"slice_context {slice_context}"
            )
        if input_noise_std:
            raise ValueError(
                f"unet-inpaint removes cells instead of noising them: input_noise_std must be 0, got {input_noise_std}"
            )
        if not inpaint_cell_mm > 0:
            raise ValueError(f"inpaint_cell_mm must be > 0, got {inpaint_cell_mm}")
        super().__init__(
            spatial_dims,
            in_channels,
            unet_channels,
            num_res_units,
            residual=residual,
            residual_tolerance_mm=residual_tolerance_mm,
            model_spacing=model_spacing,
            input_noise_std=0.0,
            input_noise_mm=input_noise_mm,
            slice_context=0,
        )
        self.inpaint_cell_mm = float(inpaint_cell_mm)
        # one size for both in-plane axes: the demo's grid is isotropic; the first axis's spacing sets it
        self.cell = max(1, int(round(self.inpaint_cell_mm / float(model_spacing[0]))))
        self.net = DenoisingUNet(
            2, in_channels + 1, in_channels, tuple(int(c) for c in unet_channels), int(num_res_units)
        )

    def masked_input(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) with the ``mask`` (N, 1, H, W) cells set to 0, and the mask as one more channel."""
        return torch.cat([x * (1 - mask), mask], dim=1)

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """MSE of x̂ against the slice over the masked brain voxels of a random phase and grid shift per slice."""
        self.check_phase(phase)
        x, target = self._images(batch)
        n = x.shape[0]
        phases = torch.randint(0, PHASES, (n,))
        shift = torch.randint(0, 2 * self.cell, (n, 2))
        mask = checkerboard_cells(x.shape, self.cell, phases, shift).to(x)
        x_hat, _ = self.net(self.masked_input(x, mask))
        weight = mask * brain_mask(target).to(x.dtype)
        return ((x_hat - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂ (N, C, H, W) of ``x``, each voxel from the pass of the phase that masks its cell, and an empty code
        (N, 0): the latent-norm method's scoring then gives ``‖x − x̂‖₂`` over the brain and its residual map."""
        n = x.shape[0]
        x_hat = torch.zeros_like(x)
        for phase in range(PHASES):
            mask = checkerboard_cells(x.shape, self.cell, torch.full((n,), phase)).to(x)
            x_hat = x_hat + self.net(self.masked_input(x, mask))[0] * mask
        return x_hat, x.new_zeros(n, 0)

    def extra_repr(self) -> str:
        return f"cell={self.cell}, residual={self.residual!r}, residual_tolerance_mm={self.residual_tolerance_mm}"
