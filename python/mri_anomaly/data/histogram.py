"""Histogram (intensity) standardisation: Nyúl & Udupa's piecewise-linear landmark mapping.

Scans from other scanners and sites keep other intensity distributions after the percentile scaling of
:class:`~mri_anomaly.data.intensity.ScaleIntensityInMask` (which only fixes two points: the brain's
``lower``/``upper`` percentiles become 0/1). Nyúl & Udupa (IEEE TMI 2000; torchio's
``HistogramStandardization`` is the well-kept reference implementation) map every scan onto a *standard*
histogram learned on the training cohort:

* **landmarks of a scan**: the ``histogram_percentiles`` (default 1, 10, 20, ..., 90, 99) of its brain
  voxels *after* the percentile scaling. Brain = the voxels above 0 (the brain above its ``lower``
  percentile: the background and the lowest brain voxels are 0 after the scaling, or below 0 without
  clipping), inside the brain mask when the config names one (``brain_mask_key``);
* **standard landmarks**: the mean of the landmarks of the healthy training scans (as torchio averages
  over scans), fitted by ``mri-anomaly train`` (:mod:`~mri_anomaly.data.histogram_fit`) and stored in the
  run's config (``preprocessing.intensity.histogram_landmarks``), so scoring, evaluation, the bundle and the
  export apply exactly the same mapping;
* **the mapping** (:func:`standardize`): piecewise linear through the knots ``(0, 0)``, ``(l_i, s_i)``
  and ``(1, 1)`` (``l`` the scan's landmarks, ``s`` the standard ones). 0 and 1 are the percentile
  scaling's fixed points, the same for every scan, so they are kept: a zero background stays exactly 0
  and, with ``clip``, the output stays in [0, 1] (Glow's dequantisation needs it). A landmark closer than
  :data:`MIN_GAP` to 0, 1 or the previous knot is dropped (a spike in the histogram would otherwise give
  a near-vertical segment). Beyond the outer knots (only without ``clip``) the outer segments are
  extended linearly, as torchio does; with ``clip`` the output is clipped to [0, 1].

Config (``preprocessing.intensity``)::

    standardize: null             # "histogram": this module; null: percentile scaling only (default)
    histogram_percentiles: [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    histogram_landmarks: null     # fitted by `train` on the healthy training scans; a list: used as given
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Transform

from mri_anomaly.config_checks import is_number, type_name
from mri_anomaly.data.intensity import MaskedIntensityd
from mri_anomaly.data.io import InputFileError

__all__ = [
    "DEFAULT_PERCENTILES",
    "MIN_GAP",
    "STANDARDIZE_CHOICES",
    "HistogramStandardize",
    "HistogramStandardized",
    "brain_values",
    "scan_landmarks",
    "mapping_knots",
    "standardize",
    "histogram_config_problems",
    "histogram_settings",
    "needs_landmarks",
    "with_landmarks",
    "reuse_landmarks",
    "healthy_items",
]

DEFAULT_PERCENTILES: list[float] = [1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0]
"""Nyúl & Udupa's deciles plus the 1st/99th percentiles (torchio's default landmarks)."""

MIN_GAP = 1e-3
"""Knots of the mapping closer than this (on the [0, 1] scale) to 0, 1 or the previous knot are dropped."""

STANDARDIZE_CHOICES = (None, "histogram")

_MAX_VALUES = 2_000_000


def _filename(img: torch.Tensor) -> str | None:
    return img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None


def brain_values(img: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """The brain voxels of a percentile-scaled image: ``img > 0`` (and inside ``mask`` when given), as float64.

    Args:
        img: (C, *spatial) or any shape, after :class:`~mri_anomaly.data.intensity.ScaleIntensityInMask`.
        mask: broadcastable to ``img``; nonzero = brain.
    """
    x = torch.as_tensor(img).detach().float()
    region = x > 0
    if mask is not None:
        region &= torch.as_tensor(mask).detach().expand_as(x) > 0.5
    vals = x[region].cpu().numpy().astype(np.float64)
    if vals.size > _MAX_VALUES:  # the same deterministic subsampling as the percentile scaling
        vals = vals[:: vals.size // _MAX_VALUES + 1]
    return vals


def scan_landmarks(
    img: torch.Tensor, percentiles: Sequence[float] = DEFAULT_PERCENTILES, mask: torch.Tensor | None = None
) -> np.ndarray:
    """The landmarks of one scan: the ``percentiles`` of its brain voxels (:func:`brain_values`).

    Raises:
        InputFileError: no voxel of the brain is above 0 (nothing to standardise).
    """
    vals = brain_values(img, mask)
    if vals.size == 0:
        raise InputFileError(_filename(img), "no brain voxels above 0 after the intensity scaling")
    return np.percentile(vals, [float(p) for p in percentiles])


def mapping_knots(
    landmarks: Sequence[float], standard: Sequence[float], min_gap: float = MIN_GAP
) -> tuple[np.ndarray, np.ndarray]:
    """The knots ``(x, y)`` of the piecewise-linear map of a scan with ``landmarks`` onto ``standard``.

    ``(0, 0)`` and ``(1, 1)`` are always knots; a landmark within ``min_gap`` of 0, 1 or of the previous kept
    knot is dropped. Returns ``x`` strictly increasing, ``y`` alongside.
    """
    lm, st = np.asarray(landmarks, dtype=np.float64), np.asarray(standard, dtype=np.float64)
    if lm.shape != st.shape:
        raise ValueError(f"{lm.size} landmarks but {st.size} standard landmarks")
    pts = [(0.0, 0.0), (1.0, 1.0)]
    pts += [(a, b) for a, b in zip(lm, st) if abs(a) >= min_gap and abs(a - 1.0) >= min_gap]
    pts.sort(key=lambda p: p[0])
    kept: list[tuple[float, float]] = []
    for x, y in pts:  # landmarks near an anchor are gone, so only landmarks are dropped here
        if not kept or x - kept[-1][0] >= min_gap:
            kept.append((float(x), float(y)))
    xs, ys = (np.array(v, dtype=np.float64) for v in zip(*kept))
    return xs, ys


def standardize(
    img: torch.Tensor,
    standard: Sequence[float],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    mask: torch.Tensor | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Map ``img`` (after the percentile scaling) piecewise linearly from its landmarks onto ``standard``.

    Voxels equal to 0 stay exactly 0; with ``clip`` the output is clipped to [0, 1]. Same type as ``img``
    (``MetaTensor`` metadata kept), float32.
    """
    lm = scan_landmarks(img, percentiles, mask)
    xs, ys = mapping_knots(lm, standard)
    x = img.float()
    plain = x.as_tensor() if isinstance(x, MetaTensor) else x
    xd = plain.detach().to(torch.float64)
    kx, ky = torch.as_tensor(xs, dtype=torch.float64), torch.as_tensor(ys, dtype=torch.float64)
    slope = (ky[1:] - ky[:-1]) / (kx[1:] - kx[:-1])
    seg = torch.bucketize(xd, kx[1:-1].contiguous(), right=True)  # 0 .. n_knots - 2 (ends extend)
    out = ky[seg] + slope[seg] * (xd - kx[seg])
    out = torch.where(xd == 0, torch.zeros_like(out), out)
    if clip:
        out = out.clamp(0.0, 1.0)
    out = out.to(torch.float32)
    if isinstance(img, MetaTensor):
        return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
    return out


class HistogramStandardize(Transform):
    """Nyúl–Udupa standardisation of a percentile-scaled image onto fitted standard landmarks (:func:`standardize`).

    Args:
        landmarks: the standard landmarks (one per percentile, non-decreasing).
        percentiles: the percentiles (0-100, strictly increasing) the landmarks belong to.
        clip: clip the output to [0, 1].
    """

    def __init__(
        self,
        landmarks: Sequence[float],
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        clip: bool = True,
    ) -> None:
        if len(landmarks) != len(percentiles):
            raise ValueError(f"{len(landmarks)} landmarks for {len(percentiles)} percentiles")
        self.landmarks = [float(v) for v in landmarks]
        self.percentiles = [float(p) for p in percentiles]
        self.clip = bool(clip)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return standardize(img, self.landmarks, self.percentiles, mask, self.clip)


class HistogramStandardized(MaskedIntensityd):
    """Dictionary twin of :class:`HistogramStandardize`.

    Args:
        keys: image keys. mask_key: the brain mask key (None: brain = voxels above 0; named and absent from an
            item: ``KeyError``).
        kwargs: passed to :class:`HistogramStandardize`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, HistogramStandardize(**kwargs), mask_key, allow_missing_keys)


# ------------------------------------------------------------------------------------------------ config
def histogram_settings(
    intensity: Mapping[str, Any] | None,
) -> tuple[str | None, list[float], list[float] | None]:
    """``(standardize, percentiles, landmarks)`` of a ``preprocessing.intensity`` mapping, defaults filled in."""
    it = dict(intensity or {})
    pct = it.get("histogram_percentiles")
    lms = it.get("histogram_landmarks")
    return (
        it.get("standardize"),
        [float(p) for p in (DEFAULT_PERCENTILES if pct is None else pct)],
        None if lms is None else [float(v) for v in lms],
    )


def _numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(is_number(x) and np.isfinite(x) for x in v)


def histogram_config_problems(intensity: Mapping[str, Any]) -> list[str]:
    """Problems of the standardisation keys of a ``preprocessing.intensity`` mapping (empty: valid)."""
    where = "preprocessing.intensity."
    problems = []
    std = intensity.get("standardize")
    if std not in STANDARDIZE_CHOICES:
        problems.append(f"{where}standardize: expected null or 'histogram', got {type_name(std)} {std!r}")
    pct = intensity.get("histogram_percentiles", DEFAULT_PERCENTILES)
    pct_ok = _numbers(pct)
    if not pct_ok:
        problems.append(f"{where}histogram_percentiles: expected a non-empty list of numbers, got {pct!r}")
    elif not (all(0 < p < 100 for p in pct) and all(a < b for a, b in zip(pct, pct[1:]))):
        problems.append(
            f"{where}histogram_percentiles: need strictly increasing numbers in (0, 100), got {list(pct)}"
        )
        pct_ok = False
    lms = intensity.get("histogram_landmarks")
    if lms is not None:
        if not _numbers(lms):
            problems.append(f"{where}histogram_landmarks: expected null or a list of numbers, got {lms!r}")
        elif any(b < a for a, b in zip(lms, lms[1:])):
            problems.append(f"{where}histogram_landmarks: must be non-decreasing, got {list(lms)}")
        elif pct_ok and len(lms) != len(pct):
            problems.append(
                f"{where}histogram_landmarks: {len(lms)} landmarks for {len(pct)} histogram_percentiles "
                "(one per percentile)"
            )
    return problems


def needs_landmarks(config: Mapping[str, Any]) -> bool:
    """A full config asks for histogram standardisation but carries no landmarks yet (``train`` fits them)."""
    std, _, lms = histogram_settings((config.get("preprocessing") or {}).get("intensity"))
    return std == "histogram" and lms is None


def with_landmarks(config: Mapping[str, Any], landmarks: Sequence[float]) -> dict[str, Any]:
    """A copy of the full ``config`` with ``preprocessing.intensity.histogram_landmarks`` set."""
    out = copy.deepcopy(dict(config))
    pre = dict(out.get("preprocessing") or {})
    intensity = dict(pre.get("intensity") or {})
    intensity["histogram_landmarks"] = [float(v) for v in landmarks]
    pre["intensity"] = intensity
    out["preprocessing"] = pre
    return out


def reuse_landmarks(config: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """On resume: ``config`` with the landmarks of the ``stored`` (checkpoint) config when it needs them and the
    stored config fitted them for the same percentiles; otherwise ``config`` unchanged (a difference is then
    reported by the resume check)."""
    if not needs_landmarks(config):
        return dict(config)
    _, pct, _ = histogram_settings((config.get("preprocessing") or {}).get("intensity"))
    s_std, s_pct, s_lms = histogram_settings((stored.get("preprocessing") or {}).get("intensity"))
    if s_std == "histogram" and s_lms is not None and s_pct == pct:
        return with_landmarks(config, s_lms)
    return dict(config)


def healthy_items(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The items labelled healthy (``label`` 0 or absent) that are not labelled anomalies for Deep SAD."""
    out = []
    for it in items:
        label = it.get("label")
        if label not in (None, 0, "0") or it.get("semi_target") in (-1, "-1"):
            continue
        out.append(dict(it))
    return out
