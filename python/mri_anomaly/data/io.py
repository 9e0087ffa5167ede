"""Reading volumes safely: :class:`InputFileError` and the checked loaders.

Every image that enters the package goes through :func:`load_volume` (directly, or through
:class:`~mri_anomaly.data.transforms.LoadVolumed` inside the preprocessing chain). A bad file never
produces a NumPy/zlib traceback deep inside a worker: it produces an :class:`InputFileError` that
names the file and the problem, in one line a user can act on. The checks are:

* the file exists and is readable as NIfTI (a truncated or corrupt ``.nii.gz`` is caught);
* its voxels are real numbers (complex and RGB data are refused, not cast);
* its affine is finite and invertible, with voxels of at least 1 µm and a field of view of at most 5 m;
* the image is 3D (a trailing singleton 4th axis, common in NIfTI, is dropped; a real 4D or a 2D
  image is refused);
* every voxel is finite (no NaN or Inf);
* an *image* is not constant (an empty volume carries no anatomy). Masks may be empty.

A cohort-level run should not stop at the first bad scan: :func:`safe_load` returns the error
instead of raising, and :class:`~mri_anomaly.data.datasets.SafeDataset` does the same per item.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mri_anomaly.errors import UserInputError

__all__ = ["InputFileError", "affine_problem", "check_array", "load_volume", "read_header", "safe_load"]


class InputFileError(UserInputError):
    """A bad input file. ``str(err)`` reads ``"<path>: <problem>"``.

    Attributes:
        path: the offending file (as given).
        problem: what is wrong with it, without the path.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = str(path) if path is not None else "<in-memory image>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (InputFileError, (self.path, self.problem))


def read_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """The shape and affine of a NIfTI file without reading its voxels.

    Returns:
        ``(shape, affine)``; a trailing singleton 4th axis is dropped from ``shape``.

    Raises:
        InputFileError: missing or unreadable file.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(path, "file not found")
    if p.is_dir():
        raise InputFileError(path, "is a directory, expected a NIfTI file")
    try:
        img = nib.load(str(p))
    except Exception as e:  # nibabel raises many types for corrupt headers
        raise InputFileError(path, f"cannot read as NIfTI ({type(e).__name__}: {e})") from e
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind not in "biuf":  # complex, RGB (structured) ...: no single real intensity per voxel
        raise InputFileError(
            path,
            f"voxel type {dtype} is not a real number per voxel (complex or RGB data); "
            "expected a magnitude image",
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    problem = affine_problem(affine, shape)
    if problem is not None:
        raise InputFileError(path, problem)
    return shape, affine


MIN_VOXEL_MM = 1e-3
MAX_FIELD_OF_VIEW_MM = 5000.0


def affine_problem(affine: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a voxel-to-world affine (4, 4), or None: it must be finite and invertible, with
    voxel sizes of at least :data:`MIN_VOXEL_MM` and a field of view of at most :data:`MAX_FIELD_OF_VIEW_MM`
    per axis (anything else cannot be resampled to a millimetre grid)."""
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return f"the affine (voxel-to-world matrix) is not finite: {affine[:3].tolist()}"
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(np.linalg.det(affine[:3, :3])) < MIN_VOXEL_MM**3 or (voxel < MIN_VOXEL_MM).any():
        return (
            f"the affine (voxel-to-world matrix) is singular or its voxels are under {MIN_VOXEL_MM} mm "
            f"(voxel sizes {np.round(voxel, 6).tolist()} mm): {affine[:3].tolist()}"
        )
    field = voxel * np.asarray(list(shape[:3]) + [1] * (3 - len(shape[:3])), dtype=np.float64)
    if (field > MAX_FIELD_OF_VIEW_MM).any():
        return (
            f"the field of view {np.round(field, 1).tolist()} mm exceeds {MAX_FIELD_OF_VIEW_MM:g} mm "
            f"(voxel sizes {np.round(voxel, 3).tolist()} mm): a wrongly scaled affine"
        )
    return None


def check_array(arr: np.ndarray, path: str | os.PathLike | None, *, is_mask: bool = False) -> np.ndarray:
    """Check a loaded voxel array (3D, finite, not constant unless a mask).

    Args:
        arr: voxels, shape (X, Y, Z) or (X, Y, Z, 1).
        path: the file it came from (for the message).
        is_mask: masks may be constant (empty).

    Returns:
        the array with a trailing singleton axis removed, shape (X, Y, Z).

    Raises:
        InputFileError: wrong dimensionality, NaN/Inf voxels, or a constant image.
    """
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputFileError(path, f"expected a 3D volume, got {arr.ndim}D with shape {tuple(arr.shape)}")
    if min(arr.shape) < 2:
        raise InputFileError(path, f"expected a 3D volume, got shape {tuple(arr.shape)} (a 2D image?)")
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise InputFileError(path, f"contains non-finite voxels ({n_nan} NaN, {n_inf} Inf)")
    if not is_mask and float(arr.max()) == float(arr.min()):
        raise InputFileError(path, f"image is constant (every voxel is {float(arr.min()):g}): empty volume")
    return arr


def load_volume(
    path: str | os.PathLike, *, is_mask: bool = False, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Load and check a 3D NIfTI volume.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        is_mask: allow a constant (empty) volume.
        dtype: voxel dtype of the returned array.

    Returns:
        ``(array (X, Y, Z), affine (4, 4) float64)`` in the file's own orientation.

    Raises:
        InputFileError: missing, truncated or corrupt file, not 3D, NaN/Inf, constant image.
    """
    read_header(path)
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.get_fdata(dtype=np.float64 if dtype == np.float64 else np.float32), dtype=dtype)
    except InputFileError:
        raise
    except Exception as e:  # EOFError / zlib.error / OSError for truncated or corrupt data
        problem = f"cannot read voxel data, file truncated or corrupt ({type(e).__name__}: {e})"
        raise InputFileError(path, problem) from e
    return check_array(arr, path, is_mask=is_mask), np.asarray(img.affine, dtype=np.float64)


def safe_load(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, InputFileError | None]:
    """Call ``fn(*args, **kwargs)`` and return ``(result, None)``, or ``(None, error)`` if it raised an
    :class:`InputFileError` (other exceptions propagate: they are bugs, not bad files).

    Example: ``item, err = safe_load(transform, {"image": path})``.
    """
    try:
        return fn(*args, **kwargs), None
    except InputFileError as e:
        return None, e
    except Exception as e:  # MONAI wraps transform errors in RuntimeError; unwrap ours
        cause = e
        while cause is not None:
            if isinstance(cause, InputFileError):
                return None, cause
            cause = cause.__cause__ or cause.__context__
        raise
