"""The preprocessing chain: one invertible MONAI ``Compose`` built from a config dict.

The config is the ``preprocessing:`` section of a YAML config. Keys (defaults in
:data:`PREPROCESSING_DEFAULTS`, which are also the demo cohort's, :data:`DEMO_PREPROCESSING`)::

    spacing: [4.0, 4.0, 4.0]    # mm, target voxel size (null: keep the input's)
    anti_alias: true            # Gaussian low-pass of images before downsampling to spacing (data.antialias)
    orientation: RAS            # axcodes; RAS puts the axial (S) axis LAST
    intensity:
      lower: 1.0                # percentile mapped to 0
      upper: 50.0               # percentile mapped to upper_value: the brain's median ...
      upper_value: 0.5          # ... at 0.5, whatever the lesion load; brighter voxels keep contrast up to 1
      inside_mask: true         # percentiles of brain voxels only (given mask or estimated foreground)
      clip: true                # clip to [0, 1]
      standardize: null         # "histogram": Nyul-Udupa landmarks of the healthy training scans (data.histogram)
      histogram_percentiles: [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
      histogram_landmarks: null # the standard landmarks; `train` fits them and stores them in the run
    crop_foreground: true       # crop to the brain's bounding box (CropForegroundd)
    crop_margin: 1              # voxels kept around the foreground
    spatial_size: [40, 48, 40]  # fixed model grid (pad/crop, centred) so batches stack; null: pad only
    divisible_by: 8             # 2**levels of the deepest model; spatial_size must be a multiple
    brain_mask_key: null        # item key of a brain mask (e.g. "brain_mask" for BRATS); null: estimate
    contrasts: null             # names of the contrasts each item's ``image`` lists, e.g. [flair, t1]; null: one

The chain, for image keys and mask keys (masks are binarised to {0, 1} on load, resampled
bilinearly and thresholded at 0.5, which keeps partial-volume majority and avoids the up-to-half-voxel
bias of nearest-neighbour downsampling):

``LoadVolumed`` (checked, :class:`~mri_anomaly.data.io.InputFileError` on bad files) ->
``EnsureChannelFirstd`` -> ``Orientationd(RAS)`` -> ``EstimateForegroundd`` (without ``brain_mask_key``: the
brain estimated at the input's resolution, carried as a mask) -> ``AntiAliasd`` (images, when ``anti_alias`` and
the input is finer than ``spacing``) -> ``Spacingd`` (+ ``Binarized`` on masks) ->
``ScaleIntensityInMaskd`` (the estimate dropped after it) -> (``HistogramStandardized`` when ``intensity.standardize: histogram``) ->
``CropForegroundd`` -> ``WarnGridCropd`` (a :class:`GridCropWarning` naming the file when the fixed grid
cuts off more than :data:`CROP_WARNING_FRACTION` of the foreground; arrays untouched) ->
``ResizeWithPadOrCropd(spatial_size)`` (or ``DivisiblePadd(divisible_by)``).

Multi-contrast (``contrasts: [flair, t1]``): every datalist item's ``image`` lists one file per contrast, in
that order; ``LoadVolumed`` resamples contrasts 2.. onto the first contrast's grid and stacks them as channels
(C = ``len(contrasts)``, :func:`preprocessed_channels`; the config's ``in_channels`` must equal it). Intensity
scaling is per channel (each channel's own percentiles inside the brain mask, or inside its own estimated
foreground); the foreground crop and the grid-crop warning use the voxels > 0 in *any* channel; every spatial
step then applies to all channels alike, so maps come back in the first contrast's input space.

Outputs: ``image`` float32 ``MetaTensor`` (C, H, W, D) in [0, 1] (C = 1 unless ``contrasts``), RAS, axial
axis last; masks (1, H, W, D) with values {0, 1}. Every spatial step is a MONAI invertible transform, so a map on the model grid
goes back to the input's grid and affine with :func:`invert_to_input_space` /
:func:`save_map_in_input_space` (MONAI ``Invertd`` replays ``applied_operations`` backwards:
pad/crop -> un-crop -> resample to the input spacing -> reorient).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    CropForegroundd,
    DeleteItemsd,
    DivisiblePadd,
    EnsureChannelFirstd,
    Invertd,
    MapTransform,
    Orientationd,
    ResizeWithPadOrCropd,
    Spacingd,
)

from mri_anomaly.config_checks import ConfigChecker, is_int, is_number, type_name
from mri_anomaly.data.antialias import AntiAliasd
from mri_anomaly.data.histogram import (
    DEFAULT_PERCENTILES,
    HistogramStandardized,
    histogram_config_problems,
    histogram_settings,
)
from mri_anomaly.data.intensity import Binarized, EstimateForegroundd, ScaleIntensityInMaskd
from mri_anomaly.data.loading import LoadVolumed

__all__ = [
    "PREPROCESSING_DEFAULTS",
    "CROP_FRACTION_KEY",
    "DEMO_PREPROCESSING",
    "FULL_RESOLUTION_PREPROCESSING",
    "resolve_preprocessing_config",
    "validate_preprocessing_config",
    "preprocessing",
    "invert_to_input_space",
    "save_map_in_input_space",
    "preprocessed_channels",
    "model_grid_problems",
    "cropped_foreground_fraction",
    "WarnGridCropd",
    "GridCropWarning",
    "CROP_WARNING_FRACTION",
]

BRAIN_ESTIMATE_PREFIX = "estimated_brain_of_"
"""Item key prefix of an image's estimated foreground while the chain carries it (removed after scaling). A
prefix, not a suffix: MONAI's ``Spacingd`` takes every key that starts with ``"<image key>_"`` for a meta dict."""

MAX_GRID = 2048
"""Voxels per axis of the model grid at most (0.1 mm over 20 cm)."""

CROP_WARNING_FRACTION = 0.01
CROP_FRACTION_KEY = "cropped_foreground_fraction"
"""Item key where :class:`WarnGridCropd` records the fraction of the foreground the grid crops (0.0: none);
``mri-anomaly score`` writes it per scan in ``scores.csv``."""
"""A scan whose foreground loses more than this fraction of its voxels to the fixed grid gets a warning."""

PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "spacing": [4.0, 4.0, 4.0],
    "anti_alias": True,
    "orientation": "RAS",
    "intensity": {
        "lower": 1.0,
        "upper": 50.0,
        "upper_value": 0.5,
        "inside_mask": True,
        "clip": True,
        "standardize": None,
        "histogram_percentiles": list(DEFAULT_PERCENTILES),
        "histogram_landmarks": None,
    },
    "crop_foreground": True,
    "crop_margin": 1,
    "spatial_size": [40, 48, 40],
    "divisible_by": 8,
    "brain_mask_key": None,
    "contrasts": None,
}
"""Defaults: 4 mm isotropic RAS on a 40 x 48 x 40 grid (a whole adult brain fits; divisible by 8); one contrast."""

DEMO_PREPROCESSING: dict[str, Any] = copy.deepcopy(PREPROCESSING_DEFAULTS)
"""Recommended for the demo cohort (``mri-anomaly demo-data`` at its default 4 mm spacing)."""

FULL_RESOLUTION_PREPROCESSING: dict[str, Any] = {
    **copy.deepcopy(PREPROCESSING_DEFAULTS),
    "spacing": [1.0, 1.0, 1.0],
    "spatial_size": [160, 192, 160],
    "divisible_by": 32,
}
"""1 mm, 160 x 192 x 160 (GPU runs; ``demo-data --spacing 1``)."""

_INTENSITY_KEYS = {
    "lower",
    "upper",
    "upper_value",
    "inside_mask",
    "clip",
    "standardize",
    "histogram_percentiles",
    "histogram_landmarks",
}


def resolve_preprocessing_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` merged over :data:`PREPROCESSING_DEFAULTS` (the ``intensity`` sub-dict is merged too)."""
    out = copy.deepcopy(PREPROCESSING_DEFAULTS)
    for k, v in dict(config or {}).items():
        if k == "intensity" and isinstance(v, Mapping):
            out["intensity"] = {**out["intensity"], **dict(v)}
        else:
            out[k] = copy.deepcopy(v)
    return out


def validate_preprocessing_config(config: Mapping[str, Any] | None) -> list[str]:
    """All problems of a preprocessing config, as messages (empty list: valid). Unknown keys are problems."""
    if config is not None and not isinstance(config, Mapping):
        return [f"preprocessing: expected a mapping, got {type_name(config)}"]
    chk = ConfigChecker()
    raw = dict(config or {})
    for k in raw:
        if k not in PREPROCESSING_DEFAULTS:
            chk.add(f"preprocessing: unknown key {k!r} (known: {sorted(PREPROCESSING_DEFAULTS)})")
    cfg = resolve_preprocessing_config({k: v for k, v in raw.items() if k in PREPROCESSING_DEFAULTS})
    sp = cfg["spacing"]
    if sp is not None:
        if is_number(sp):
            sp = [sp] * 3
        if not (
            isinstance(sp, Sequence) and len(sp) == 3 and all(is_number(s) and 0.1 <= s <= 100 for s in sp)
        ):
            chk.add(
                f"preprocessing.spacing: expected null or 3 numbers from 0.1 to 100 (mm), got {cfg['spacing']!r}"
            )
    ori = cfg["orientation"]
    pair = {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}
    if not (
        isinstance(ori, str)
        and len(ori) == 3
        and all(c in pair for c in ori.upper())
        and len({pair[c] for c in ori.upper()}) == 3
    ):
        chk.add(f"preprocessing.orientation: expected axcodes like 'RAS', got {ori!r}")
    elif ori.upper()[2] not in "SI":
        chk.add(f"preprocessing.orientation: the axial axis (S/I) must be last, got {ori!r}")
    inten = cfg["intensity"]
    if not isinstance(inten, Mapping):
        chk.add(f"preprocessing.intensity: expected a mapping, got {inten!r}")
    else:
        for k in inten:
            if k not in _INTENSITY_KEYS:
                chk.add(f"preprocessing.intensity: unknown key {k!r} (known: {sorted(_INTENSITY_KEYS)})")
        lo, hi = inten.get("lower"), inten.get("upper")
        if not (is_number(lo) and is_number(hi) and 0 <= lo < hi <= 100):
            chk.add(
                f"preprocessing.intensity: need 0 <= lower < upper <= 100, got lower={lo!r}, upper={hi!r}"
            )
        uv = inten.get("upper_value")
        if not (is_number(uv) and 0 < uv <= 1):
            chk.add(f"preprocessing.intensity.upper_value: expected a number in (0, 1], got {uv!r}")
        for k in ("inside_mask", "clip"):
            chk.bool_(inten, k, "preprocessing.intensity.")
        chk.problems.extend(histogram_config_problems(inten))
    chk.bool_(cfg, "anti_alias", "preprocessing.")
    chk.bool_(cfg, "crop_foreground", "preprocessing.")
    chk.int_(cfg, "crop_margin", "preprocessing.", minimum=0)
    k = cfg["divisible_by"]
    if not (is_int(k) and 1 <= k <= MAX_GRID):
        chk.add(f"preprocessing.divisible_by: expected an integer from 1 to {MAX_GRID}, got {k!r}")
        k = None
    ss = cfg["spatial_size"]
    if ss is not None:
        if not (
            isinstance(ss, Sequence) and len(ss) == 3 and all(is_int(s) and 0 < s <= MAX_GRID for s in ss)
        ):
            chk.add(
                f"preprocessing.spatial_size: expected null or 3 integers from 1 to {MAX_GRID}, got {ss!r}"
            )
        elif k is not None and any(s % k for s in ss):
            chk.add(f"preprocessing.spatial_size: {list(ss)} is not divisible by divisible_by={k}")
    bm = cfg["brain_mask_key"]
    if bm is not None and not (isinstance(bm, str) and bm):
        chk.add(f"preprocessing.brain_mask_key: expected null or an item key, got {bm!r}")
    con = cfg["contrasts"]
    if con is not None and not (
        isinstance(con, Sequence)
        and not isinstance(con, str)
        and len(con) >= 1
        and all(isinstance(c, str) and c for c in con)
        and len(set(con)) == len(con)
    ):
        chk.add(
            "preprocessing.contrasts: expected null (one image per item) or a list of distinct contrast names, "
            f"one per image file of each item (e.g. [flair, t1]), got {con!r}"
        )
    return chk.problems


def preprocessed_channels(config: Mapping[str, Any] | None = None) -> int:
    """Channels of the preprocessed ``image``: the number of ``contrasts`` (image files per datalist item), else 1."""
    contrasts = resolve_preprocessing_config(config)["contrasts"]
    return len(contrasts) if contrasts else 1


def model_grid_problems(
    config: Mapping[str, Any] | None, spatial_dims: int, divisor: int, reason: str
) -> list[str]:
    """Problems of a (valid) preprocessing config's model grid for a network needing multiples of ``divisor``.

    Args:
        config: the ``preprocessing:`` section (defaults filled in here).
        spatial_dims: 2 (the network sees axial slices: the first two axes) or 3 (all three axes).
        divisor: every axis the network sees must be a multiple of this.
        reason: what asks for it (``"model.levels=4 (...)"``), for the message.

    Returns:
        messages naming the preprocessing key (empty: the network takes this grid).
    """
    cfg = resolve_preprocessing_config(config)
    ss, k = cfg["spatial_size"], cfg["divisible_by"]
    if ss is not None:
        seen = list(ss)[:2] if spatial_dims == 2 else list(ss)
        if any(s % divisor for s in seen):
            fixed = [max(divisor, int(round(s / divisor)) * divisor) for s in seen] + list(ss)[len(seen) :]
            what = f"has slice axes {seen}" if spatial_dims == 2 else "is"
            return [
                f"preprocessing.spatial_size: {list(ss)} {what} not divisible by {divisor}, which {reason} "
                f"needs; use e.g. {fixed} or a shallower model"
            ]
    elif k % divisor:
        return [
            f"preprocessing.divisible_by: {k} pads the grid to multiples of {k} (spatial_size is null), but {reason} "
            f"needs multiples of {divisor}; use divisible_by: {divisor}"
        ]
    return []


class GridCropWarning(UserWarning):
    """The fixed model grid cut off part of a scan's foreground (the centre crop of ``spatial_size``)."""


def cropped_foreground_fraction(foreground: torch.Tensor | np.ndarray, spatial_size: Sequence[int]) -> float:
    """Fraction of the foreground voxels outside the centre crop to ``spatial_size`` (what
    ``ResizeWithPadOrCrop`` keeps).

    Args:
        foreground: (C, X, Y, Z) or (X, Y, Z); voxels > 0 are foreground.
        spatial_size: the model grid (X', Y', Z').

    Returns:
        ``lost / total`` in [0, 1] (0 for an empty foreground or a grid that holds it all).
    """
    fg = torch.as_tensor(foreground.as_tensor() if isinstance(foreground, MetaTensor) else foreground) > 0
    if fg.ndim == len(spatial_size) + 1:
        fg = fg.any(0)
    total = int(fg.sum())
    if total == 0:
        return 0.0
    window = CenterSpatialCrop(list(spatial_size)).compute_slices(list(fg.shape))
    return float(total - int(fg[tuple(window)].sum())) / total


class WarnGridCropd(MapTransform):
    """Warn (:class:`GridCropWarning`, naming the file) when the next centre crop to ``spatial_size`` cuts off
    more than ``threshold`` of the foreground of ``source_key``, and record that fraction under
    :data:`CROP_FRACTION_KEY` (0.0 when nothing is cropped). The arrays pass unchanged.

    Args:
        source_key: the item key whose voxels > 0 are the foreground (the image, or the brain mask).
        spatial_size: the model grid the next transform crops/pads to.
        threshold: fraction of foreground voxels above which it warns.
        image_key: the image whose file the warning names.
    """

    def __init__(
        self,
        source_key: str,
        spatial_size: Sequence[int],
        threshold: float = CROP_WARNING_FRACTION,
        image_key: str = "image",
    ) -> None:
        super().__init__([source_key])
        self.source_key, self.spatial_size, self.threshold = source_key, list(spatial_size), float(threshold)
        self.image_key = image_key

    def __call__(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        source = data[self.source_key]
        lost = 0.0
        if any(s > t for s, t in zip(source.shape[1:], self.spatial_size)):
            lost = cropped_foreground_fraction(source, self.spatial_size)
            if lost > self.threshold:
                meta = getattr(data.get(self.image_key), "meta", None) or {}
                path = meta.get("filename_or_obj") or data.get("image_path") or "<image>"
                warnings.warn(
                    f"{path}: the model grid {self.spatial_size} crops {100 * lost:.1f}% of the foreground "
                    f"(foreground box {list(source.shape[1:])} voxels); raise preprocessing.spatial_size or the "
                    "spacing to keep the whole anatomy",
                    GridCropWarning,
                    stacklevel=2,
                )
        data = dict(data)
        data[CROP_FRACTION_KEY] = lost
        return data


def _positive(x: torch.Tensor) -> torch.Tensor:
    return x > 0


def preprocessing(
    config: Mapping[str, Any] | None = None,
    keys: Sequence[str] = ("image", "mask"),
    image_keys: Sequence[str] = ("image",),
) -> Compose:
    """The invertible preprocessing ``Compose`` for dictionary items of file paths.

    Args:
        config: preprocessing config (see the module docstring); missing keys take the defaults.
        keys: item keys to load and transform. Keys in ``image_keys`` are images (bilinear, must be
            present); the others are masks (nearest, binarised, may be absent from an item). The
            config's ``brain_mask_key`` is added as a mask key.
        image_keys: which of ``keys`` are images; the first drives the foreground crop when there is
            no brain mask (voxels > 0 in any of its channels).

    Returns:
        ``Compose``: ``{"image": path or [path, ...], ...}`` -> ``{"image": MetaTensor (C, H, W, D) float32 in
        [0, 1], ...}`` (C: the item's number of image files; :func:`preprocessed_channels` of the config).

    Raises:
        ValueError: the config is invalid (all problems listed).
    """
    problems = validate_preprocessing_config(config)
    if problems:
        raise ValueError("invalid preprocessing config:\n  " + "\n  ".join(problems))
    cfg = resolve_preprocessing_config(config)
    imgs = [k for k in keys if k in image_keys]
    if not imgs:
        raise ValueError(f"no image key among keys={list(keys)} (image_keys={list(image_keys)})")
    masks = [k for k in keys if k not in image_keys]
    bm = cfg["brain_mask_key"]
    if bm is not None and bm not in masks:
        masks.append(bm)
    it = cfg["intensity"]
    # Without a brain mask, each image's foreground is estimated at the input's resolution and resampled like a
    # mask (intensity module: EstimateForegroundd); it only serves the intensity scaling and is dropped after.
    estimates = {k: f"{BRAIN_ESTIMATE_PREFIX}{k}" for k in imgs} if bm is None and it["inside_mask"] else {}
    all_keys = imgs + masks
    resampled = all_keys + list(estimates.values())
    resampled_masks = masks + list(estimates.values())
    modes = ["bilinear"] * len(resampled)  # masks: bilinear then > 0.5 (no nearest-neighbour bias)
    t: list[Any] = [LoadVolumed(imgs)]
    if masks:
        t.append(LoadVolumed(masks, mask_keys=masks, allow_missing_keys=True))
    t += [
        EnsureChannelFirstd(
            imgs, channel_dim=None
        ),  # LoadVolume marks "no channel", or 0 for stacked contrasts
        *([EnsureChannelFirstd(masks, channel_dim="no_channel", allow_missing_keys=True)] if masks else []),
        Orientationd(
            all_keys,
            axcodes=cfg["orientation"].upper(),
            labels=(("L", "R"), ("P", "A"), ("I", "S")),
            allow_missing_keys=True,
        ),
        *[EstimateForegroundd(k, out_key) for k, out_key in estimates.items()],
    ]
    if cfg["spacing"] is not None:
        sp = cfg["spacing"] if isinstance(cfg["spacing"], Sequence) else [cfg["spacing"]] * 3
        pixdim = [float(s) for s in sp]
        if cfg["anti_alias"]:
            t.append(AntiAliasd(imgs, pixdim=pixdim))
        t.append(Spacingd(resampled, pixdim=pixdim, mode=modes, dtype=np.float32, allow_missing_keys=True))
        if resampled_masks:
            t.append(Binarized(resampled_masks, threshold=0.5, allow_missing_keys=True))
    scaling = dict(
        lower=it["lower"],
        upper=it["upper"],
        b_max=float(it["upper_value"]),
        clip_max=1.0,
        inside_mask=it["inside_mask"],
        clip=it["clip"],
    )
    if estimates:
        t += [ScaleIntensityInMaskd([k], mask_key=out_key, **scaling) for k, out_key in estimates.items()]
        t.append(DeleteItemsd(list(estimates.values())))
    else:
        t.append(ScaleIntensityInMaskd(imgs, mask_key=bm, **scaling))
    standardize, percentiles, landmarks = histogram_settings(it)
    if standardize == "histogram":
        if landmarks is None:
            raise ValueError(
                "preprocessing.intensity.standardize is 'histogram' but histogram_landmarks is null: "
                "`mri-anomaly train` fits them on the healthy training scans (or give them in the config)"
            )
        t.append(
            HistogramStandardized(
                imgs, mask_key=bm, landmarks=landmarks, percentiles=percentiles, clip=bool(it["clip"])
            )
        )
    if cfg["crop_foreground"]:
        t.append(
            CropForegroundd(
                all_keys,
                source_key=bm or imgs[0],
                select_fn=_positive,
                margin=int(cfg["crop_margin"]),
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
                allow_missing_keys=True,
            )
        )
    if cfg["spatial_size"] is not None:
        t.append(WarnGridCropd(bm or imgs[0], cfg["spatial_size"], image_key=imgs[0]))
        t.append(
            ResizeWithPadOrCropd(all_keys, spatial_size=list(cfg["spatial_size"]), allow_missing_keys=True)
        )
    else:
        t.append(DivisiblePadd(all_keys, k=int(cfg["divisible_by"]), allow_missing_keys=True))
    return Compose(t)


def invert_to_input_space(
    map_: torch.Tensor,
    item: Mapping[str, Any],
    transform: Compose,
    key: str = "image",
    nearest: bool = False,
) -> MetaTensor:
    """Take a map on the model grid back to the grid and affine of the input file of ``item[key]``.

    Args:
        map_: (1, H, W, D) on the model grid (the grid of the preprocessed ``item[key]``).
        item: the preprocessed item (one element, not a batch; ``monai.data.decollate_batch`` splits a
            batch) whose ``item[key]`` carries ``applied_operations``.
        transform: the ``Compose`` from :func:`preprocessing` that produced ``item``.
        key: the image key whose spatial operations are undone.
        nearest: nearest-neighbour interpolation (for label maps); bilinear otherwise.

    Returns:
        ``MetaTensor`` (1, X, Y, Z) on the input's grid; ``.affine`` is the input's affine.

    Raises:
        ValueError: ``item[key]`` carries no spatial operations to undo, or the shapes disagree.
    """
    ref = item[key]
    if not isinstance(ref, MetaTensor) or not ref.applied_operations:
        raise ValueError(f"item[{key!r}] is not a preprocessed MetaTensor with applied_operations to invert")
    m = torch.as_tensor(map_).detach().float().cpu()
    if m.ndim == ref.ndim - 1:
        m = m[None]
    if tuple(m.shape[1:]) != tuple(ref.shape[1:]) or m.shape[0] != 1:
        raise ValueError(f"map shape {tuple(map_.shape)} does not match the model grid {tuple(ref.shape)}")
    pred = MetaTensor(m, meta=copy.deepcopy(ref.meta))
    inv = Invertd("pred", transform=transform, orig_keys=key, nearest_interp=nearest, to_tensor=True)
    out = inv({"pred": pred, key: ref})["pred"]
    if not isinstance(out, MetaTensor):
        out = MetaTensor(out, meta=ref.meta)
    return out


def save_map_in_input_space(
    map_: torch.Tensor,
    item: Mapping[str, Any],
    path: str | os.PathLike,
    transform: Compose,
    key: str = "image",
    nearest: bool = False,
) -> Path:
    """Write a model-grid map (1, H, W, D) as float32 NIfTI on the input's grid with the input's affine.

    Args: as :func:`invert_to_input_space`; ``path`` the output ``.nii.gz`` (parent folders are made).

    Returns:
        the written path.
    """
    out = invert_to_input_space(map_, item, transform, key=key, nearest=nearest)
    arr = out.detach().cpu().numpy()[0].astype(np.float32)
    affine = np.asarray(out.affine, dtype=np.float64)
    orig = item[key].meta.get("original_affine")
    if orig is not None:
        orig = np.asarray(orig, dtype=np.float64)
        if np.allclose(orig, affine, atol=1e-3):
            affine = orig  # the exact input affine, not one recomposed in float32
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(p))
    return p
