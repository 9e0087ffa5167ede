"""Anti-aliasing before downsampling: a Gaussian low-pass sized by the ratio of target to input spacing.

``Spacingd`` resamples by (bi/tri)linear interpolation, which *samples* the input: going from a 1 mm scan to the
4 mm model grid it keeps one point in 64 and the 1 mm noise and texture alias into the 4 mm image at full
strength (MS patient07's FLAIR, 1 mm: high-pass roughness 0.12 at 4 mm without this step, 0.06 for the demo's
scans, which are synthesised band-limited). A real 4 mm acquisition averages its voxel instead. The standard
remedy (``skimage.transform.rescale(anti_aliasing=True)``, ``torchio.Resample``'s antialiasing) is a Gaussian
low-pass before sampling; per axis, with ``f = target / input spacing``, this uses

    sigma = 0.42 * sqrt(f**2 - 1)   (input voxels; 0 when f <= 1, i.e. upsampling or same spacing)

the same rule that band-limits the demo cohort's template (:mod:`mri_anomaly.data.demo`), so a real scan reaches
the model grid with the resolution the models were trained on. The filter is not spatial (it does not move
voxels), so it has no inverse: maps go back to the input grid through the resampling alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.layers import GaussianFilter
from monai.transforms import MapTransform, Transform

__all__ = ["antialias_sigma", "AntiAlias", "AntiAliasd"]


def antialias_sigma(input_spacing: Sequence[float], target_spacing: Sequence[float]) -> list[float]:
    """Per-axis Gaussian sigma (input voxels) before resampling ``input_spacing`` -> ``target_spacing`` (mm)."""
    out = []
    for s, t in zip(input_spacing, target_spacing):
        f = float(t) / float(s)
        out.append(0.42 * float(np.sqrt(f * f - 1.0)) if f > 1.0 else 0.0)
    return out


class AntiAlias(Transform):
    """Low-pass a channel-first ``MetaTensor`` (C, H, W, D) for resampling to ``pixdim`` (mm); see the module.

    The input spacing is the image's own (``MetaTensor.pixdim``, from its affine). Values and metadata other
    than the array are unchanged; an image already at or below the target resolution is returned as is.
    """

    def __init__(self, pixdim: Sequence[float]) -> None:
        if len(pixdim) != 3:
            raise ValueError(f"pixdim must have 3 entries, got {list(pixdim)}")
        self.pixdim = [float(p) for p in pixdim]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, MetaTensor):
            raise TypeError("AntiAlias needs a MetaTensor (its affine gives the input spacing)")
        spacing = [float(s) for s in img.pixdim[:3]]
        sigma = antialias_sigma(spacing, self.pixdim)
        if max(sigma) == 0.0:
            return img
        x = img.as_tensor().float()
        # GaussianFilter pads with zeros, which is the background only of a scan whose background is 0. A z-scored
        # scan (BRATS: background -3.6) would rise towards 0 along the box's faces, and its first and last slices
        # would turn into "brain". The box is extended by its edge values first, then cut back.
        radius = [
            int(4.0 * s + 0.5) + 1 for s in sigma
        ]  # GaussianFilter's kernel reach (truncated at 4 sigma)
        padding = [r for r in reversed(radius) for _ in (0, 1)]  # (last axis first, both sides) for F.pad
        padded = torch.nn.functional.pad(x[None], padding, mode="replicate")
        smoothed = GaussianFilter(spatial_dims=3, sigma=[max(s, 1e-6) for s in sigma], truncated=4.0)(padded)[
            0
        ]
        h, w, d = x.shape[1:]
        smoothed = smoothed[
            :, radius[0] : radius[0] + h, radius[1] : radius[1] + w, radius[2] : radius[2] + d
        ]
        return MetaTensor(smoothed.to(img.dtype), meta=img.meta, applied_operations=img.applied_operations)


class AntiAliasd(MapTransform):
    """Dictionary version of :class:`AntiAlias` (image keys only: masks are resampled and re-binarised)."""

    def __init__(
        self, keys: KeysCollection, pixdim: Sequence[float], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.filter = AntiAlias(pixdim)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.filter(d[key])
        return d
