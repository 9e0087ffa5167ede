"""Datasets of preprocessed volumes and of their axial slices, on MONAI's caching datasets.

Item convention (what a model, the trainer and the scorer receive; collation with
``monai.data.DataLoader`` / ``list_data_collate`` works for any mix of items):

* ``image``: float32 (1, H, W, D) ``MetaTensor`` in [0, 1], RAS, axial axis last (volumes) or a plain
  float32 tensor (1, H, W) (slices).
* ``label``: int, 0 healthy / 1 anomalous / **-1 unknown** (always present).
* ``semi_target``: int in {-1, 0, 1} (Deep SAD; 0 when absent).
* ``mask``: float32 {0, 1}, same shape as ``image``, **always present**: an item without a
  ground-truth mask gets zeros and ``has_mask`` = 0.
* ``has_mask``: int, 1 if ``mask`` is real ground truth.
* ``subject_id``, ``site`` (``""`` when absent), ``image_path`` (the input file): str.
* slices only: ``slice_index`` (int, k in ``vol[..., k]``) and ``slice_label`` (1 if the mask has voxels
  in the slice, 0 if it has none and the mask is known (or the volume is labelled healthy), -1 unknown).
  With ``context`` r > 0 (2.5D) ``image`` is (C·(2r+1), H, W): slices k − r … k + r, each with its C channels
  (:func:`slice_stack`); ``mask`` stays the centre slice's (1, H, W).

A bad file never stops a cohort: with ``on_error="return"`` the item is
``{"error": "<path>: <problem>", "error_path", "subject_id", "image_path"}`` and
:func:`collate_with_errors` drops it from the batch and lists it under ``"errors"``. With
``on_error="raise"`` (default) the :class:`~mri_anomaly.data.io.InputFileError` is raised unwrapped.

Caching: ``cache="auto"`` keeps the preprocessed volumes in RAM (``CacheDataset``) when their estimated
size is under ``memory_limit_bytes`` and on disk (``PersistentDataset`` in ``cache_dir``, one subfolder per
preprocessing config) otherwise. Random ``augment`` transforms run after the cache on every access;
``seed`` seeds them (``set_random_state``), and ``monai.data.DataLoader`` reseeds each worker, so runs are
reproducible and workers do not share random streams.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset, list_data_collate
from monai.transforms import Compose, MapTransform, Randomizable, Transform, apply_transform

from mri_anomaly.data.datalist import check_contrast_counts, first_image, subject_id_of
from mri_anomaly.data.io import InputFileError
from mri_anomaly.data.preprocessing import preprocessed_channels, preprocessing, resolve_preprocessing_config

__all__ = [
    "FillDefaultsd",
    "PreprocessedCache",
    "VolumeDataset",
    "SliceDataset",
    "collate_with_errors",
    "plain_tensor",
    "unwrap_input_error",
    "slice_brain_fractions",
    "slice_stack",
    "slice_stacks",
]


def unwrap_input_error(e: BaseException) -> InputFileError | None:
    """The :class:`InputFileError` behind ``e`` (MONAI wraps transform errors in ``RuntimeError``), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, InputFileError):
            return e
        e = e.__cause__ or e.__context__
    return None


class FillDefaultsd(MapTransform):
    """Fill the item convention (see the module docstring) after preprocessing.

    Args:
        image_key: the preprocessed image.
        mask_key: the ground-truth mask key (zeros and ``has_mask`` = 0 when absent).
    """

    def __init__(self, image_key: str = "image", mask_key: str = "mask") -> None:
        super().__init__([image_key], allow_missing_keys=False)
        self.image_key, self.mask_key = image_key, mask_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        img = d[self.image_key]
        path = str(img.meta.get("filename_or_obj", "")) if isinstance(img, MetaTensor) else ""
        d.setdefault("image_path", path)
        d["label"] = int(d["label"]) if d.get("label") is not None else -1
        d["semi_target"] = int(d["semi_target"]) if d.get("semi_target") is not None else 0
        d["subject_id"] = subject_id_of({"subject_id": d.get("subject_id"), "image": path})
        d["site"] = str(d.get("site") or "")
        if isinstance(d.get(self.mask_key), torch.Tensor):
            d["has_mask"] = 1
        else:
            zeros = torch.zeros_like(img.as_tensor() if isinstance(img, MetaTensor) else img)
            d[self.mask_key] = (
                MetaTensor(
                    zeros,
                    meta=copy.deepcopy(img.meta),
                    applied_operations=copy.deepcopy(img.applied_operations),
                )
                if isinstance(img, MetaTensor)
                else zeros
            )
            d["has_mask"] = 0
        return d


def _error_item(item: Mapping[str, Any], err: InputFileError) -> dict[str, Any]:
    image = first_image(item)
    path = image if isinstance(image, str) else str(getattr(image, "meta", {}).get("filename_or_obj", ""))
    return {
        "error": str(err),
        "error_path": err.path,
        "image_path": path,
        "subject_id": subject_id_of({"subject_id": item.get("subject_id"), "image": path}),
    }


class _Guarded(Transform):
    """Run a Compose; an InputFileError becomes an error item; error items pass through untouched."""

    def __init__(self, inner: Callable) -> None:
        self.inner = inner

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if "error" in data:
            return dict(data)
        try:
            return self.inner(data)
        except Exception as e:
            err = unwrap_input_error(e)
            if err is None:
                raise
            return _error_item(data, err)


class _GuardedRandom(_Guarded, Randomizable):
    """The random part of the chain (after the cache), guarded and seedable."""

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        if isinstance(self.inner, Randomizable):
            self.inner.set_random_state(seed, state)
        return self

    def randomize(self, data: Any) -> None:  # the inner transforms draw their own numbers
        pass


class PreprocessedCache:
    """Preprocessed volumes shared by the :class:`VolumeDataset` objects of one process, e.g. the demo's runs,
    which train on the same scans and calibrate and score on the same scans: an item is read and preprocessed
    once per preprocessing config and held in memory (about 1 MB a scan on the demo's grid with its mask and
    metadata: the demo's 592 scans under its two configs add 1.2 GB to the process). The datasets of
    one config also share its transform chain, which MONAI's inverse (maps back to the input space) checks by
    identity. Items go in and out as deep copies; error items are not kept, so a file fixed in between is
    read again, and neither are items that are not plain JSON (an image given as an array has no key)."""

    def __init__(self) -> None:
        self.transforms: dict[str, Compose] = {}
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def preprocessed(
        self, config_key: str, item: Mapping[str, Any], compute: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """``item`` preprocessed under the config ``config_key``: from the cache, or ``compute()`` kept."""
        try:
            key = (config_key, json.dumps(item, sort_keys=True))
        except TypeError:
            return compute()
        if key in self.items:
            return copy.deepcopy(self.items[key])
        data = compute()
        if "error" not in data:
            self.items[key] = copy.deepcopy(data)
        return data


class _SharedCacheDataset(CacheDataset):
    """``CacheDataset`` whose cached (deterministic) part comes from a :class:`PreprocessedCache`."""

    def __init__(
        self, data: Sequence[Any], transform: Compose, shared: PreprocessedCache, config_key: str, **kwargs
    ):
        self.shared, self.config_key = shared, config_key  # before CacheDataset.__init__ fills the cache
        super().__init__(data, transform, **kwargs)

    def _load_cache_item(self, idx: int):
        load = super()._load_cache_item
        return self.shared.preprocessed(self.config_key, self.data[idx], lambda: load(idx))


class _SharedUncachedDataset(Dataset):
    """``Dataset`` (no cache of its own) whose deterministic part comes from a :class:`PreprocessedCache`."""

    def __init__(
        self,
        data: Sequence[Any],
        deterministic: Compose,
        random: Compose | None,
        shared: PreprocessedCache,
        config_key: str,
    ) -> None:
        super().__init__(data, deterministic)
        self.random, self.shared, self.config_key = random, shared, config_key

    def _transform(self, index: int):
        item = self.data[index]
        data = self.shared.preprocessed(self.config_key, item, lambda: apply_transform(self.transform, item))
        return data if self.random is None else apply_transform(self.random, data)


def _estimate_bytes(n_items: int, config: Mapping[str, Any], n_keys: int) -> int:
    size = config.get("spatial_size") or [96, 112, 96]
    return int(n_items * n_keys * 4 * int(np.prod(size)))


class VolumeDataset(torch.utils.data.Dataset):
    """Preprocessed volumes of datalist items, cached.

    Args:
        items: datalist items (``{"image": path or [path, ...], "label"?, "mask"?, ...}``), e.g.
            ``load_datalist(p)["training"]``; with ``preprocessing_config["contrasts"]`` every item lists that many
            image files.
        preprocessing_config: the ``preprocessing:`` config (None: defaults). Ignored if ``transform`` is given.
        transform: a deterministic preprocessing ``Compose`` (default: :func:`preprocessing` of the config
            for ``image``, ``mask`` and the config's brain mask). Keep it: :func:`save_map_in_input_space`
            needs it (also available as ``.transform``).
        augment: random transforms run on each access after the cache (e.g. ``RandLesiond``).
        cache: ``"auto"``, ``"memory"`` (CacheDataset), ``"disk"`` (PersistentDataset) or ``"none"``.
        cache_dir: folder of the disk cache (default: a temporary folder).
        memory_limit_bytes: ``auto`` caches in RAM below this estimated size.
        cache_num_workers: threads that fill the RAM cache.
        on_error: ``"raise"`` or ``"return"`` (error items, see the module docstring).
        seed: seed of ``augment``.
        progress: show caching progress.
        shared_cache: a :class:`PreprocessedCache` kept across datasets of the same scans (the demo's runs): the
            deterministic preprocessing of ``cache="memory"`` and ``"none"`` comes from it, and the config's
            transform chain is the one it holds (``transform`` must then be None). The disk cache does not share.

    Raises:
        InputFileError: (``on_error="raise"``) a bad file, when its item is cached or accessed.
        DatalistError: an item whose number of image files differs from the config's contrasts.
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        preprocessing_config: Mapping[str, Any] | None = None,
        transform: Compose | None = None,
        augment: Sequence[Callable] | Callable | None = None,
        cache: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        memory_limit_bytes: int = 4 * 2**30,
        cache_num_workers: int = 1,
        on_error: str = "raise",
        seed: int = 0,
        progress: bool = False,
        shared_cache: PreprocessedCache | None = None,
    ) -> None:
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        if cache not in ("auto", "memory", "disk", "none"):
            raise ValueError(f"cache must be auto|memory|disk|none, got {cache!r}")
        self.items = [dict(it) for it in items]
        for it in self.items:
            if isinstance(first_image(it), str) and not it.get("subject_id"):
                it["subject_id"] = subject_id_of(it)
        self.config = resolve_preprocessing_config(preprocessing_config)
        if transform is None:
            check_contrast_counts({"items": self.items}, preprocessed_channels(self.config))
        self.on_error = on_error
        config_key = json.dumps(self.config, sort_keys=True, default=str)
        if shared_cache is not None:
            if transform is not None:
                raise ValueError("a shared_cache holds the config's transform chain: pass transform=None")
            if config_key not in shared_cache.transforms:
                shared_cache.transforms[config_key] = preprocessing(self.config, keys=("image", "mask"))
            transform = shared_cache.transforms[config_key]
        self.transform = (
            transform if transform is not None else preprocessing(self.config, keys=("image", "mask"))
        )
        det = Compose([self.transform, FillDefaultsd()])
        aug = (
            augment
            if augment is None or isinstance(augment, Compose)
            else Compose(list(augment) if isinstance(augment, Sequence) else [augment])
        )
        self.augment = aug
        chain: list[Any] = [_Guarded(det)]
        if aug is not None:
            chain.append(_GuardedRandom(aug))
        full = Compose(chain)
        full.set_random_state(seed=seed)
        if cache == "auto":
            n_keys = 2 + int(self.config.get("brain_mask_key") is not None)
            cache = (
                "memory"
                if _estimate_bytes(len(self.items), self.config, n_keys) <= memory_limit_bytes
                else "disk"
            )
        self.cache = cache
        if cache == "memory" and shared_cache is not None:
            self._ds: Dataset = _SharedCacheDataset(
                self.items, full, shared_cache, config_key, num_workers=cache_num_workers, progress=progress
            )
        elif cache == "memory":
            self._ds = CacheDataset(self.items, full, num_workers=cache_num_workers, progress=progress)
        elif cache == "disk":
            key = hashlib.sha1(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]
            root = (
                Path(cache_dir)
                if cache_dir is not None
                else Path(tempfile.mkdtemp(prefix="mri_anomaly_cache_"))
            )
            self.cache_dir = root / f"preproc-{key}"
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._ds = PersistentDataset(self.items, full, cache_dir=self.cache_dir)
        elif shared_cache is not None:
            random = Compose([chain[1]]) if len(chain) > 1 else None
            self._ds = _SharedUncachedDataset(
                self.items, Compose([chain[0]]), random, shared_cache, config_key
            )
        else:
            self._ds = Dataset(self.items, full)

    def __len__(self) -> int:
        return len(self._ds)

    def set_random_state(self, seed: int) -> None:
        """Seed ``augment`` (the cached preprocessing is deterministic and needs no seed)."""
        if self.augment is not None:
            self.augment.set_random_state(seed=seed % (2**32))

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            d = self._ds[index]
        except Exception as e:
            err = unwrap_input_error(e)
            if err is None:
                raise
            d = _error_item(self.items[index], err)
        if "error" in d and self.on_error == "raise":
            raise InputFileError(d["error_path"], d["error"].split(": ", 1)[-1])
        return d


def plain_tensor(x: Any) -> torch.Tensor:
    """``x`` as a plain ``torch.Tensor`` (a ``MetaTensor``'s data without its metadata; arrays converted)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def slice_brain_fractions(image: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Fraction of each axial slice's voxels above ``threshold`` (in any channel).

    Args:
        image: (C, H, W, D); a voxel is brain when any channel (contrast) is above ``threshold``.
        threshold: brain voxels are ``> threshold`` (preprocessed background is 0).

    Returns:
        (D,) float tensor.
    """
    x = plain_tensor(image)
    return (x > threshold).any(0).float().mean(dim=(0, 1))


def slice_stacks(image: torch.Tensor, context: int) -> torch.Tensor:
    """Every axial slice of a volume with its ``context`` neighbours on each side, as channels (2.5D input).

    Args:
        image: (C, H, W, D) volume, axial axis last.
        context: neighbouring slices on each side (r >= 0); slices beyond the volume are 0 (background).

    Returns:
        (D, C·(2r+1), H, W): item k holds slices k − r, …, k + r in that order, each with its C channels, so the
        centre slice's channels are ``[r·C, (r+1)·C)``. ``context`` 0 gives the plain slices (D, C, H, W).
    """
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    x = plain_tensor(image)
    slices = x.permute(3, 0, 1, 2)  # (D, C, H, W)
    if context == 0:
        return slices.contiguous()
    depth = slices.shape[0]
    padded = torch.nn.functional.pad(slices, (0, 0, 0, 0, 0, 0, context, context))
    return torch.cat([padded[offset : offset + depth] for offset in range(2 * context + 1)], dim=1)


def slice_stack(image: torch.Tensor, k: int, context: int) -> torch.Tensor:
    """Axial slice ``k`` of ``image`` (C, H, W, D) with its ``context`` neighbours on each side: (C·(2r+1), H, W),
    as item ``k`` of :func:`slice_stacks` (neighbours beyond the volume are 0)."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    x = plain_tensor(image)
    depth = x.shape[-1]
    if not 0 <= k < depth:
        raise IndexError(f"slice {k} is outside the volume's {depth} axial slices")
    parts = [
        x[..., j] if 0 <= j < depth else torch.zeros_like(x[..., 0])
        for j in range(k - context, k + context + 1)
    ]
    return torch.cat(parts, dim=0).clone()


class SliceDataset(torch.utils.data.Dataset):
    """Axial slices (C, H, W) of the volumes of a :class:`VolumeDataset`, with brain content; with ``context`` r,
    each with its r neighbours on each side as channels (C·(2r+1), H, W).

    A slice ``vol[..., k]`` is kept when at least ``min_brain_fraction`` of its voxels are brain
    (``> brain_threshold``). Selection is computed once from the (cached) volumes; volumes that fail
    to load are left out and listed in ``.errors``. The volume dataset's ``augment`` runs on the whole
    volume at every slice access (a volume-level ``RandLesiond`` may miss the slice; for a lesion in
    every slice apply :class:`~mri_anomaly.data.lesions.RandLesion` to the (1, H, W) slice instead).

    Args:
        volumes: the volume dataset (its augmentation, if any, runs on each access).
        min_brain_fraction: minimum fraction of brain voxels in a kept slice (0 keeps all).
        brain_threshold: intensity above which a voxel counts as brain.
        augment: random 2D transforms of each slice item (``image``/``mask`` (1, H, W)) on every access, e.g.
            :func:`~mri_anomaly.data.augmentation.mri_augmentation`; seeded by :meth:`set_random_state`.
        context: neighbouring slices on each side stacked as channels of ``image`` (2.5D, :func:`slice_stack`);
            selection, ``mask`` and ``slice_label`` are the centre slice's.

    Items: see the module docstring (``image``/``mask`` are plain (1, H, W) tensors).
    """

    def __init__(
        self,
        volumes: VolumeDataset,
        min_brain_fraction: float = 0.1,
        brain_threshold: float = 0.0,
        augment: Callable | None = None,
        context: int = 0,
    ) -> None:
        if not 0.0 <= min_brain_fraction <= 1.0:
            raise ValueError(f"min_brain_fraction must be in [0, 1], got {min_brain_fraction}")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.context = int(context)
        self.volumes = volumes
        self.augment = augment
        self.min_brain_fraction = min_brain_fraction
        self.brain_threshold = brain_threshold
        self.index: list[tuple[int, int]] = []
        self.errors: list[dict[str, Any]] = []
        for v in range(len(volumes)):
            try:
                d = volumes[v]
            except InputFileError as e:
                self.errors.append(_error_item(volumes.items[v], e))
                continue
            if "error" in d:
                self.errors.append(d)
                continue
            frac = slice_brain_fractions(d["image"], brain_threshold)
            keep = torch.nonzero(frac >= min_brain_fraction).flatten().tolist()
            self.index.extend((v, int(k)) for k in keep)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, k = self.index[i]
        d = self.volumes[v]
        if "error" in d:
            return d
        out = {key: val for key, val in d.items() if not isinstance(val, torch.Tensor)}
        out["image"] = slice_stack(d["image"], k, self.context)
        m = plain_tensor(d["mask"])[..., k].clone()
        out["mask"] = m
        out["slice_index"] = k
        if d["has_mask"]:
            out["slice_label"] = int(bool((m > 0.5).any()))
        else:
            out["slice_label"] = 0 if d["label"] == 0 else -1
        if self.augment is not None:
            out = dict(self.augment(out))
        return out

    def set_random_state(self, seed: int) -> None:
        """Seed the slice ``augment`` and the volumes' own (each sample's draws then depend on ``seed`` only)."""
        if self.augment is not None and hasattr(self.augment, "set_random_state"):
            self.augment.set_random_state(seed=seed % (2**32))
        self.volumes.set_random_state(seed)

    def volume_slices(self, v: int) -> list[int]:
        """The kept slice indices of volume ``v``."""
        return [k for vv, k in self.index if vv == v]


def collate_with_errors(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``collate_fn`` for cohort runs: collates the good items (``list_data_collate``) and lists the
    error items (see the module docstring) under ``"errors"``; a batch of errors only is ``{"errors": [...]}``."""
    good = [b for b in batch if "error" not in b]
    errors = [dict(b) for b in batch if "error" in b]
    out: dict[str, Any] = list_data_collate(good) if good else {}
    out["errors"] = errors
    return out
