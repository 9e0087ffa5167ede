"""ActNormInvConv.initialize under torch.distributed (2 gloo processes on CPU): the moments are
all-reduced, so each rank initialising on its half of a batch gets exactly the single-process init
on the whole batch, and both ranks agree."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mri_anomaly.flows import ActNormInvConv


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    scale = torch.tensor([1.0, 0.2, 4.0]).view(1, 3, 1, 1, 1)
    return 2.0 + scale * torch.randn(4, 3, 5, 4, 3, generator=g)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        layer = ActNormInvConv(3)
        half = _batch().chunk(world)[rank]
        assert layer.initialize(half)
        torch.save(
            {"log_scale": layer.log_scale.detach(), "bias": layer.bias.detach()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_initialize_all_reduces_moments(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = ActNormInvConv(3)
    single.initialize(_batch())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("log_scale", "bias"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], getattr(single, name).detach(), rtol=1e-6, atol=1e-6)
    # Each half alone would give a different init: the all-reduce is what makes them equal.
    alone = ActNormInvConv(3)
    alone.initialize(_batch().chunk(2)[0])
    assert not torch.allclose(alone.bias, single.bias, atol=1e-3)
