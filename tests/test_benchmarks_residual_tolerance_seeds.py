"""``benchmarks/residual_tolerance.py``'s ``trained_runs``: which seed runs a variant stands on (no training: the
trainer is replaced by a recorder)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def rt(load_benchmark):
    return load_benchmark("residual_tolerance")


@pytest.fixture
def demo_with_seed0(tmp_path):
    """A demo folder whose only ``latent-norm-ae-2d`` run is seed 0's (the demo's own)."""
    run = tmp_path / "demo" / "runs" / "latent-norm-ae-2d"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    return tmp_path / "demo"


@pytest.fixture
def trained(rt, monkeypatch):
    calls = []

    def record(config, datalist, run_dir, steps):
        calls.append(
            (config["seed"], config["model"]["latent_dim"], run_dir.name, steps, torch.get_num_threads())
        )
        return 0.0

    monkeypatch.setattr(rt, "train_steps_run", record)
    return calls


def test_seeds_the_demo_lacks_are_trained_not_dropped(rt, demo_with_seed0, trained, tmp_path):
    runs = rt.trained_runs(
        demo_with_seed0, "latent-norm-ae-2d", [0, 1, 2], tmp_path / "w", tmp_path / "d.json", []
    )
    assert runs == {
        "0": demo_with_seed0 / "runs" / "latent-norm-ae-2d",
        "1": tmp_path / "w" / "seed1",
        "2": tmp_path / "w" / "seed2",
    }
    assert [c[:3] for c in trained] == [(1, 32, "seed1"), (2, 32, "seed2")]


def test_overrides_or_another_cohort_train_every_seed(rt, demo_with_seed0, trained, tmp_path):
    runs = rt.trained_runs(
        demo_with_seed0,
        "latent-norm-ae-2d",
        [0, 1],
        tmp_path / "w",
        tmp_path / "d.json",
        ["model.latent_dim=128"],
    )
    assert list(runs) == ["0", "1"] and [c[:3] for c in trained] == [(0, 128, "seed0"), (1, 128, "seed1")]
    trained.clear()
    runs = rt.trained_runs(
        demo_with_seed0, "latent-norm-ae-2d", [0], tmp_path / "v", tmp_path / "d.json", [], reuse_demo=False
    )
    assert runs == {"0": tmp_path / "v" / "seed0"} and [c[:3] for c in trained] == [(0, 32, "seed0")]


def test_only_the_asked_seeds_are_returned(rt, demo_with_seed0, trained, tmp_path):
    extra = demo_with_seed0 / "seeds" / "3" / "runs" / "latent-norm-ae-2d"
    extra.mkdir(parents=True)
    (extra / "checkpoint.pt").write_bytes(b"")
    runs = rt.trained_runs(demo_with_seed0, "latent-norm-ae-2d", [3], tmp_path / "w", tmp_path / "d.json", [])
    assert runs == {"3": extra} and trained == []


def test_demo_seeds_names_the_runs_taken_from_the_demo(rt, demo_with_seed0, trained, tmp_path):
    work = tmp_path / "w"
    by_variant = {
        "plain": rt.trained_runs(
            demo_with_seed0, "latent-norm-ae-2d", [0, 1], work / "plain", tmp_path / "d.json", []
        ),
        "z128": rt.trained_runs(
            demo_with_seed0,
            "latent-norm-ae-2d",
            [0, 1],
            work / "z128",
            tmp_path / "d.json",
            ["model.latent_dim=128"],
        ),
    }
    assert rt.demo_seeds(by_variant, work) == {"plain": ["0"], "z128": []}


def test_seeds_train_on_one_thread_as_the_demo_does(rt, demo_with_seed0, trained, tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rt.trained_runs(demo_with_seed0, "latent-norm-ae-2d", [0, 1], tmp_path / "w", tmp_path / "d.json", [])
        assert [c[4] for c in trained] == [1]  # seed 1 trained on one thread, as the demo trains its runs
        assert torch.get_num_threads() == 2  # and the count restored
    finally:
        torch.set_num_threads(previous)
