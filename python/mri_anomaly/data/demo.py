"""The demo cohort: synthetic subjects built from the real MNI ICBM152 2009 template and tissue maps.

``make_demo_cohort(out_dir)`` (CLI ``mri-anomaly demo-data``) writes NIfTI volumes, voxel masks and
``datalist.json``; the same seed gives the same arrays. Anatomy comes from the MNI ICBM152 2009c
(nonlinear symmetric) T1 template, its grey- and white-matter probability maps and brain mask, which
nilearn ships inside its package (``nilearn.datasets.load_mni152_*``, no download). Everything is
computed once per subject by a single resampling of the template through the subject's transform.

Healthy subjects vary as a real cohort does:

* anatomy: an affine part (global size 0.87-0.97 of MNI, which is larger than most adult brains,
  with +-3 % per axis, rotations up to 5 deg, shifts up to 4 mm) and a smooth non-linear
  displacement (a random field on a coarse 5 x 6 x 5 grid, cubic-interpolated, ~2.5 mm s.d.);
* contrast: ``t1`` uses the template's own T1 intensities (with a random gamma and small GM/WM
  offsets); ``t2`` (bright CSF, GM > WM) and ``flair`` (dark CSF, GM > WM) are synthesised from the
  tissue maps with +-5 % jitter of each tissue's level;
* individual tissue texture: the template's GM/WM/CSF fractions are a 152-subject average, smooth where one
  brain has sulci; each subject's fractions are multiplied by exp(0.4 x a unit random field correlated over
  ~4 mm) and renormalised, which varies the partial-volume mixtures (cortex, deep grey matter, ventricle edges)
  and leaves pure tissue alone (``_texture``; ``t1`` images, which keep the template's T1, are rescaled by the
  ratio of T1-weighted mixtures of the textured and the template's fractions);
* periventricular signal (FLAIR and T2): the white matter next to the lateral ventricles is brighter, most at
  the frontal and occipital horns ("caps") and thinly along the bodies ("bands"), the normal finding (Fazekas
  0-1) that lesion detectors otherwise take for lesions; the amplitude is uniform in 0-0.3 of the tissue scale
  (WM 0.48, GM 0.62), so some subjects have none (``_periventricular_weight``);
* a smooth multiplicative bias field (log-amplitude ~0.12), a scanner gain (600-1400 arbitrary units)
  and Rician noise (1-3 % of the brain median); the volume is skull-stripped: zero in every voxel less than half
  brain, the edge a real skull-stripped scan has after the runs' preprocessing (its brain mask resampled to the
  grid, > 0.5).

``smooth_anatomy=True`` (CLI ``--smooth-anatomy``) leaves out the texture and periventricular signal and writes,
for the same seed and with ``skull_strip_fraction=0.05``, exactly the arrays of the cohort before they were added.

Anomalous subjects (``test`` section, ``label`` 1, voxel ``mask``) cycle through three kinds
(:class:`~mri_anomaly.data.lesions.RandLesion`), inserted before bias and noise so they are imaged
like tissue:

* ``ms``: real multiple-sclerosis lesion patterns: the consensus masks of Lesjak et al. 2017 (patients
  01-20 except 07, which stays an unseen real test case), on the same MNI space, carried through the
  subject's transform (resampling by affine), hyperintense in FLAIR/T2, hypointense in T1; their
  lesion loads span 875-52190 mm^3. They are read from ``../shared/data/ms-lesjak2017-mni`` (or
  ``$MRI_ANOMALY_SHARED_DATA``); if absent the cohort falls back to the other two kinds with a warning;
* ``tumour``: a mass (radius 10-22 mm) with necrotic core, rim and oedema, and mass effect;
* ``focal``: 1-4 small spheroids (radius ~3-8 mm).

Each lesion is imaged with **partial volume** (``partial_volume_lesions``, default on): a voxel changes by the
fraction of it the lesion fills (MS: the 1 mm mask's fraction, block-averaged and anti-aliased like the template;
focal lesions and tumour parts: their shape at 3 points per voxel axis), while the mask keeps the voxels at least a
quarter filled (MS) or whose centre the lesion covers. Full contrast in every mask voxel (``False``, CLI
``--full-contrast-lesions``, the cohort before 2026-12-02, the same subjects and masks) made the 4 mm MS lesions
stand out by intensity alone with voxel AP 0.96-1.00 where the real MS case through the same preprocessing has
0.12 (``benchmarks/lesion_conspicuity.py``).

The ``general`` section (no labels) is a **broader** healthy distribution for likelihood ratios
(Schirrmeister et al. 2020 train a second model on a general distribution and score
``log p_general - log p_in``): all three contrasts mixed, twice the deformation, rotations up to
12 deg, size 0.82-1.02, bias log-amplitude ~0.3, noise up to 6 %, gamma 0.7-1.4, texture 0.6,
periventricular signal up to 0.4. It shares
low-level MRI statistics with the in-distribution data but not the contrast or tight anatomy, so
the ratio cancels what is generic about MRI and keeps what is specific to healthy in-distribution
anatomy.

Output layout::

    DIR/images/<subject>.nii.gz      float32, RAS, spacing mm, affine in MNI world coordinates
    DIR/masks/<subject>_mask.nii.gz  uint8 {0, 1} (anomalous subjects)
    DIR/datalist.json                training / validation (healthy), test (healthy + anomalous), general
    DIR/subjects.csv                 subject_id, section, label, contrast, lesion_kind, lesion_variant,
                                     lesion_voxels, lesion_volume_cm3, size_stratum, ms_source
                                     (lesion_variant: focal_opposite = opposite sign; size_stratum: < 1,
                                     1-10, > 10 cm^3 from the measured volume, see SIZE_STRATA)

A multi-contrast cohort (``contrast=("flair", "t1")``, CLI ``--contrast flair,t1``) writes every subject in each
contrast, ``DIR/images/<subject>_<contrast>.nii.gz``, with the same anatomy and the same lesion mask (the lesion's
intensity follows each contrast), and lists them per item, ``"image": [flair, t1]``; its first contrast's images
are exactly those of the single-contrast cohort (the other contrasts draw from their own generator). General
subjects mix contrasts there too (channel k of general subject i is ``CONTRASTS[(i + k) % 3]``).

Defaults (4 mm, 44 x 52 x 46 voxels; 400 healthy: 240 training, 80 validation, 80 test; 144 anomalous test
subjects, 48 per kind, their sizes cycling through the three volume strata; 48 general) take under a minute and
preprocess (``DEMO_PREPROCESSING``) to the 40 x 48 x 40 model grid; ``spacing=1`` makes a
full-resolution cohort (176 x 208 x 184) for GPU runs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from mri_anomaly.data.antialias import antialias_sigma
from mri_anomaly.data.datalist import write_datalist
from mri_anomaly.data.lesions import RandLesion
from mri_anomaly.errors import UserInputError

__all__ = [
    "DEMO_DEFAULTS",
    "SIZE_STRATA",
    "size_stratum",
    "TINY_PREPROCESSING",
    "CONTRASTS",
    "make_demo_cohort",
    "find_ms_lesion_dir",
    "load_ms_lesion_masks",
    "synthesize_subject",
    "demo_grid",
]

CONTRASTS: tuple[str, ...] = ("t1", "t2", "flair")
DEMO_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "healthy": 400,
    "anomalous": 144,
    "general": 48,
    "spacing": 4.0,
    "contrast": "flair",
    "partial_volume_lesions": True,
    "skull_strip_fraction": 0.5,
}
TINY_PREPROCESSING: dict[str, Any] = {
    "spacing": [8.0, 8.0, 8.0],
    "spatial_size": [24, 24, 24],
    "divisible_by": 8,
}
"""For fast tests on a cohort made with ``spacing=8``: 8 mm, 24 x 24 x 24 (merge over PREPROCESSING_DEFAULTS)."""
FOV_MM = np.array([176.0, 208.0, 184.0])
FOV_CENTER_MM = np.array([0.0, -17.0, 5.0])  # centre of the MNI brain mask's bounding box
_SECTION_CODE = {"training": 1, "validation": 2, "test": 3, "anomalous": 4, "general": 5}
_HELD_OUT_MS = {"patient07"}  # the real MS case in ../shared/data: never used as a lesion shape


@dataclass(frozen=True)
class _Variation:
    rot_deg: float = 5.0
    size: tuple[float, float] = (0.87, 0.97)
    axis_jitter: float = 0.03
    shift_mm: float = 4.0
    warp_mm: float = 2.5
    bias: float = 0.12
    noise: tuple[float, float] = (0.01, 0.03)
    gamma: tuple[float, float] = (0.87, 1.15)
    tissue_jitter: float = 0.05
    texture: float = 0.4
    periventricular: tuple[float, float] = (0.0, 0.3)


HEALTHY_VARIATION = _Variation()
GENERAL_VARIATION = _Variation(
    rot_deg=12.0,
    size=(0.82, 1.02),
    axis_jitter=0.05,
    shift_mm=8.0,
    warp_mm=5.0,
    bias=0.3,
    noise=(0.01, 0.06),
    gamma=(0.7, 1.4),
    tissue_jitter=0.12,
    texture=0.6,
    periventricular=(0.0, 0.4),
)
SMOOTH_ANATOMY = {"texture": 0.0, "periventricular": (0.0, 0.0)}
"""Variation fields that turn off the individual tissue texture and periventricular signal (the cohort before them)."""


def demo_grid(spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the demo grid at ``spacing`` mm (a 176 x 208 x 184 mm box around the brain)."""
    shape = tuple(int(np.ceil(f / spacing)) for f in FOV_MM)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = FOV_CENTER_MM - spacing * (np.array(shape) - 1) / 2.0
    return shape, aff  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _template(spacing: float) -> dict[str, Any]:
    """The nilearn MNI152 2009 maps (T1, GM, WM, brain, CSF, periventricular weight), pre-smoothed against aliasing."""
    from nilearn import datasets as nds

    t1 = nds.load_mni152_template(resolution=1)  # the 1 mm files as shipped (resolution=2 resamples slowly)
    maps = {
        "t1": t1,
        "gm": nds.load_mni152_gm_template(resolution=1),
        "wm": nds.load_mni152_wm_template(resolution=1),
        "brain": nds.load_mni152_brain_mask(resolution=1),
    }
    aff = np.asarray(t1.affine, np.float64)
    arrays = {name: np.asarray(img.get_fdata(dtype=np.float32)) for name, img in maps.items()}
    arrays["pv"] = _periventricular_weight(arrays["brain"], arrays["gm"], arrays["wm"], aff)
    res = 1
    if spacing >= 2.5:  # 2 x 2 x 2 block average to 2 mm, then anti-alias at 2 mm
        res = 2
        aff = aff @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    sigma = antialias_sigma([res], [spacing])[0]
    out: dict[str, Any] = {"affine": aff, "res": res}
    for name, a in arrays.items():
        if res == 2:
            a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2, : a.shape[2] // 2 * 2]
            a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean(axis=(1, 3, 5))
        out[name] = ndimage.gaussian_filter(a, sigma) if sigma > 0 else a
    out["brain"] = np.clip(out["brain"], 0, 1)
    out["csf"] = np.clip(out["brain"] - out["gm"] - out["wm"], 0, 1)
    b = out["brain"] > 0.5
    out["t1_ref"] = float(np.median(out["t1"][b]))
    return out


def _periventricular_weight(
    brain: np.ndarray, gm: np.ndarray, wm: np.ndarray, affine: np.ndarray
) -> np.ndarray:
    """Where healthy FLAIR shows periventricular signal, 0-1, on the 1 mm template grid.

    The lateral ventricles are the two largest bodies of CSF (fraction > 0.5) deeper than 15 mm in the brain and
    more than 4 mm off the midline (which leaves out the interhemispheric fissure and the cisterns); the weight is
    the white matter fraction times exp(-d / 3 mm) at distance d from them, strongest at the frontal and occipital
    horns (the "caps" of a normal FLAIR, Fazekas grade 0-1), 40 % of that along the bodies (the thin "bands").
    """
    csf = np.clip(brain - gm - wm, 0, 1)
    depth = ndimage.distance_transform_edt(brain > 0.5)
    x_mm = np.arange(brain.shape[0]) * affine[0, 0] + affine[0, 3]
    vent = (csf > 0.5) & (depth > 15) & (np.abs(x_mm) > 4)[:, None, None]
    labels, n = ndimage.label(vent)
    sizes = ndimage.sum(vent, labels, range(1, n + 1))
    vent = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.5 * sizes.max()))
    distance = ndimage.distance_transform_edt(~vent)
    ys = np.nonzero(vent)[1]
    centre, half = (ys.min() + ys.max()) / 2, (ys.max() - ys.min()) / 2
    horn = np.clip(np.abs(np.arange(brain.shape[1]) - centre) / half, 0, 1) ** 2
    return (np.exp(-distance / 3.0) * ~vent * wm * (0.4 + 0.6 * horn[None, :, None])).astype(np.float32)


def find_ms_lesion_dir() -> Path | None:
    """The folder of the Lesjak et al. MNI lesion masks, or None: ``$MRI_ANOMALY_SHARED_DATA`` or
    ``../shared/data`` beside the checkout (or beside the working directory)."""
    roots = []
    if os.environ.get("MRI_ANOMALY_SHARED_DATA"):
        roots.append(Path(os.environ["MRI_ANOMALY_SHARED_DATA"]))
    roots.append(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    roots.append(Path.cwd().parent / "shared" / "data")
    for r in roots:
        d = r / "ms-lesjak2017-mni" / "lesion_masks_mni"
        if d.is_dir() and any(d.glob("*.nii*")):
            return d
    return None


def _ms_files(ms_dir: Path) -> list[Path]:
    return sorted(p for p in ms_dir.glob("*.nii*") if p.name.split("_")[0] not in _HELD_OUT_MS)


@functools.lru_cache(maxsize=32)
def _ms_mask_source(path: str, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """A lesion mask as a partial-volume fraction map, block-averaged to 2 mm when ``spacing`` >= 2.5 mm
    and smoothed against aliasing; returns (fraction map, its affine)."""
    img = nib.load(path)
    a = (np.asarray(img.dataobj) > 0.5).astype(np.float32)
    aff = np.asarray(img.affine, np.float64)
    if spacing >= 2.5:  # 2 x 2 x 2 block average (exact partial-volume fractions at 2 mm)
        a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2, : a.shape[2] // 2 * 2]
        a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean(axis=(1, 3, 5))
        aff = aff @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    res = float(np.abs(np.linalg.det(aff[:3, :3]))) ** (1 / 3)
    sigma = antialias_sigma([res], [spacing])[0]
    return (ndimage.gaussian_filter(a, sigma) if sigma > 0 else a), aff


def load_ms_lesion_masks(
    affine: np.ndarray,
    shape: tuple[int, ...],
    ms_dir: str | os.PathLike | None = None,
    threshold: float = 0.25,
) -> list[np.ndarray]:
    """The MS consensus masks (MNI space) resampled by affine onto a grid ``(shape, affine)`` in MNI space.

    Args:
        affine: (4, 4) voxel-to-MNI-mm affine of the target grid.
        shape: target spatial shape.
        ms_dir: folder of ``patientXX_lesion_consensus.nii.gz`` (default :func:`find_ms_lesion_dir`).
        threshold: partial-volume fraction above which a target voxel is lesion.

    Returns:
        binary float32 masks of ``shape`` (empty list if the folder is absent); patient07 is held out.
    """
    d = Path(ms_dir) if ms_dir is not None else find_ms_lesion_dir()
    if d is None:
        return []
    spacing = float(np.abs(np.linalg.det(np.asarray(affine)[:3, :3]))) ** (1 / 3)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    out = []
    for f in _ms_files(d):
        src, saff = _ms_mask_source(str(f), spacing)
        vox = (world - saff[:3, 3]) @ np.linalg.inv(saff[:3, :3]).T
        m = ndimage.map_coordinates(src, vox.T, order=1, mode="constant").reshape(shape)
        out.append((m >= threshold).astype(np.float32))
    return out


def _smooth_field(
    rng: np.random.Generator, coarse: tuple[int, ...], shape: tuple[int, ...], std: float
) -> np.ndarray:
    c = rng.standard_normal(coarse) * std
    b = [_upsampler(n, s) for n, s in zip(coarse, shape)]  # separable cubic interpolation
    return np.einsum("ijk,ai,bj,ck->abc", c, *b, optimize=True)


@functools.lru_cache(maxsize=64)
def _upsampler(n: int, s: int) -> np.ndarray:
    """(s, n) matrix: cubic-spline upsampling of n coarse values to s samples (``ndimage.zoom`` of the identity)."""
    return ndimage.zoom(np.eye(n), (s / n, 1.0), order=3, mode="nearest")[:s]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _single_threaded_blas():
    """Tiny matrix products spin OpenBLAS threads for nothing (5x slower on a busy 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def synthesize_subject(
    rng: np.random.Generator,
    spacing: float,
    contrast: str,
    variation: _Variation = HEALTHY_VARIATION,
    lesion: str | None = None,
    ms_files: list[Path] | None = None,
    lesion_size: str = "any",
    extra_contrasts: Sequence[str] = (),
    extra_rng: np.random.Generator | None = None,
    partial_volume: bool = True,
    skull_strip_fraction: float = DEMO_DEFAULTS["skull_strip_fraction"],
) -> dict[str, Any]:
    """One synthetic subject on the demo grid, in one contrast or several.

    Args:
        rng: the subject's generator (all its randomness comes from it).
        spacing: voxel size in mm.
        contrast: ``t1``, ``t2`` or ``flair``.
        variation: how much subjects vary (healthy or general).
        lesion: None (healthy) or a kind of :data:`~mri_anomaly.data.lesions.LESION_KINDS`.
        ms_files: candidate MS lesion masks (for ``lesion="ms"``).
        lesion_size: ``"any"`` or a stratum of :data:`SIZE_STRATA` the lesion is drawn for (its sizes are
            chosen so that the lesion volume usually falls in that stratum; the actual volume is measured
            and recorded, not assumed).
        extra_contrasts: further contrasts of the same subject: the same anatomy (transform, tissue maps) and
            the same lesion (mask and mass effect; intensities per contrast), their own tissue contrast, bias
            field, gain and noise, drawn from ``extra_rng``; ``rng``'s draws are those of the single-contrast
            subject, so its first image does not depend on them.
        extra_rng: the generator of the extra contrasts (default: one spawned from ``rng``'s seed sequence,
            which draws nothing from ``rng``).
        partial_volume: image the lesion with partial volume (``RandLesion(partial_volume=True)``: each voxel
            changes by the fraction of it the lesion fills); the subject, its mask and its draws are unchanged.
        skull_strip_fraction: voxels less than this fraction brain are 0 in the image and the mask (the brain
            fraction is the MNI brain mask's, warped and resampled with the subject); 0.05 writes the arrays of
            before 2026-12-03, whose edge faded out over the partly-brain voxels.

    Returns:
        ``{"image": (X, Y, Z) float32, "images": [image, *extra images], "contrasts": [contrast, *extra],
        "mask": (X, Y, Z) uint8 or None, "affine": (4, 4), "lesion_kind": str, "lesion_variant": str,
        "ms_source": str}``; ``lesion_variant`` is what was inserted (e.g. ``focal_opposite`` for a focal
        lesion of the opposite intensity sign).
    """
    extra_contrasts = tuple(extra_contrasts)
    for c in (contrast, *extra_contrasts):
        if c not in CONTRASTS:
            raise ValueError(f"unknown contrast {c!r} (known: {CONTRASTS})")
    if extra_contrasts and extra_rng is None:
        extra_rng = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
    with _single_threaded_blas():
        return _synthesize(
            rng,
            spacing,
            contrast,
            variation,
            lesion,
            ms_files,
            lesion_size,
            extra_contrasts,
            extra_rng,
            partial_volume,
            skull_strip_fraction,
        )


SIZE_STRATA: dict[str, tuple[float, float]] = {
    "small": (0.0, 1.0),
    "medium": (1.0, 10.0),
    "large": (10.0, float("inf")),
}
"""Lesion-volume strata of the demo's anomalous subjects, in cm^3: < 1, 1-10, > 10 (lower bound included)."""


def size_stratum(volume_cm3: float) -> str:
    """The :data:`SIZE_STRATA` name of a lesion volume in cm^3."""
    for name, (low, high) in SIZE_STRATA.items():
        if low <= volume_cm3 < high:
            return name
    raise ValueError(f"lesion volume must be >= 0 cm^3, got {volume_cm3}")


# RandLesion sizes per (kind, stratum) that give lesion volumes mostly inside the stratum (measured on the
# 4 mm demo grid; the oedema of a tumour reaches ~1.3 R). MS patterns are real masks: picked by volume.
_LESION_SIZES: dict[tuple[str, str], dict[str, Any]] = {
    ("focal", "small"): {"num_focal": (1, 1), "focal_radius_mm": (3.6, 5.0)},
    ("focal", "medium"): {"num_focal": (2, 3), "focal_radius_mm": (5.5, 8.0)},
    ("focal", "large"): {"num_focal": (3, 4), "focal_radius_mm": (9.0, 12.0)},
    ("tumour", "small"): {"tumour_radius_mm": (3.0, 4.5)},
    ("tumour", "medium"): {"tumour_radius_mm": (6.0, 10.0)},
    ("tumour", "large"): {"tumour_radius_mm": (14.0, 22.0)},
}


def _synthesize(
    rng,
    spacing,
    contrast,
    variation,
    lesion,
    ms_files,
    lesion_size="any",
    extra_contrasts=(),
    extra_rng=None,
    partial_volume=True,
    skull_strip_fraction=DEMO_DEFAULTS["skull_strip_fraction"],
) -> dict[str, Any]:
    tpl = _template(float(spacing))
    shape, aff = demo_grid(spacing)
    v = variation
    # subject transform: output world x -> template world C + M (x - C - t) + u(x)
    size = rng.uniform(*v.size) * (1 + rng.uniform(-v.axis_jitter, v.axis_jitter, 3))
    m = _rotation(rng, v.rot_deg) @ np.diag(1.0 / size)
    t = rng.uniform(-v.shift_mm, v.shift_mm, 3)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1).reshape(
        -1, 3
    )
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    src = (world - FOV_CENTER_MM - t) @ m.T + FOV_CENTER_MM
    coarse = (5, 6, 5)
    for ax in range(3):
        src[:, ax] += _smooth_field(rng, coarse, shape, v.warp_mm).reshape(-1)
    taff = tpl["affine"]
    svox = ((src - taff[:3, 3]) @ np.linalg.inv(taff[:3, :3]).T).T

    def sample(a: np.ndarray) -> np.ndarray:
        return (
            ndimage.map_coordinates(a, svox, order=1, mode="constant", cval=0.0)
            .reshape(shape)
            .astype(np.float32)
        )

    brain = np.clip(sample(tpl["brain"]), 0, 1)
    tissues = {"gm": sample(tpl["gm"]), "wm": sample(tpl["wm"]), "csf": sample(tpl["csf"]), "brain": brain}
    if v.texture > 0:
        # the template's own fractions: a T1 image, which keeps the template's T1, is rescaled from them
        tissues["smooth"] = (tissues["gm"], tissues["wm"], tissues["csf"])
        _texture(rng, tissues, v.texture, 4.0 / float(spacing))
    tissues["pv"] = sample(tpl["pv"]) * rng.uniform(*v.periventricular) if v.periventricular[1] > 0 else None
    img = _contrast_image(rng, contrast, v, tissues, lambda: sample(tpl["t1"]) / tpl["t1_ref"])
    extra_imgs = [
        _contrast_image(extra_rng, c, v, tissues, lambda: sample(tpl["t1"]) / tpl["t1_ref"])
        for c in extra_contrasts
    ]

    mask = None
    ms_source = ""
    lesion_variant = ""
    if lesion is not None:
        inserter_kwargs: dict[str, Any] = {
            "contrast": contrast,
            "kinds": (lesion,),
            "clip": (0.0, None),
            "focal_radius_mm": (max(3.0, 0.9 * spacing), max(8.0, 2.0 * spacing)),
            "partial_volume": partial_volume,
        }
        if lesion_size != "any" and lesion_size not in SIZE_STRATA:
            raise ValueError(f"unknown lesion_size {lesion_size!r} (known: any, {', '.join(SIZE_STRATA)})")
        inserter_kwargs.update(_LESION_SIZES.get((lesion, lesion_size), {}))
        if lesion == "ms":
            if not ms_files:
                raise ValueError("lesion kind 'ms' needs the MS lesion masks")
            voxel_cm3 = float(spacing) ** 3 / 1000.0
            low, high = SIZE_STRATA.get(lesion_size, (0.0, float("inf")))
            order = rng.permutation(len(ms_files))
            candidates = []  # (distance to the stratum, pattern, source, fractions): the first inside wins
            for j in order:  # a pattern with at least 3 voxels on this grid
                src_mask, saff = _ms_mask_source(str(ms_files[j]), float(spacing))
                mvox = ((src - saff[:3, 3]) @ np.linalg.inv(saff[:3, :3]).T).T
                frac = ndimage.map_coordinates(src_mask, mvox, order=1, mode="constant").reshape(shape)
                ms = ((frac >= 0.25) & (brain > 0.5)).astype(np.float32)
                if ms.sum() < 3:
                    continue
                volume = float(ms.sum()) * voxel_cm3
                distance = max(low - volume, volume - high, 0.0) / max(volume, 1e-6)
                candidates.append((distance, ms, ms_files[j].name, frac * (brain > 0.5)))
                if distance == 0.0:
                    break
            if not candidates:
                raise ValueError("no MS lesion mask has 3 voxels on this grid")
            _, ms, ms_source, ms_fraction = min(candidates, key=lambda c: c[0])
            if partial_volume:  # the same mask (fraction >= 0.25), imaged by each voxel's lesion fraction
                inserter_kwargs.update(ms_masks=[ms_fraction], ms_mask_threshold=0.25)
            else:
                inserter_kwargs["ms_masks"] = [ms]
        lesion_seed = int(rng.integers(2**31))
        region = brain > 0.5
        if lesion != "ms":  # tumours and focal lesions go in the cerebrum (template z > -30 mm)
            region &= (src[:, 2] > -30.0).reshape(shape)

        def insert(image: np.ndarray, con: str) -> tuple[np.ndarray, np.ndarray, str]:
            # the same seed and region draw the same lesion (mask, mass effect) in every contrast; only the
            # intensities follow the contrast (hyperintense in FLAIR/T2, hypointense in T1)
            inserter = RandLesion(**{**inserter_kwargs, "contrast": con})
            inserter.set_random_state(seed=lesion_seed)
            x = MetaTensor(torch.from_numpy(image)[None], affine=torch.as_tensor(aff))
            y, mk = inserter(x, brain_mask=torch.from_numpy(region)[None], kind=lesion)
            return y.numpy()[0], (mk.numpy()[0] > 0.5).astype(np.uint8), inserter.last_variant or ""

        img, mask, lesion_variant = insert(img, contrast)
        for j, c in enumerate(extra_contrasts):
            extra_imgs[j], extra_mask, _ = insert(extra_imgs[j], c)
            if not np.array_equal(
                extra_mask, mask
            ):  # pragma: no cover - RandLesion draws do not depend on contrast
                raise RuntimeError(f"the lesion drawn in {c} differs from the one in {contrast}")

    img = _imaging(rng, img, brain, v, skull_strip_fraction)
    extra_imgs = [_imaging(extra_rng, x, brain, v, skull_strip_fraction) for x in extra_imgs]
    if mask is not None:
        mask[brain < skull_strip_fraction] = 0
    return {
        "image": img,
        "images": [img, *extra_imgs],
        "contrasts": [contrast, *extra_contrasts],
        "mask": mask,
        "affine": aff,
        "lesion_kind": lesion or "",
        "lesion_variant": lesion_variant,
        "ms_source": ms_source,
    }


def _texture(
    rng: np.random.Generator, tissues: dict[str, np.ndarray], amount: float, sigma_vox: float
) -> None:
    """Individual tissue texture: each tissue fraction times exp(amount * a smooth unit field), renormalised.

    The template's tissue maps are a 152-subject average, smoother than any one brain: its cortex is a uniform
    GM/CSF mixture where a subject has sulci. Perturbing the fractions with fields correlated over ~4 mm (``sigma_vox``
    voxels) gives each subject its own partial-volume pattern where tissues mix (cortex, deep grey matter,
    ventricle edges), and leaves pure tissue (one fraction near 1) unchanged. Modifies ``tissues`` in place.
    """
    before = tissues["gm"] + tissues["wm"] + tissues["csf"]
    for name in ("gm", "wm", "csf"):
        field = ndimage.gaussian_filter(rng.standard_normal(before.shape), sigma_vox)
        tissues[name] = tissues[name] * np.exp(amount * field / max(float(field.std()), 1e-12)).astype(
            np.float32
        )
    after = tissues["gm"] + tissues["wm"] + tissues["csf"]
    scale = before / np.maximum(after, 1e-6)
    for name in ("gm", "wm", "csf"):
        tissues[name] = (tissues[name] * scale).astype(np.float32)


def _t1_mixture(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """A T1-weighted mixture of tissue fractions (CSF 0.3, GM 0.65, WM 1 of WM; >= 1e-3), to rescale the template's T1."""
    return 0.3 * csf + 0.65 * gm + wm + 1e-3


def _contrast_image(
    rng: np.random.Generator, contrast: str, v: _Variation, tissues: dict[str, np.ndarray], t1_of: Any
) -> np.ndarray:
    """A healthy image of ``contrast`` from the subject's tissue maps (``t1_of()``: the warped T1 template)."""
    gm, wm, csf, brain = tissues["gm"], tissues["wm"], tissues["csf"], tissues["brain"]
    jit = 1 + rng.uniform(-v.tissue_jitter, v.tissue_jitter, 3)
    if contrast == "t1":
        t1 = np.clip(t1_of(), 0, None)
        img = (
            t1 ** rng.uniform(*v.gamma)
            + 0.03 * rng.standard_normal() * gm
            + 0.03 * rng.standard_normal() * wm
        )
        img = img * (csf * jit[0] + gm * jit[1] + wm * jit[2] + 1e-3) / (csf + gm + wm + 1e-3)
        if "smooth" in tissues:  # the template's T1 is of the smooth fractions: carry the texture over
            s_gm, s_wm, s_csf = tissues["smooth"]
            img = img * _t1_mixture(gm, wm, csf) / _t1_mixture(s_gm, s_wm, s_csf)
    else:
        levels = {"t2": (1.0, 0.62, 0.45), "flair": (0.15, 0.62, 0.48)}[contrast]
        img = csf * levels[0] * jit[0] + gm * levels[1] * jit[1] + wm * levels[2] * jit[2]
        if tissues.get("pv") is not None:  # periventricular caps and bands: hyperintense in FLAIR and T2
            img = img + tissues["pv"]
        img = (img / max(float(np.median(img[brain > 0.5])), 1e-6)) ** rng.uniform(*v.gamma)
    return np.clip(img, 0, None).astype(np.float32)


def _imaging(
    rng: np.random.Generator, img: np.ndarray, brain: np.ndarray, v: _Variation, skull_strip_fraction: float
) -> np.ndarray:
    """Bias field, scanner gain, Rician noise and skull stripping of one acquisition.

    The voxels kept are scaled by their brain fraction (outside the brain is 0, as in a scan stripped at a
    finer resolution), and those less than ``skull_strip_fraction`` brain are cut: with 0.5, the outermost
    layer averages about 0.55 of the brain's median and a quarter of it is above 0.8, as in the real FLAIR
    cases through the same preprocessing; with 0.05 it faded out (0.35-0.45, 5-17 %).
    """
    shape = img.shape
    bias = np.exp(_smooth_field(rng, (3, 3, 3), shape, v.bias))
    gain = rng.uniform(600, 1400)
    img = img * bias * gain
    sigma = rng.uniform(*v.noise) * gain
    n1, n2 = rng.standard_normal(shape), rng.standard_normal(shape)
    img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
    img = (img * brain).astype(np.float32)
    img[brain < skull_strip_fraction] = 0.0
    return img


def _save(arr: np.ndarray, affine: np.ndarray, path: Path, dtype: Any) -> None:
    img = nib.Nifti1Image(arr.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


MIN_SUBJECTS_FOR_WORKERS = 32
"""Smaller cohorts are made in this process: starting a worker (imports, the template) costs seconds."""

_SUBJECT_NAMES = {
    "training": "train",
    "validation": "val",
    "test": "test",
    "anomalous": "anom",
    "general": "gen",
}


@dataclass(frozen=True)
class _SubjectTask:
    """One subject of :func:`make_demo_cohort`'s plan: everything :func:`_write_subject` needs (picklable)."""

    seed: int
    section: str
    group: str
    index: int
    lesion: str | None
    contrast: str
    extra: tuple[str, ...]
    variation: _Variation
    size: str
    spacing: float
    ms_files: list[Path]
    out: Path
    partial_volume: bool = True
    skull_strip_fraction: float = DEMO_DEFAULTS["skull_strip_fraction"]


def _write_subject(task: _SubjectTask) -> tuple[dict[str, Any], dict[str, Any]]:
    """Synthesise one subject from its own seed (seed, section, index), write its files; its datalist item and
    ``subjects.csv`` row. A function of the task alone, so subjects can be made in any process and order."""
    group, i, con, extra = task.group, task.index, task.contrast, task.extra
    rng = np.random.default_rng([task.seed, _SECTION_CODE[group], i])
    # general subjects mix contrasts: channel k of subject i is CONTRASTS[(i + k) % 3]
    cons = [con] + [
        CONTRASTS[(CONTRASTS.index(con) + k) % 3] if group == "general" else c for k, c in enumerate(extra, 1)
    ]
    s = synthesize_subject(
        rng,
        task.spacing,
        con,
        task.variation,
        lesion=task.lesion,
        ms_files=task.ms_files,
        lesion_size=task.size,
        extra_contrasts=cons[1:],
        extra_rng=np.random.default_rng([task.seed, _SECTION_CODE[group], i, 1]) if extra else None,
        partial_volume=task.partial_volume,
        skull_strip_fraction=task.skull_strip_fraction,
    )
    sid = f"demo-{_SUBJECT_NAMES[group]}-{i:03d}"
    if extra:
        paths = [task.out / "images" / f"{sid}_{c}.nii.gz" for c in cons]
    else:
        paths = [task.out / "images" / f"{sid}.nii.gz"]
    for arr, img_path in zip(s["images"], paths):
        _save(arr, s["affine"], img_path, np.float32)
    image: Any = [str(p_) for p_ in paths] if extra else str(paths[0])
    item: dict[str, Any] = {"image": image, "subject_id": sid, "site": "demo"}
    if group != "general":
        item["label"] = 1 if task.lesion else 0
    nvox = 0
    if s["mask"] is not None:
        mpath = task.out / "masks" / f"{sid}_mask.nii.gz"
        _save(s["mask"], s["affine"], mpath, np.uint8)
        item["mask"] = str(mpath)
        nvox = int(s["mask"].sum())
    volume_cm3 = nvox * task.spacing**3 / 1000.0
    row = {
        "subject_id": sid,
        "section": task.section,
        "label": item.get("label", ""),
        "contrast": "+".join(cons),
        "lesion_kind": s["lesion_kind"],
        "lesion_variant": s["lesion_variant"],
        "lesion_voxels": nvox,
        "lesion_volume_cm3": round(volume_cm3, 4) if task.lesion else "",
        "size_stratum": size_stratum(volume_cm3) if task.lesion else "",
        "ms_source": s["ms_source"],
    }
    return item, row


def default_workers() -> int:
    """The processes :func:`make_demo_cohort` uses from the CLI and the demo: this process's CPUs, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


@contextlib.contextmanager
def _subject_map(workers: int, n_tasks: int) -> Iterator[Callable[..., Iterator[Any]]]:
    """``map`` over the subjects in worker processes (spawned: the parent may hold torch's thread pools, which do
    not survive a fork), or in this process for one worker or a cohort of a few subjects; results in order."""
    if workers <= 1 or n_tasks < max(MIN_SUBJECTS_FOR_WORKERS, 2 * workers):
        yield map
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield functools.partial(pool.map, chunksize=4)


def make_demo_cohort(
    out_dir: str | os.PathLike,
    seed: int = DEMO_DEFAULTS["seed"],
    healthy: int = DEMO_DEFAULTS["healthy"],
    anomalous: int = DEMO_DEFAULTS["anomalous"],
    general: int = DEMO_DEFAULTS["general"],
    spacing: float = DEMO_DEFAULTS["spacing"],
    contrast: str | Sequence[str] = DEMO_DEFAULTS["contrast"],
    ms_dir: str | os.PathLike | None = None,
    progress: bool = False,
    smooth_anatomy: bool = False,
    workers: int = 1,
    partial_volume_lesions: bool = DEMO_DEFAULTS["partial_volume_lesions"],
    skull_strip_fraction: float = DEMO_DEFAULTS["skull_strip_fraction"],
) -> Path:
    """Write the demo cohort (see the module docstring) and return the path of ``datalist.json``.

    Args:
        out_dir: output folder (created).
        seed: the cohort's seed; each subject's randomness derives from (seed, section, index).
        healthy: healthy subjects: 20 % validation, 20 % test (at least 1 each when >= 3), the rest training.
        anomalous: anomalous test subjects: kinds cycle ms, tumour, focal; within each kind the target size
            cycles through the strata of :data:`SIZE_STRATA` (< 1, 1-10, > 10 cm^3).
        general: subjects of the broader ``general`` section (0: no section).
        spacing: isotropic voxel size in mm (4: the CPU demo; 1: full resolution).
        contrast: in-distribution contrast ``t1``, ``t2`` or ``flair``; or several distinct ones, e.g.
            ``("flair", "t1")``: a multi-contrast cohort (every subject in each contrast, same anatomy and
            lesion mask; files ``images/<subject>_<contrast>.nii.gz``; each datalist item's ``image`` lists
            them in this order). The first contrast's images are those of the single-contrast cohort.
        ms_dir: folder of the MS lesion masks (default :func:`find_ms_lesion_dir`).
        progress: print one line per section.
        smooth_anatomy: leave out the individual tissue texture and the periventricular signal
            (:data:`SMOOTH_ANATOMY`): every subject is the smooth template anatomy, as before 2026-12.
        workers: processes that make the subjects (each from its own seed: the files are the same for any
            number; the default 1 makes them in this process).
        partial_volume_lesions: image each lesion with partial volume (a voxel changes by the fraction of it
            the lesion fills); False: full contrast in every mask voxel (the cohort before 2026-12-02). The same
            subjects, masks and healthy scans either way (``benchmarks/lesion_conspicuity.py`` measures both
            against real lesions).
        skull_strip_fraction: voxels less than this fraction brain are 0 (default 0.5: the edge the runs'
            preprocessing gives a real skull-stripped scan; 0.05: the cohort before 2026-12-03, whose edge
            faded out).

    Raises:
        ValueError: bad counts, spacing or contrast.
    """
    contrasts = (contrast,) if isinstance(contrast, str) else tuple(contrast)
    bad = [c for c in contrasts if c not in CONTRASTS]
    if bad or not contrasts or len(set(contrasts)) != len(contrasts):
        raise UserInputError(
            f"unknown or repeated contrast(s) {list(contrasts) if not bad else bad} "
            f"(known: {', '.join(CONTRASTS)}; each at most once)"
        )
    contrast, extra = contrasts[0], contrasts[1:]
    if healthy < 1 or anomalous < 0 or general < 0:
        raise UserInputError(
            f"need healthy >= 1, anomalous >= 0, general >= 0; got {healthy}, {anomalous}, {general}"
        )
    if not 0.5 <= spacing <= 8.0:
        raise UserInputError(f"spacing must be between 0.5 and 8 mm, got {spacing}")
    if not 0.0 < skull_strip_fraction < 1.0:
        raise UserInputError(f"skull_strip_fraction must be in (0, 1), got {skull_strip_fraction}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    d = Path(ms_dir) if ms_dir is not None else find_ms_lesion_dir()
    ms_files = _ms_files(d) if d is not None and d.is_dir() else []
    kinds = ["ms", "tumour", "focal"]
    if not ms_files and anomalous > 0:
        warnings.warn(
            "MS lesion masks not found (../shared/data/ms-lesjak2017-mni/lesion_masks_mni or "
            "$MRI_ANOMALY_SHARED_DATA): the demo's anomalies are tumours and focal lesions only",
            stacklevel=2,
        )
        kinds = ["tumour", "focal"]

    healthy_var, general_var = HEALTHY_VARIATION, GENERAL_VARIATION
    if smooth_anatomy:
        healthy_var = dataclasses.replace(healthy_var, **SMOOTH_ANATOMY)
        general_var = dataclasses.replace(general_var, **SMOOTH_ANATOMY)
    n_val = max(1, round(0.2 * healthy)) if healthy >= 3 else 0
    n_test = max(1, round(0.2 * healthy)) if healthy >= 3 else 0
    n_train = healthy - n_val - n_test
    plan: list[tuple[str, str, int, str | None, str, _Variation, str]] = []
    for sec, n in (("training", n_train), ("validation", n_val), ("test", n_test)):
        plan += [(sec, sec, i, None, contrast, healthy_var, "any") for i in range(n)]
    strata = list(SIZE_STRATA)
    plan += [
        (
            "test",
            "anomalous",
            i,
            kinds[i % len(kinds)],
            contrast,
            healthy_var,
            strata[(i // len(kinds)) % len(strata)],
        )
        for i in range(anomalous)
    ]
    plan += [("general", "general", i, None, CONTRASTS[i % 3], general_var, "any") for i in range(general)]

    tasks = [
        _SubjectTask(
            int(seed),
            sec,
            group,
            i,
            lesion,
            con,
            extra,
            var,
            size,
            float(spacing),
            ms_files,
            out,
            bool(partial_volume_lesions),
            float(skull_strip_fraction),
        )
        for sec, group, i, lesion, con, var, size in plan
    ]
    datalist: dict[str, list[dict]] = {}
    rows = []
    with _subject_map(workers, len(tasks)) as subject_map:
        for task, (item, row) in zip(tasks, subject_map(_write_subject, tasks), strict=True):
            datalist.setdefault(task.section, []).append(item)
            rows.append(row)
            if progress and task.index == 0:
                print(f"demo-data: {task.group} ...", flush=True)
    meta = {
        "name": "mri-anomaly demo cohort",
        "description": (
            "Synthetic subjects from the MNI ICBM152 2009 template and tissue maps (nilearn); anomalies: "
            + ", ".join(kinds)
            + "; general = broader distribution for likelihood ratios "
            "(all contrasts, stronger deformation/bias/noise)."
        ),
        "modality": {str(k): c.upper() for k, c in enumerate(contrasts)},
        "contrast": "+".join(contrasts),
        "spacing_mm": float(spacing),
        "seed": int(seed),
        "lesion_kinds": ",".join(kinds),
        "anatomy": "smooth template" if smooth_anatomy else "individual texture, periventricular signal",
        "lesion_imaging": "partial volume" if partial_volume_lesions else "full contrast in every mask voxel",
        "skull_strip_fraction": float(skull_strip_fraction),
    }
    path = write_datalist(datalist, out / "datalist.json", relative=True, metadata=meta)
    with open(out / "subjects.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "cohort.json").write_text(
        json.dumps({**meta, "counts": {k: len(v) for k, v in datalist.items()}}, indent=2)
    )
    return path
