"""ResumableBatches: the same batches for any number of workers and on resume, one set of workers per stream."""

from __future__ import annotations

import itertools
import os

import torch
from mri_anomaly.training.loaders import ResumableBatches


class _Numbers(torch.utils.data.Dataset):
    """Item i: its index, a draw from the seeded torch RNG, and the process that loaded it."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.tensor(i), "draw": torch.rand(()), "pid": torch.tensor(os.getpid())}


def _take(stream: ResumableBatches, n: int) -> list[dict]:
    return list(itertools.islice(iter(stream), n))


def _stream(num_workers: int, start_step: int = 0) -> ResumableBatches:
    return ResumableBatches(
        _Numbers(),
        batch_size=3,
        seed=5,
        phase_index=0,
        num_workers=num_workers,
        rank=0,
        world_size=1,
        start_step=start_step,
    )


def test_batches_do_not_depend_on_workers_and_resume_exactly_across_epochs():
    # 10 items, batches of 3: 3 batches an epoch; 8 steps cross two epoch boundaries
    in_process = _take(_stream(0), 8)
    with_workers = _take(_stream(2), 8)
    resumed = _take(_stream(0, start_step=5), 3)
    for a, b in zip(in_process, with_workers, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["draw"], b["draw"])
    for a, b in zip(in_process[5:], resumed, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["draw"], b["draw"])
    epochs = [torch.cat([b["index"] for b in in_process[e * 3 : e * 3 + 3]]) for e in range(2)]
    assert len(set(epochs[0].tolist())) == 9 and not torch.equal(
        epochs[0], epochs[1]
    )  # reshuffled each epoch


def test_workers_live_across_epochs():
    batches = _take(_stream(1), 9)  # three epochs
    pids = {int(p) for b in batches for p in b["pid"]}
    assert len(pids) == 1 and os.getpid() not in pids  # one worker process served every epoch


class _AddDraw:
    """A sample transform: one more draw from the (per-sample seeded) torch RNG."""

    def __call__(self, item: dict) -> dict:
        return {**item, "extra": torch.rand(()), "transform_pid": torch.tensor(os.getpid())}


def test_sample_transform_runs_in_the_workers_under_the_sample_seed():
    def stream(num_workers: int, start_step: int = 0) -> ResumableBatches:
        return ResumableBatches(
            _Numbers(),
            3,
            seed=5,
            phase_index=0,
            num_workers=num_workers,
            start_step=start_step,
            sample_transform=_AddDraw(),
        )

    state = torch.get_rng_state()
    in_process = _take(stream(0), 5)
    assert torch.equal(torch.get_rng_state(), state)  # the training loop's RNG is untouched
    with_workers = _take(stream(2), 5)
    resumed = _take(stream(0, start_step=2), 3)
    plain = _take(_stream(0), 5)
    for a, b, c in zip(in_process, with_workers, plain, strict=True):
        assert torch.equal(a["extra"], b["extra"]) and torch.equal(a["draw"], c["draw"])
        assert not torch.equal(a["extra"], a["draw"])  # the transform's draw follows the item's own
        assert bool((b["transform_pid"] != os.getpid()).all())  # applied in the worker processes
    for a, b in zip(in_process[2:], resumed, strict=True):
        assert torch.equal(a["extra"], b["extra"])
