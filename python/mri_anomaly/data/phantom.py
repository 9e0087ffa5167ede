"""A small analytic head phantom written as NIfTI, for tests and examples (no template needed).

``write_phantom`` makes an ellipsoidal "brain" (two tissue levels, a dark ventricle) with an optional
spherical lesion and its mask, in any orientation and voxel size, so orientation, resampling, cropping
and inversion can be checked against known geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["phantom_arrays", "write_phantom"]


def phantom_arrays(
    shape: tuple[int, int, int] = (48, 56, 40),
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0),
    lesion_center_mm: tuple[float, float, float] | None = (20.0, 10.0, 8.0),
    lesion_radius_mm: float = 12.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phantom voxels in RAS voxel order, centred at world (0, 0, 0).

    Returns:
        ``(image (X, Y, Z) float32, lesion mask uint8, brain mask uint8)``; the brain is an ellipsoid
        with semi-axes 60 x 75 x 55 mm, the lesion a bright sphere.
    """
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.sqrt((g[0] / 60) ** 2 + (g[1] / 75) ** 2 + (g[2] / 55) ** 2)
    brain = r <= 1.0
    img = np.where(brain, 100.0 + 40.0 * (r < 0.7), 0.0)
    vent = np.sqrt((g[0] / 10) ** 2 + (g[1] / 25) ** 2 + (g[2] / 12) ** 2) <= 1
    img[vent] = 30.0
    lesion = np.zeros(shape, bool)
    if lesion_center_mm is not None:
        d = np.sqrt(sum((gi - c) ** 2 for gi, c in zip(g, lesion_center_mm)))
        lesion = (d <= lesion_radius_mm) & brain
        img[lesion] = 260.0
    img = img + brain * rng.normal(0, 3.0, shape)
    return img.astype(np.float32), lesion.astype(np.uint8), brain.astype(np.uint8)


def write_phantom(
    folder: str | os.PathLike,
    name: str = "phantom",
    shape: tuple[int, int, int] = (48, 56, 40),
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0),
    axcodes: str = "LPS",
    lesion: bool = True,
    seed: int = 0,
) -> dict[str, str]:
    """Write ``<name>.nii.gz``, ``<name>_mask.nii.gz`` and ``<name>_brainmask.nii.gz`` in ``axcodes`` orientation.

    Args:
        folder: output folder (created).
        name: file name stem.
        shape: RAS voxel shape before reorientation.
        spacing: RAS voxel size (mm).
        axcodes: stored orientation, e.g. ``"LPS"`` (BRATS-like), ``"PSR"`` (IXI-like), ``"RAS"``.
        lesion: include the lesion.
        seed: noise seed.

    Returns:
        ``{"image": path, "mask": path, "brain_mask": path}``.
    """
    img, les, brain = phantom_arrays(shape, spacing, (20.0, 10.0, 8.0) if lesion else None, seed=seed)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -np.array(spacing) * (np.array(shape) - 1) / 2
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes)
    )
    out = {}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr, dtype, suffix in (
        ("image", img, np.float32, ""),
        ("mask", les, np.uint8, "_mask"),
        ("brain_mask", brain, np.uint8, "_brainmask"),
    ):
        a = nib.orientations.apply_orientation(arr, ornt)
        new_aff = aff @ nib.orientations.inv_ornt_aff(ornt, arr.shape)
        p = folder / f"{name}{suffix}.nii.gz"
        nib.save(nib.Nifti1Image(a.astype(dtype), new_aff), str(p))
        out[key] = str(p)
    return out
