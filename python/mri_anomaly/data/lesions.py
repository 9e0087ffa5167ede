"""Synthetic anomalies: ``RandLesion`` / ``RandLesiond`` insert a lesion and return its voxel mask.

Used by the demo cohort (``mri_anomaly.data.demo``), for labelled anomalies in Deep SAD, and as
outlier exposure. Works on an in-memory channel-first tensor: a volume (1, H, W, D) or a slice (1, H, W).

Kinds (:data:`LESION_KINDS`):

* ``"focal"``: 1-4 small irregular spheroids (radius ``focal_radius_mm``), mostly of the contrast's
  lesion sign (hyperintense in FLAIR/T2, hypointense in T1), sometimes the opposite sign.
* ``"tumour"``: a mass of radius ``tumour_radius_mm`` with a necrotic core, a rim and surrounding
  oedema (irregular boundaries, clipped to the brain), each with its contrast's intensity, and a
  **mass effect**: the surrounding tissue is pushed radially outwards (displacement
  ``mass_effect * R * (1 - d / (2.5 R))**2`` for distance d < 2.5 R, zero beyond).
* ``"ms"``: a real multiple-sclerosis lesion pattern from ``ms_masks`` (binary or fractional masks
  on the image's grid, e.g. the Lesjak et al. consensus masks resampled by affine; see
  :func:`mri_anomaly.data.demo.load_ms_lesion_masks`), hyperintense in FLAIR/T2, hypointense in T1.

Intensities are set relative to the brain's median intensity ``ref`` (:data:`CONTRAST_LEVELS`, as
multiples of ``ref``); inside the mask the image becomes ``(1 - w) * x + w * level * (1 + texture)``
with ``w`` in [0.75, 1]. The output is clipped to the input's range by default (``clip``).

``partial_volume=True`` images a lesion the way a scanner's voxel does: each voxel's weight is ``w`` times the
fraction of the voxel the lesion fills (focal lesions and tumour parts: the shape evaluated at 3 points per axis
inside the voxel; MS masks: their fractional values), so a voxel a lesion half fills moves half way. The mask and
every random draw stay those of ``partial_volume=False``: the same subject, only its lesion's edge voxels differ.
Why: at 4 mm a real MS patient's lesions fill few voxels whole; with full contrast in every masked voxel the
synthetic ones were far more conspicuous than real ones on the same grid (``benchmarks/lesion_conspicuity.py``).

Guarantees (tested): outside the returned mask, the image is **unchanged** except, for tumours with
``mass_effect > 0``, inside the displacement support (radius 2.5 R), and, with ``partial_volume``, in the voxels
next to the mask that the lesion partly fills (and, for MS, wherever its fractional mask is above 0); the mask is
{0, 1} and the mean absolute change inside it is large.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from scipy import ndimage

from mri_anomaly.data.intensity import estimate_foreground

__all__ = ["LESION_KINDS", "CONTRAST_LEVELS", "RandLesion", "RandLesiond", "RandLesionD", "RandLesionDict"]

LESION_KINDS: tuple[str, ...] = ("focal", "tumour", "ms")

CONTRAST_LEVELS: dict[str, dict[str, tuple[float, float]]] = {
    # target intensity as a multiple of the brain median: (low, high) drawn uniformly
    "flair": {
        "ms": (1.45, 1.8),
        "focal": (1.45, 1.85),
        "focal_opposite": (0.25, 0.5),
        "oedema": (1.35, 1.6),
        "rim": (1.55, 1.9),
        "core": (0.3, 0.55),
    },
    "t2": {
        "ms": (1.5, 1.9),
        "focal": (1.5, 1.9),
        "focal_opposite": (0.3, 0.55),
        "oedema": (1.45, 1.75),
        "rim": (1.15, 1.35),
        "core": (1.9, 2.3),
    },
    "t1": {
        "ms": (0.55, 0.75),
        "focal": (0.45, 0.7),
        "focal_opposite": (1.3, 1.5),
        "oedema": (0.72, 0.85),
        "rim": (1.25, 1.45),
        "core": (0.3, 0.45),
    },
}


def _smooth_noise(rng: np.random.RandomState, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(sigma, 0.5), mode="wrap")
    return n / (n.std() + 1e-8)


class RandLesion(RandomizableTransform):
    """Insert one synthetic lesion (of a random kind) into a healthy image.

    Args:
        prob: probability of inserting a lesion (otherwise the image is returned with an empty mask).
        kinds: kinds to draw from (see :data:`LESION_KINDS`); ``"ms"`` needs ``ms_masks``. None: all
            kinds available (``"ms"`` only when ``ms_masks`` are given).
        contrast: ``"flair"``, ``"t2"`` or ``"t1"`` (which way lesions go, :data:`CONTRAST_LEVELS`).
        focal_radius_mm: range of the radius of focal lesions.
        num_focal: range (inclusive) of the number of focal lesions.
        tumour_radius_mm: range of the tumour radius R (oedema reaches up to ~1.3 R).
        mass_effect: range of the mass-effect strength (0: none; at most 0.6).
        ms_masks: candidate MS lesion masks, each with the image's spatial shape (values in [0, 1]).
        opposite_sign_prob: probability that focal lesions have the opposite intensity sign.
        clip: output range: ``"input"`` (the input's [min, max]; hyperintense lesions saturate where
            the input is already at its maximum), a ``(low, high)`` pair (either may be None), or None (no clipping).
        partial_volume: weight each voxel's change by the fraction of it the lesion fills (see the module
            docstring); the mask and the random draws are unchanged.
        ms_mask_threshold: an MS mask value at or above which a voxel is in the returned mask.

    Call: ``lesion(img, brain_mask=None) -> (image, mask)``; ``img`` (1, *spatial) with 2 or 3 spatial
    dims; ``brain_mask`` (1, *spatial) where lesions may go (default: estimated foreground). Returns the
    image (same type, float32) and the mask (1, *spatial) float32 {0, 1}. ``.last_kind`` holds the kind
    inserted (``None`` if none), ``.last_variant`` the same or ``"focal_opposite"`` for a focal lesion of
    the opposite intensity sign.

    Raises:
        ValueError: an unknown kind or contrast, or only ``"ms"`` without ``ms_masks``.
    """

    def __init__(
        self,
        prob: float = 1.0,
        kinds: Sequence[str] | None = None,
        contrast: str = "flair",
        focal_radius_mm: tuple[float, float] = (3.0, 7.0),
        num_focal: tuple[int, int] = (1, 4),
        tumour_radius_mm: tuple[float, float] = (10.0, 22.0),
        mass_effect: tuple[float, float] = (0.2, 0.5),
        ms_masks: Sequence[Any] | None = None,
        opposite_sign_prob: float = 0.25,
        clip: str | tuple[float, float] | None = "input",
        partial_volume: bool = False,
        ms_mask_threshold: float = 0.5,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if kinds is None:
            kinds = LESION_KINDS if ms_masks else tuple(k for k in LESION_KINDS if k != "ms")
        bad = [k for k in kinds if k not in LESION_KINDS]
        if bad or not kinds:
            raise ValueError(f"unknown lesion kind(s) {bad} (known: {LESION_KINDS})")
        if contrast not in CONTRAST_LEVELS:
            raise ValueError(f"unknown contrast {contrast!r} (known: {sorted(CONTRAST_LEVELS)})")
        self.ms_masks = [
            np.asarray(torch.as_tensor(m).detach().cpu().numpy(), dtype=np.float32).squeeze()
            for m in (ms_masks or [])
        ]
        kinds = list(kinds)
        if "ms" in kinds and not self.ms_masks:
            if kinds == ["ms"]:
                raise ValueError("lesion kind 'ms' needs ms_masks (MS lesion masks on the image grid)")
            others = ", ".join(k for k in kinds if k != "ms")
            warnings.warn(f"RandLesion: no ms_masks given, drawing only from {others}", stacklevel=2)
            kinds.remove("ms")
        self.kinds = tuple(kinds)
        self.contrast = contrast
        self.focal_radius_mm = focal_radius_mm
        self.num_focal = num_focal
        self.tumour_radius_mm = tumour_radius_mm
        if not 0 <= mass_effect[0] <= mass_effect[1] <= 0.6:
            raise ValueError(f"mass_effect must satisfy 0 <= low <= high <= 0.6, got {mass_effect}")
        self.mass_effect = mass_effect
        self.opposite_sign_prob = opposite_sign_prob
        if not (clip is None or clip == "input" or (isinstance(clip, (tuple, list)) and len(clip) == 2)):
            raise ValueError(f"clip must be 'input', (low, high) or None, got {clip!r}")
        self.clip = clip
        self.partial_volume = bool(partial_volume)
        if not 0.0 < ms_mask_threshold <= 1.0:
            raise ValueError(f"ms_mask_threshold must be in (0, 1], got {ms_mask_threshold}")
        self.ms_mask_threshold = float(ms_mask_threshold)
        self.last_kind: str | None = None
        self.last_variant: str | None = (
            None  # the kind, or "focal_opposite" for an opposite-sign focal lesion
        )
        self._kind: str | None = None

    def randomize(self, data: Any = None) -> None:
        """Draw whether to insert and which kind (the geometry is drawn in ``__call__``)."""
        super().randomize(None)
        self._kind = self.kinds[self.R.randint(len(self.kinds))] if self._do_transform else None

    def __call__(
        self,
        img: torch.Tensor,
        brain_mask: torch.Tensor | None = None,
        randomize: bool = True,
        kind: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Insert a lesion; ``kind`` forces a kind (and insertion). See the class docstring."""
        if img.ndim not in (3, 4) or img.shape[0] != 1:
            raise ValueError(f"RandLesion expects (1, H, W[, D]), got shape {tuple(img.shape)}")
        if randomize:
            self.randomize()
        if kind is not None:
            if kind not in LESION_KINDS or (kind == "ms" and not self.ms_masks):
                raise ValueError(f"cannot insert kind {kind!r} (available: {self.kinds})")
            self._kind = kind
        x = img.detach().cpu().float().numpy()[0]
        spatial = x.shape
        if self._kind is None:
            self.last_kind = self.last_variant = None
            return self._wrap(img, x), self._wrap(img, np.zeros(spatial, np.float32))
        pixdim = self._pixdim(img)
        if brain_mask is not None:
            brain = torch.as_tensor(brain_mask).detach().cpu().numpy().reshape(spatial) > 0.5
        else:
            brain = estimate_foreground(torch.as_tensor(x)).numpy()
        if not brain.any():
            raise ValueError("RandLesion: the brain region is empty, cannot place a lesion")
        ref = float(np.median(x[brain]))
        if self.clip == "input":
            lo_clip, hi_clip = float(x.min()), float(x.max())
        else:
            lo, hi = self.clip if self.clip is not None else (None, None)
            lo_clip = -np.inf if lo is None else float(lo)
            hi_clip = np.inf if hi is None else float(hi)
        levels = CONTRAST_LEVELS[self.contrast]
        out = x.copy()
        self._variant = self._kind
        if self._kind == "focal":
            mask, out = self._focal(out, brain, pixdim, ref, levels)
        elif self._kind == "tumour":
            mask, out = self._tumour(out, brain, pixdim, ref, levels)
        else:
            mask, out = self._ms(out, brain, pixdim, ref, levels)
        out = np.clip(out, lo_clip, hi_clip)
        self.last_kind = self._kind
        self.last_variant = self._variant
        return self._wrap(img, out), self._wrap(img, mask.astype(np.float32))

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _pixdim(img: torch.Tensor) -> np.ndarray:
        nd = img.ndim - 1
        if isinstance(img, MetaTensor):
            p = np.asarray(img.pixdim, dtype=np.float64).reshape(-1)[:nd]
            if p.size == nd and np.all(p > 0):
                return p
        return np.ones(nd)

    @staticmethod
    def _wrap(ref: torch.Tensor, arr: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32))[None]
        if isinstance(ref, MetaTensor):
            return MetaTensor(t, meta=ref.meta, applied_operations=list(ref.applied_operations))
        return t

    def _center(self, brain: np.ndarray, pixdim: np.ndarray, min_depth_mm: float) -> np.ndarray:
        depth = ndimage.distance_transform_edt(brain, sampling=pixdim)
        cand = np.argwhere(depth >= min_depth_mm)
        if len(cand) == 0:
            cand = np.argwhere(depth >= 0.5 * depth.max())
        return cand[self.R.randint(len(cand))].astype(np.float64)

    @staticmethod
    def _dist(
        shape: tuple[int, ...],
        center: np.ndarray,
        pixdim: np.ndarray,
        axes: np.ndarray | None = None,
        offset: Sequence[float] | None = None,
    ):
        """Distance (mm, or in units of ``axes`` per axis) of every voxel's point ``index + offset`` to ``center``."""
        offset = [0.0] * len(shape) if offset is None else offset
        grids = np.meshgrid(
            *[(np.arange(n) + o - c) * p for n, c, p, o in zip(shape, center, pixdim, offset)], indexing="ij"
        )
        if axes is None:
            return np.sqrt(sum(g**2 for g in grids)), grids
        return np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, axes))), grids

    def _blend(self, x: np.ndarray, region: np.ndarray, level: float, ref: float) -> np.ndarray:
        if not region.any():
            return x
        w = self.R.uniform(0.75, 1.0)
        tex = 1.0 + 0.06 * self.R.standard_normal(int(region.sum()))
        x = x.copy()
        x[region] = (1 - w) * x[region] + w * level * ref * tex
        return x

    def _changes(
        self,
        x: np.ndarray,
        parts: Sequence[tuple[np.ndarray, np.ndarray, str]],
        levels: Mapping[str, tuple[float, float]],
        ref: float,
    ) -> np.ndarray:
        """Partial-volume blend of disjoint lesion parts ``(mask, fraction, level name)``: each voxel moves towards
        each part's intensity by ``w * fraction``. The draws are :meth:`_level`'s and :meth:`_blend`'s, part by part
        in the same order (texture only inside the part's mask, 1 on the voxels it partly fills)."""
        change = np.zeros_like(x)
        for region, fraction, name in parts:
            level = self._level(levels, name)
            if not region.any():
                continue
            w = self.R.uniform(0.75, 1.0)
            tex = np.ones_like(x)
            tex[region] = 1.0 + 0.06 * self.R.standard_normal(int(region.sum()))
            change += w * fraction * (level * ref * tex - x)
        return x + change

    def _offsets(self, ndim: int) -> list[tuple[float, ...]]:
        """Points inside a voxel at which a shape is evaluated for its partial-volume fraction (3 per axis)."""
        if not self.partial_volume:
            return [(0.0,) * ndim]
        return [
            tuple(o)
            for o in np.stack(np.meshgrid(*[(-1 / 3, 0.0, 1 / 3)] * ndim, indexing="ij"), -1).reshape(
                -1, ndim
            )
        ]

    def _level(self, levels: Mapping[str, tuple[float, float]], name: str) -> float:
        lo, hi = levels[name]
        return float(self.R.uniform(lo, hi))

    def _focal(self, x, brain, pixdim, ref, levels):
        shape = x.shape
        n = self.R.randint(self.num_focal[0], self.num_focal[1] + 1)
        name = "focal_opposite" if self.R.uniform() < self.opposite_sign_prob else "focal"
        self._variant = name
        mask = np.zeros(shape, bool)
        offsets = self._offsets(len(shape))
        inside = np.zeros((len(offsets), *shape), bool)  # the union of the blobs at each point of a voxel
        noise = _smooth_noise(self.R, shape, sigma=1.0)
        for _ in range(n):
            r = self.R.uniform(*self.focal_radius_mm)
            c = self._center(brain, pixdim, r + float(pixdim.max()))
            axes = r * self.R.uniform(0.7, 1.3, size=len(shape))
            d, _ = self._dist(shape, c, pixdim, axes)
            blob = (d + 0.15 * noise) <= 1.0
            blob[tuple(np.round(c).astype(int))] = True
            mask |= blob & brain
            if self.partial_volume:
                for k, o in enumerate(offsets):
                    inside[k] |= (self._dist(shape, c, pixdim, axes, o)[0] + 0.15 * noise) <= 1.0
        if not self.partial_volume:
            return mask, self._blend(x, mask, self._level(levels, name), ref)
        return mask, self._changes(x, [(mask, inside.mean(0) * brain, name)], levels, ref)

    def _tumour(self, x, brain, pixdim, ref, levels):
        shape = x.shape
        R = self.R.uniform(*self.tumour_radius_mm)
        c = self._center(brain, pixdim, 0.9 * R)
        a = self.R.uniform(*self.mass_effect)
        d, grids = self._dist(shape, c, pixdim)
        if a > 0:  # mass effect: resample at x - u(x), u radial outward, compact support 2.5 R
            rs = 2.5 * R
            mag = np.where(d < rs, a * R * (1 - d / rs) ** 2, 0.0)
            safe = np.maximum(d, 1e-6)
            coords = [
                np.arange(n)[tuple(slice(None) if j == i else None for j in range(len(shape)))]
                - mag * g / safe / p
                for i, (n, g, p) in enumerate(zip(shape, grids, pixdim))
            ]
            coords = [np.broadcast_to(cc, shape) for cc in coords]
            support = d < rs
            warped = ndimage.map_coordinates(x, coords, order=1, mode="nearest")
            x = np.where(support, warped, x)
            wb = ndimage.map_coordinates(brain.astype(np.float32), coords, order=1, mode="nearest") > 0.5
            brain = np.where(support, wb, brain)
        noise = _smooth_noise(self.R, shape, sigma=max(1.0, 0.25 * R / float(pixdim.mean())))
        rr = d / R + 0.12 * noise
        core = rr <= 0.45
        rim = (rr > 0.45) & (rr <= 0.65)
        oedema_extent = self.R.uniform(1.0, 1.35)
        oedema = (rr > 0.65) & ((d / R + 0.3 * noise) <= oedema_extent) & brain
        mask = core | rim | oedema
        if not self.partial_volume:
            x = self._blend(x, oedema, self._level(levels, "oedema"), ref)
            x = self._blend(x, rim, self._level(levels, "rim"), ref)
            x = self._blend(x, core, self._level(levels, "core"), ref)
            return mask, x
        fractions = {"core": np.zeros(shape), "rim": np.zeros(shape), "oedema": np.zeros(shape)}
        offsets = self._offsets(len(shape))
        for o in offsets:  # the same parts, at points inside each voxel
            do = self._dist(shape, c, pixdim, offset=o)[0]
            r_o = do / R + 0.12 * noise
            fractions["core"] += r_o <= 0.45
            fractions["rim"] += (r_o > 0.45) & (r_o <= 0.65)
            fractions["oedema"] += (r_o > 0.65) & ((do / R + 0.3 * noise) <= oedema_extent) & brain
        parts = [
            (region, fractions[name] / len(offsets), name)
            for name, region in (("oedema", oedema), ("rim", rim), ("core", core))
        ]
        return mask, self._changes(x, parts, levels, ref)

    def _ms(self, x, brain, pixdim, ref, levels):
        m = self.ms_masks[self.R.randint(len(self.ms_masks))]
        if m.shape != x.shape:
            raise ValueError(f"ms mask shape {m.shape} differs from the image's spatial shape {x.shape}")
        mask = (m >= self.ms_mask_threshold) & brain
        if not mask.any():  # partial-volume only (coarse grid): keep its strongest voxels
            mask = (m >= 0.5 * float(m.max())) & (m > 0) & brain
        if not self.partial_volume:
            return mask, self._blend(x, mask, self._level(levels, "ms"), ref)
        return mask, self._changes(x, [(mask, np.clip(m, 0.0, 1.0) * brain, "ms")], levels, ref)


class RandLesiond(Randomizable, MapTransform):
    """Dictionary twin of :class:`RandLesion`: inserts a lesion into ``d[keys[0]]`` and writes its mask.

    Args:
        keys: the image key (one).
        mask_key: where the lesion mask goes (united with a mask already there).
        brain_mask_key: optional key of the region where lesions may go.
        label_key: set to 1 when a lesion is inserted (None: leave labels alone).
        semi_target_value: if not None, ``semi_target`` is set to it when a lesion is inserted
            (-1 for a labelled anomaly in Deep SAD).
        kind_key: the inserted kind (``""`` if none) is written here (None: not written).
        kwargs: passed to :class:`RandLesion`.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "mask",
        brain_mask_key: str | None = None,
        label_key: str | None = "label",
        semi_target_value: int | None = None,
        kind_key: str | None = "lesion_kind",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandLesiond takes one image key, got {self.keys}")
        self.mask_key, self.brain_mask_key = mask_key, brain_mask_key
        self.label_key, self.semi_target_value, self.kind_key = label_key, semi_target_value, kind_key
        self.lesion = RandLesion(**kwargs)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandLesiond:
        super().set_random_state(seed, state)
        self.lesion.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.lesion.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        if key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandLesiond: key {key!r} missing")
        self.randomize()
        brain = d.get(self.brain_mask_key) if self.brain_mask_key else None
        img, mask = self.lesion(d[key], brain_mask=brain, randomize=False)
        d[key] = img
        old = d.get(self.mask_key)
        if isinstance(old, torch.Tensor) and old.shape == mask.shape:
            mask = torch.maximum(mask, old.float().to(mask.device))
            if isinstance(old, MetaTensor) and not isinstance(mask, MetaTensor):
                mask = MetaTensor(mask, meta=old.meta)
        d[self.mask_key] = mask
        if self.lesion.last_kind is not None:
            if self.label_key is not None:
                d[self.label_key] = 1
            if self.semi_target_value is not None:
                d["semi_target"] = int(self.semi_target_value)
            if "has_mask" in d:
                d["has_mask"] = 1
        if self.kind_key is not None:
            d[self.kind_key] = self.lesion.last_kind or ""
        return d


RandLesionD = RandLesionDict = RandLesiond
