"""``LoadVolume`` / ``LoadVolumed``: MONAI's ``LoadImage`` with the checks of :mod:`mri_anomaly.data.io`.

The output is MONAI's usual ``MetaTensor`` of shape (X, Y, Z) (no channel yet; ``EnsureChannelFirstd``
follows in the chain) with ``affine``, ``meta["original_affine"]``, ``meta["spatial_shape"]`` and
``meta["filename_or_obj"]``. Any failure is an :class:`~mri_anomaly.data.io.InputFileError` naming the file.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

from mri_anomaly.data.io import InputFileError, check_array, read_header

__all__ = ["LoadVolume", "LoadVolumed", "LoadVolumeD", "LoadVolumeDict"]


class LoadVolume(Transform):
    """Load one 3D NIfTI volume as a float32 ``MetaTensor`` (X, Y, Z), checked.

    Args:
        is_mask: the file is a mask: it may be empty, and with ``binarize`` it becomes {0, 1}.
        binarize: map voxels > 0.5 to 1 and the rest to 0 (multi-class tumour labels become one
            anomaly mask; a scaled integer brain mask becomes exactly {0, 1}).

    Raises:
        InputFileError: missing, truncated or corrupt file; not 3D; NaN/Inf voxels; constant image.
    """

    def __init__(self, is_mask: bool = False, binarize: bool = False) -> None:
        self.is_mask = is_mask
        self.binarize = binarize
        self._loader = LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)

    def __call__(self, filename: str | Any) -> MetaTensor:
        if isinstance(filename, torch.Tensor):  # already loaded (in-memory item): check only
            arr = filename
            path = (
                getattr(arr, "meta", {}).get("filename_or_obj", None) if isinstance(arr, MetaTensor) else None
            )
            check_array(arr.detach().cpu().numpy(), path, is_mask=self.is_mask)
            out = arr if isinstance(arr, MetaTensor) else MetaTensor(arr)
        else:
            path = str(filename)
            read_header(path)
            try:
                out = self._loader(path)
            except Exception as e:
                problem = f"cannot read voxel data, file truncated or corrupt ({_root_message(e)})"
                raise InputFileError(path, problem) from e
            arr = check_array(out.numpy(), path, is_mask=self.is_mask)
            if arr.shape != tuple(out.shape):
                out = MetaTensor(torch.as_tensor(arr), meta=out.meta)
                out.meta["spatial_shape"] = np.asarray(arr.shape)
        out = out.float()
        if self.binarize:
            out = (out > 0.5).to(torch.float32)
        return out


def _root_message(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


class LoadVolumed(MapTransform):
    """Dictionary twin of :class:`LoadVolume`.

    Args:
        keys: keys holding file paths (for example ``("image", "mask", "brain_mask")``).
        mask_keys: which of ``keys`` are masks (may be empty; binarised to {0, 1}).
        allow_missing_keys: skip keys absent from the item (an item without a ``mask``).
    """

    def __init__(
        self, keys: KeysCollection, mask_keys: Sequence[str] = (), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = set(mask_keys)
        self._image = LoadVolume()
        self._mask = LoadVolume(is_mask=True, binarize=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (self._mask if key in self.mask_keys else self._image)(d[key])
        return d


LoadVolumeD = LoadVolumeDict = LoadVolumed
