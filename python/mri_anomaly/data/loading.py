"""``LoadVolume`` / ``LoadVolumed``: MONAI's ``LoadImage`` with the checks of :mod:`mri_anomaly.data.io`.

The output is MONAI's usual ``MetaTensor`` of shape (X, Y, Z) (no channel yet; ``EnsureChannelFirstd``
follows in the chain) with ``affine``, ``meta["original_affine"]``, ``meta["spatial_shape"]`` and
``meta["filename_or_obj"]``. Any failure is an :class:`~mri_anomaly.data.io.InputFileError` naming the file.

Several files (a multi-contrast item, ``image: [flair, t1]``) load as one ``MetaTensor`` (C, X, Y, Z): each
file is loaded and checked as above, contrasts 2.. are resampled onto the first contrast's grid (MONAI
``ResampleToMatch``, bilinear, zeros outside their field of view) and the contrasts are stacked as channels.
The result carries the first file's meta and affine (``meta["original_channel_dim"]`` = 0), so the spatial
steps that follow, and the inversion of maps to the input space, work in the first contrast's space.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, ResampleToMatch, Transform

from mri_anomaly.data.io import InputFileError, check_array, read_header

__all__ = ["LoadVolume", "LoadVolumed", "LoadVolumeD", "LoadVolumeDict"]


class LoadVolume(Transform):
    """Load one 3D NIfTI volume as a float32 ``MetaTensor`` (X, Y, Z), checked; or several (one subject's
    contrasts) as (C, X, Y, Z) on the first one's grid (see the module docstring).

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

    def __call__(self, filename: str | Sequence[str] | Any) -> MetaTensor:
        if isinstance(filename, (list, tuple)):
            return self.stack(filename)
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
        if isinstance(out, MetaTensor):
            out.meta["original_channel_dim"] = float(
                "nan"
            )  # MONAI's "no channel" (EnsureChannelFirst adds one)
            # setting the affine again makes MONAI count every axis as spatial now that there is no channel: a
            # tensor made in memory had its first axis taken for one (two spacings, which resampling cannot use)
            out.affine = out.affine
        return out

    def stack(self, filenames: Sequence[str | os.PathLike]) -> MetaTensor:
        """Load each file, resample contrasts 2.. onto the first's grid, stack: (C, X, Y, Z) with the first's meta.

        Raises:
            InputFileError: a bad file (named), or a contrast that does not overlap the first's field of view.
            ValueError: an empty list.
        """
        if len(filenames) == 0:
            raise ValueError("LoadVolume: an empty list of image files")
        volumes = [self(os.fspath(f) if isinstance(f, os.PathLike) else f) for f in filenames]
        first = volumes[0]
        ref = MetaTensor(first.as_tensor()[None], meta=copy.deepcopy(first.meta))
        channels = [ref.as_tensor()]
        if len(volumes) > 1:
            resample = ResampleToMatch(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
            for f, v in zip(filenames[1:], volumes[1:]):
                src = MetaTensor(v.as_tensor()[None], meta=copy.deepcopy(v.meta))
                moved = resample(src, img_dst=ref).as_tensor().float()
                if float(moved.max()) == float(moved.min()):
                    raise InputFileError(
                        os.fspath(f) if not isinstance(f, torch.Tensor) else None,
                        f"does not overlap the first contrast ({first.meta.get('filename_or_obj')}): constant "
                        "after resampling onto its grid",
                    )
                channels.append(moved)
        out = MetaTensor(torch.cat(channels), meta=copy.deepcopy(first.meta))
        out.meta["original_channel_dim"] = 0
        return out


def _root_message(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


class LoadVolumed(MapTransform):
    """Dictionary twin of :class:`LoadVolume`.

    Args:
        keys: keys holding file paths (for example ``("image", "mask", "brain_mask")``); an image key may hold a
            list of paths (contrasts), loaded as (C, X, Y, Z).
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
