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
