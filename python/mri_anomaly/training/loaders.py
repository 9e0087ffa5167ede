"""Training batches in a reproducible, resumable order, on one process or sharded across ``torchrun`` ranks.

Two things make a resumed run continue *exactly* where an uninterrupted one would be:

* **Order.** Epoch ``e`` of a phase visits the dataset in the permutation a ``DistributedSampler`` with
  ``seed`` and ``set_epoch(e)`` gives (rank ``r`` of ``W`` takes every W-th index; one process takes all).
  Step ``s`` of the phase is batch ``s mod B`` of epoch ``s div B`` (``B`` batches per epoch, last partial
  batch dropped), so resuming at step ``s`` simply starts the loader at that batch — nothing is replayed.
* **Augmentation.** Every sample is drawn with its own seed, a function of (run seed, phase, stream,
  epoch, index) only: the torch/NumPy/Python RNGs and the MONAI transform chain's random state are set
  from it before the sample is loaded. Random transforms therefore give the same result whichever worker
  process, rank or resumed run loads the sample. A phase's ``sample_transform`` (e.g. Deep SAD's synthetic
  labelled anomalies, :meth:`~mri_anomaly.training.methods.AnomalyMethod.phase_sample_transform`) runs on
  each item right after it is loaded, in the worker, under the same seeding.

With W processes and batch size b per process, the union of one step's batches over the ranks is the
same set of samples that one process with batch size W·b draws.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mri_anomaly.errors import UserInputError
from mri_anomaly.training.config import slice_context

if TYPE_CHECKING:
    from mri_anomaly.data import PreprocessedCache

__all__ = ["SeededSampleDataset", "ResumableBatches", "sample_seed", "collate", "build_dataset"]


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (a NumPy ``SeedSequence``: well mixed, platform independent)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def _set_random_state(obj: Any, seed: int) -> None:
    """Seed a MONAI transform chain (``Compose``/``Randomizable``) found on ``obj`` or its ``transform``."""
    for candidate in (obj, getattr(obj, "transform", None), getattr(obj, "transforms", None)):
        setter = getattr(candidate, "set_random_state", None)
        if callable(setter) and not isinstance(candidate, (list, tuple)):
            setter(seed=seed % (2**32))
            return


class SeededSampleDataset(Dataset):
    """Wraps a map-style dataset so that ``dataset[(index, seed)]`` loads item ``index`` with all RNGs seeded.

    Args:
        dataset: the dataset to wrap (items are dicts; random transforms are MONAI ``Randomizable``).
        transform: optional ``item -> item`` applied after loading, under the same seeding (its draws from the
            torch/NumPy/Python global RNGs are then a function of the sample seed only). Not part of ``dataset``,
            so one cached dataset serves every phase.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any] | None = None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # In the main process (num_workers=0) the global RNGs belong to the training loop: keep them untouched.
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only, the one fork_rng(devices=[]) restores: torch.manual_seed would also reseed
            # the CUDA generators of the training loop (not restored) and, before CUDA starts, queue that with a
            # formatted stack trace per device kind (0.2-0.7 ms a sample by stack depth; the demo trains on ~10^5)
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed % (2**32))
            random.seed(seed)
            _set_random_state(self.dataset, seed)
            try:
                item = self.dataset[index]
                return item if self.transform is None else self.transform(item)
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


def collate(items: Sequence[Any]) -> Any:
    """MONAI's list collate (keeps ``MetaTensor`` metadata, stacks tensors, lists strings)."""
    from monai.data import list_data_collate

    return list_data_collate(list(items))


class ResumableBatches:
    """An endless stream of training batches for one phase, resumable at any step.

    Args:
        dataset: map-style dataset of dict items.
        batch_size: per process.
        seed: the run seed. phase_index / stream: distinguish the phase and the data stream
            (0 = the phase's own section, 1 = the ``general`` section fed alongside).
        num_workers: DataLoader workers.
        rank / world_size: this process's shard (defaults: the running process group, or 0 / 1).
        start_step: the first step to produce (``phase_step`` of a resumed run).
        sample_transform: optional ``item -> item`` run on every item in the loader (see :class:`SeededSampleDataset`).

    Raises:
        ValueError: when the dataset is too small for one batch on every process.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        phase_index: int,
        stream: int = 0,
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        start_step: int = 0,
        name: str = "training",
        sample_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        from mri_anomaly.training import distributed

        self.dataset = SeededSampleDataset(dataset, sample_transform)
        self.batch_size = batch_size
        self.seed = seed
        self.phase_index = phase_index
        self.stream = stream
        self.num_workers = num_workers
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        n = len(self.dataset)
        per_rank = n // self.world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise UserInputError(
                f"the {name} data has {n} samples: fewer than batch_size {batch_size} x {self.world_size} process(es); "
                "lower train.batch_size or add data"
            )
        self.step = start_step

    def _epoch_indices(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(
            range(len(self.dataset)),  # type: ignore[arg-type]
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=sample_seed(self.seed, self.phase_index, self.stream) % (2**31),
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def _batch_keys(self, start_step: int) -> Iterator[list[tuple[int, int]]]:
        """The ``(index, sample seed)`` keys of every batch from ``start_step`` on, epoch after epoch."""
        step = start_step
        while True:
            epoch, offset = divmod(step, self.batches_per_epoch)
            indices = self._epoch_indices(epoch)[
                offset * self.batch_size : self.batches_per_epoch * self.batch_size
            ]
            for b in range(0, len(indices), self.batch_size):
                yield [
                    (i, sample_seed(self.seed, self.phase_index, self.stream, epoch, i))
                    for i in indices[b : b + self.batch_size]
                ]
                step += 1

    def __iter__(self) -> Iterator[Any]:
        # One loader for the whole stream: its workers live across epochs (the keys, not the workers, carry the
        # randomness, so batches are the same for any number of workers and on resume).
        start = self.step
        loader = DataLoader(
            self.dataset,
            batch_sampler=_KeyBatches(self, start),
            num_workers=self.num_workers,
            collate_fn=collate,
            # its own generator: creating a loader iterator must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(
                sample_seed(self.seed, self.phase_index, self.stream, start, 7)
            ),
        )
        for batch in loader:
            self.step += 1
            yield batch


class _KeyBatches:
    """A batch sampler over :meth:`ResumableBatches._batch_keys` (endless; the DataLoader reads it lazily)."""

    def __init__(self, batches: ResumableBatches, start_step: int) -> None:
        self.batches, self.start_step = batches, start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.batches._batch_keys(self.start_step)


def build_dataset(
    config: dict[str, Any],
    items: Sequence[dict[str, Any]],
    train: bool = True,
    cache_dir: str | os.PathLike | None = None,
    shared_cache: PreprocessedCache | None = None,
) -> Dataset:
    """The training dataset of a config: preprocessed volumes (3D) or their brain slices (2D).

    Volumes are preprocessed once and cached (:class:`mri_anomaly.data.VolumeDataset`, ``cache="auto"``);
    2D configs train on the axial slices with brain fraction >= ``slices.min_brain_fraction``
    (:class:`mri_anomaly.data.SliceDataset`), each with its ``slices.context`` neighbours as channels. A bad file
    raises an ``InputFileError`` naming it: training data must be readable (scoring, in contrast, records bad files
    and goes on).

    With ``train`` and ``train.augment`` set, :func:`~mri_anomaly.data.augmentation.mri_augmentation` runs on every
    access after the cache (on slices for 2D configs, on volumes for 3D), seeded per sample by
    :class:`SeededSampleDataset`.

    Args:
        config: a validated config. items: datalist items of one section.
        train: a training dataset (augmented when the config asks for it).
        cache_dir: folder of the disk cache when the volumes do not fit in memory (default: a temporary folder).
        shared_cache: preprocessed volumes shared with other datasets of the same scans
            (:class:`~mri_anomaly.data.PreprocessedCache`; in-memory caching only).

    Returns:
        a map-style dataset of dict items (``image`` (1, H, W[, D]) float32 in [0, 1], ``label``, ``semi_target``, ``mask``...).
    """
    from mri_anomaly.data import SliceDataset, VolumeDataset
    from mri_anomaly.data.augmentation import mri_augmentation, resolve_augment_config
    from mri_anomaly.data.preprocessing import resolve_preprocessing_config

    preprocessing_config = config.get("preprocessing") or {}
    options = resolve_augment_config((config.get("train") or {}).get("augment")) if train else None
    augment = None
    if options is not None:
        clip = bool(resolve_preprocessing_config(preprocessing_config)["intensity"].get("clip", True))
        augment = mri_augmentation(
            options, config["spatial_dims"], clip=clip, plain_tensors=config["spatial_dims"] == 2
        )
    volumes = VolumeDataset(
        items,
        preprocessing_config=preprocessing_config,
        augment=augment if config["spatial_dims"] == 3 else None,
        cache="auto",
        on_error="raise",
        seed=int(config.get("seed", 0)),
        cache_dir=cache_dir,
        shared_cache=shared_cache,
    )
    if config["spatial_dims"] == 2:
        return SliceDataset(
            volumes,
            min_brain_fraction=float(config["slices"]["min_brain_fraction"]),
            augment=augment,
            context=slice_context(config),
        )
    return volumes
