"""Fitting the standard landmarks of histogram standardisation (:mod:`mri_anomaly.data.histogram`) on scans.

Apart from :mod:`~mri_anomaly.data.histogram` because it runs the preprocessing chain, which itself uses the
standardisation transform.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import Compose

from mri_anomaly.data.histogram import histogram_settings, scan_landmarks
from mri_anomaly.data.intensity import ScaleIntensityInMaskd
from mri_anomaly.data.preprocessing import preprocessing, resolve_preprocessing_config

__all__ = ["scaled_volumes", "fit_standard_landmarks"]


def scaled_volumes(preprocessing_config: Mapping[str, Any] | None) -> tuple[Compose, str | None]:
    """The preprocessing chain up to (and including) the percentile scaling, for ``image`` (and the brain mask),
    and the brain-mask key. What the landmarks are measured on."""
    cfg = resolve_preprocessing_config(preprocessing_config)
    cfg["intensity"] = {**cfg["intensity"], "standardize": None}
    full = preprocessing(cfg, keys=("image",))
    cut = next(i for i, t in enumerate(full.transforms) if isinstance(t, ScaleIntensityInMaskd))
    return Compose(full.transforms[: cut + 1]), cfg["brain_mask_key"]


def fit_standard_landmarks(
    items: Sequence[Mapping[str, Any]],
    preprocessing_config: Mapping[str, Any] | None,
    progress: bool = False,
) -> list[float]:
    """The standard landmarks: the mean over ``items`` (healthy scans) of their landmarks.

    One pass over the scans, each loaded with the preprocessing up to the percentile scaling.

    Raises:
        ValueError: no items. InputFileError: a scan cannot be read or has no brain voxels.
    """
    if not items:
        raise ValueError("no scans to fit the histogram landmarks on")
    chain, bm = scaled_volumes(preprocessing_config)
    cfg = dict(preprocessing_config or {})
    _, pct, _ = histogram_settings(cfg.get("intensity"))
    iterator: Iterable[Mapping[str, Any]] = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc="fit intensity landmarks", unit="vol", dynamic_ncols=True)
    per_scan = []
    for it in iterator:
        keys = ["image"] + ([bm] if bm else [])
        d = chain({k: it[k] for k in keys if k in it})
        per_scan.append(scan_landmarks(d["image"], pct, d.get(bm) if bm else None))
    return [float(v) for v in np.mean(np.stack(per_scan), axis=0)]
