"""Training augmentation for preprocessed MRI: small affine, bias field, gamma and intensity scaling.

Standard brain-MRI augmentation (as in nnU-Net and MONAI's tutorials), kept mild because the methods learn
what healthy brains look like: a transform strong enough to mimic an anomaly would teach the model to accept it.
It runs on preprocessed items (``image`` in [0, 1] with a zero background, ``mask`` {0, 1}), after the cache:

* ``RandAffined``: rotation ±``rotate_deg`` (each axis in 3D, in-plane in 2D), zoom ±``scale``, shift
  ±``translate_voxels``; bilinear for the image, nearest for the mask, zero padding (the background stays 0);
* ``RandBiasFieldd``: a smooth multiplicative field (polynomial degree 3, coefficients ±``bias_field``), the
  scanner's receive-coil inhomogeneity; it multiplies, so background stays 0;
* ``RandAdjustContrastd``: gamma in ``gamma`` (min-max based, so 0 stays 0 and the maximum stays put);
* ``RandScaleIntensityd``: ``x · (1 + f)``, ``f`` uniform in ±``intensity_scale``;
* then the image is clamped to [0, 1] (Glow's dequantisation and the sigmoid decoders expect that range).

Each transform fires with probability ``prob``; a magnitude of 0 (or null) leaves that transform out.
Randomness comes from the chain's ``set_random_state``: :class:`~mri_anomaly.training.loaders.SeededSampleDataset`
seeds it per sample from (run seed, phase, stream, epoch, index), so augmented batches are identical for any
number of workers and after ``--resume``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandScaleIntensityd,
)

__all__ = [
    "AUGMENT_DEFAULTS",
    "AUGMENT_KEYS",
    "ClampIntensityd",
    "augment_config_problems",
    "mri_augmentation",
    "resolve_augment_config",
]

AUGMENT_DEFAULTS: dict[str, Any] = {
    "prob": 0.5,
    "rotate_deg": 5.0,
    "scale": 0.05,
    "translate_voxels": 1.0,
    "bias_field": 0.1,
    "gamma": [0.8, 1.25],
    "intensity_scale": 0.1,
}
AUGMENT_KEYS = frozenset(AUGMENT_DEFAULTS)


def resolve_augment_config(augment: Mapping[str, Any] | bool | None) -> dict[str, Any] | None:
    """``train.augment`` as a full mapping, or None when augmentation is off (``null``/``false``).

    ``true`` means :data:`AUGMENT_DEFAULTS`; a mapping is merged over them.
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        return dict(AUGMENT_DEFAULTS)
    return {**AUGMENT_DEFAULTS, **dict(augment)}


def augment_config_problems(augment: Any) -> list[str]:
    """Problems of a ``train.augment`` value, each naming the key (empty when it is valid)."""
    if augment is None or isinstance(augment, bool):
        return []
    if not isinstance(augment, Mapping):
        return [f"train.augment: expected true/false/null or a mapping, got {type(augment).__name__}"]
    problems = [
        f"train.augment: unknown key {k!r} (known: {sorted(AUGMENT_KEYS)})"
        for k in augment
        if k not in AUGMENT_KEYS
    ]
    cfg = {**AUGMENT_DEFAULTS, **{k: v for k, v in augment.items() if k in AUGMENT_KEYS}}

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not (number(cfg["prob"]) and 0.0 <= cfg["prob"] <= 1.0):
        problems.append(f"train.augment.prob: must be in [0, 1], got {cfg['prob']!r}")
    for key, upper in (("rotate_deg", 45.0), ("scale", 0.5), ("translate_voxels", 32.0), ("bias_field", 1.0)):
        v = cfg[key]
        if v is not None and not (number(v) and 0.0 <= v <= upper):
            problems.append(f"train.augment.{key}: must be in [0, {upper}] (or null), got {v!r}")
    v = cfg["intensity_scale"]
    if v is not None and not (number(v) and 0.0 <= v < 1.0):
        problems.append(f"train.augment.intensity_scale: must be in [0, 1) (or null), got {v!r}")
    g = cfg["gamma"]
    if g is not None and not (
        isinstance(g, (list, tuple)) and len(g) == 2 and all(number(x) and x > 0 for x in g) and g[0] <= g[1]
    ):
        problems.append(f"train.augment.gamma: must be [low, high] with 0 < low <= high (or null), got {g!r}")
    return problems


class ClampIntensityd(MapTransform):
    """Clamp ``keys`` to ``[lower, upper]`` (``upper`` None: no upper bound); keeps ``MetaTensor`` metadata."""

    def __init__(
        self, keys: Any, lower: float = 0.0, upper: float | None = 1.0, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.lower, self.upper = lower, upper

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key]).clamp(self.lower, self.upper)
        return d


class _PlainTensorsd(MapTransform):
    """``MetaTensor`` -> plain tensor for ``keys`` (slice items carry plain tensors; keep them so)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                d[key] = d[key].as_tensor()
        return d


def mri_augmentation(
    augment: Mapping[str, Any],
    spatial_dims: int,
    clip: bool = True,
    image_key: str = "image",
    mask_key: str = "mask",
    plain_tensors: bool = False,
) -> Compose:
    """The augmentation chain of a resolved ``train.augment`` mapping (see the module docstring).

    Args:
        augment: :func:`resolve_augment_config`'s mapping.
        spatial_dims: 2 (items (C, H, W)) or 3 (items (C, H, W, D)).
        clip: clamp the image to [0, 1] at the end (else only to >= 0), as ``preprocessing.intensity.clip``.
        image_key / mask_key: item keys; the mask follows the spatial transform (nearest) and may be absent.
        plain_tensors: return plain tensors (slice datasets) instead of ``MetaTensor``.

    Returns:
        a MONAI ``Compose`` of dict transforms (call ``set_random_state`` to seed it).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    a = resolve_augment_config(augment) or {}
    prob = float(a.get("prob", 0.0))
    both = [image_key, mask_key]
    transforms: list[Any] = []
    rotate = math.radians(float(a.get("rotate_deg") or 0.0))
    scale = float(a.get("scale") or 0.0)
    shift = float(a.get("translate_voxels") or 0.0)
    if rotate or scale or shift:
        n_angles = 1 if spatial_dims == 2 else 3
        transforms.append(
            RandAffined(
                keys=both,
                prob=prob,
                rotate_range=(rotate,) * n_angles if rotate else None,
                scale_range=(scale,) * spatial_dims if scale else None,
                translate_range=(shift,) * spatial_dims if shift else None,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
    if a.get("bias_field"):
        c = float(a["bias_field"])
        transforms.append(RandBiasFieldd(keys=image_key, degree=3, coeff_range=(-c, c), prob=prob))
    if a.get("gamma") is not None and tuple(a["gamma"]) != (1.0, 1.0):
        transforms.append(
            RandAdjustContrastd(keys=image_key, gamma=tuple(float(g) for g in a["gamma"]), prob=prob)
        )
    if a.get("intensity_scale"):
        transforms.append(RandScaleIntensityd(keys=image_key, factors=float(a["intensity_scale"]), prob=prob))
    transforms.append(ClampIntensityd(image_key, 0.0, 1.0 if clip else None))
    if plain_tensors:
        transforms.append(_PlainTensorsd(both, allow_missing_keys=True))
    return Compose(transforms)
