"""Intensity transforms: percentile scaling inside the brain, and binarisation of resampled masks.

* :class:`ScaleIntensityInMask` maps the ``lower``/``upper`` percentiles of the voxels *inside the
  brain* to ``b_min``/``b_max`` (0/1) and clips. The brain is a given mask (``brain_mask_key`` in the
  preprocessing config, e.g. BRATS' ``brainmask.nii.gz``) or, without one, the foreground estimated by
  :func:`estimate_foreground` (voxels above ``min + 5 % of (p99 - min)``: the zero/constant background
  of skull-stripped scans, BRATS' negative constant, and the air of whole-head scans such as IXI fall
  outside). Voxels outside the given mask are set to ``b_min`` (brain extraction). A multi-channel
  image (one subject's contrasts stacked) is scaled **per channel**, each exactly as that contrast alone
  would be: its own percentiles inside the given brain mask (shared by all channels) or inside its own
  estimated foreground.
* :class:`EstimateForegroundd` estimates that foreground as a mask item *before* resampling, so the
  preprocessing chain takes it to the model grid as it takes a brain mask (bilinear, then > 0.5): the brain
  on the grid is the voxels that are mostly brain. Estimated on the low-passed grid instead, the threshold
  keeps voxels only a few percent brain, and a 1 mm scan's brain came out 4-11 % too large at 4 mm
  (``benchmarks/ceilings.py``), its scored region reaching into the background.
* :class:`Binarize` turns a resampled (interpolated) mask back into {0, 1}.

All keep ``MetaTensor`` metadata; neither is spatial, so neither needs an inverse.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from mri_anomaly.data.io import InputFileError

__all__ = [
    "EstimateForegroundd",
    "Binarize",
    "Binarized",
    "BinarizeD",
    "BinarizeDict",
    "estimate_foreground",
    "ScaleIntensityInMask",
    "ScaleIntensityInMaskd",
    "ScaleIntensityInMaskD",
    "ScaleIntensityInMaskDict",
    "item_mask",
    "MaskedIntensityd",
]


def estimate_foreground(img: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """Boolean foreground of ``img`` (any shape): ``img > p0.1 + fraction * (p99 - p0.1)``.

    The 0.1th percentile stands for the background level rather than the minimum: resampled skull-stripped
    scans carry a few negative ringing voxels at the brain's edge (MS patient07's FLAIR: 0.07 % of voxels,
    down to -20), and with the minimum the threshold fell below the zero background, so "foreground" was
    the whole box.
    """
    flat = torch.as_tensor(img).detach().reshape(-1).float().cpu().numpy()
    sample = flat if flat.size <= 2_000_000 else flat[:: flat.size // 2_000_000 + 1]
    lo, hi = (float(v) for v in np.percentile(sample, [0.1, 99.0]))
    return img > lo + fraction * (hi - lo)


class EstimateForegroundd(MapTransform):
    """Add ``out_key``: the :func:`estimate_foreground` of ``key``'s image, per channel, as a float {0, 1} mask.

    Args:
        key: image key (a channel-first ``MetaTensor`` (C, *spatial)).
        out_key: key of the mask (C, *spatial), with the image's metadata so spatial transforms take it along.
        fraction: threshold of :func:`estimate_foreground`.
    """

    def __init__(self, key: str, out_key: str, fraction: float = 0.05) -> None:
        super().__init__([key])
        self.out_key = out_key
        self.fraction = fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = d[self.keys[0]]
        fg = torch.cat([estimate_foreground(img[c : c + 1], self.fraction) for c in range(img.shape[0])])
        fg = fg.as_tensor() if isinstance(fg, MetaTensor) else fg
        if isinstance(img, MetaTensor):
            d[self.out_key] = MetaTensor(
                fg.to(torch.float32), meta=dict(img.meta), applied_operations=list(img.applied_operations)
            )
        else:
            d[self.out_key] = fg.to(torch.float32)
        return d


def _filename(img: torch.Tensor) -> str | None:
    return img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None


class ScaleIntensityInMask(Transform):
    """Percentile intensity scaling computed inside a brain mask.

    Args:
        lower: lower percentile (0-100) mapped to ``b_min``.
        upper: upper percentile (0-100) mapped to ``b_max``.
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip the output to [b_min, ``clip_max``].
        inside_mask: compute percentiles inside the brain (given or estimated); False: over all voxels.
        zero_outside: with a given mask, set voxels outside it to ``b_min``.
        foreground_fraction: threshold of :func:`estimate_foreground` when no mask is given.
        clip_max: upper clip value (None: ``b_max``); above ``b_max`` when ``upper`` is a tissue landmark such as
            the median, so brighter voxels keep their contrast up to ``clip_max``.

    Raises:
        InputFileError: the brain (mask) is empty or the intensities inside it are constant.
    """

    def __init__(
        self,
        lower: float = 1.0,
        upper: float = 99.0,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        inside_mask: bool = True,
        zero_outside: bool = True,
        foreground_fraction: float = 0.05,
        clip_max: float | None = None,
    ) -> None:
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        if clip_max is not None and clip_max < b_max:
            raise ValueError(f"clip_max ({clip_max}) must be >= b_max ({b_max})")
        self.clip_max = float(b_max if clip_max is None else clip_max)
        self.lower, self.upper = float(lower), float(upper)
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.clip = clip
        self.inside_mask = inside_mask
        self.zero_outside = zero_outside
        self.foreground_fraction = foreground_fraction

    def __call__(self, img: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: img (C, *spatial), each channel scaled on its own; mask (1 or C, *spatial), nonzero = brain
        (a C-channel mask: each channel's own). Returns img's type, float32."""
        x = img.float()
        if x.ndim >= 2 and x.shape[0] > 1:
            per_channel = mask is not None and mask.shape[0] == x.shape[0]
            out = torch.cat(
                [
                    self._scale(
                        x[c : c + 1], img, mask[c : c + 1] if per_channel else mask, f" (contrast {c + 1})"
                    )
                    for c in range(x.shape[0])
                ]
            )
        else:
            out = self._scale(x, img, mask, "")
        if self.clip:
            out = out.clamp(self.b_min, self.clip_max)
        if mask is not None and self.zero_outside:
            out = torch.where(mask.expand_as(out) > 0.5, out, torch.full_like(out, self.b_min))
        if isinstance(img, MetaTensor) and not isinstance(out, MetaTensor):
            out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out

    def _scale(
        self, x: torch.Tensor, img: torch.Tensor, mask: torch.Tensor | None, which: str
    ) -> torch.Tensor:
        """One channel ``x`` (1, *spatial) mapped so that its percentiles inside the brain go to b_min/b_max."""
        if self.inside_mask:
            region = (
                (mask > 0.5).expand_as(x)
                if mask is not None
                else estimate_foreground(x, self.foreground_fraction)
            )
        else:
            region = torch.ones_like(x, dtype=torch.bool)
        vals = x.detach()[region].cpu().numpy()
        if vals.size == 0:
            raise InputFileError(
                _filename(img), f"brain mask is empty{which}: no voxels to compute percentiles from"
            )
        if vals.size > 2_000_000:
            vals = vals[:: vals.size // 2_000_000 + 1]
        lo, hi = (float(v) for v in np.percentile(vals, [self.lower, self.upper]))
        if hi <= lo:
            raise InputFileError(_filename(img), f"intensities inside the brain are constant{which} ({lo:g})")
        return (x - lo) / (hi - lo) * (self.b_max - self.b_min) + self.b_min


class MaskedIntensityd(MapTransform):
    """Applies an array transform called as ``transform(img, mask)`` to ``keys``, with the item's brain mask.

    The shared body of the dictionary twins whose array transform reads the brain mask
    (:class:`ScaleIntensityInMaskd`, :class:`~mri_anomaly.data.histogram.HistogramStandardized`).

    Args:
        keys: image keys.
        transform: the array transform, ``(img, mask or None) -> img``.
        mask_key: key of the brain mask (None: the transform's own rule; named and absent from an item:
            ``KeyError``, :func:`item_mask`).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Any,
        mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = item_mask(d, self.mask_key)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], mask)
        return d


class ScaleIntensityInMaskd(MaskedIntensityd):
    """Dictionary twin of :class:`ScaleIntensityInMask`.

    Args:
        keys: image keys to scale.
        mask_key: key of the brain mask (None: estimate the foreground of each image).
        allow_missing_keys: skip absent keys.
        kwargs: passed to :class:`ScaleIntensityInMask`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, ScaleIntensityInMask(**kwargs), mask_key, allow_missing_keys)


def item_mask(data: Mapping[Hashable, Any], mask_key: str | None) -> Any:
    """The brain mask ``data[mask_key]``, or None without a key; a named key absent from the item is a ``KeyError``
    naming it (never a silent fall back to estimating the brain)."""
    if mask_key is None:
        return None
    if data.get(mask_key) is None:
        raise KeyError(f"brain mask key {mask_key!r} missing from the item (keys: {sorted(map(str, data))})")
    return data[mask_key]


class Binarize(Transform):
    """``(x > threshold)`` as float32 {0, 1}, same type (masks after bilinear resampling).

    Args:
        threshold: voxels above it become 1.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return (img > self.threshold).to(torch.float32)


class Binarized(MapTransform):
    """Dictionary twin of :class:`Binarize`."""

    def __init__(
        self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarize = Binarize(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.binarize(d[key])
        return d


BinarizeD = BinarizeDict = Binarized
ScaleIntensityInMaskD = ScaleIntensityInMaskDict = ScaleIntensityInMaskd
