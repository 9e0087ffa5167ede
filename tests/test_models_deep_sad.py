"""Deep SAD network and losses: hand-computed loss values, gradients, encoder copy, centre."""

from __future__ import annotations

import pytest
import torch
from mri_anomaly.models import DeepSAD, deep_sad_loss, soft_boundary_loss, soft_boundary_radius

# Tiny convolutions gain nothing from intra-op threads (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def test_deep_sad_loss_hand_computed() -> None:
    dist = torch.tensor([1.0, 4.0, 0.5, 2.0], dtype=torch.float64)
    semi_target = torch.tensor([0, 1, -1, -1])
    # unlabelled: 1; normal: 2·(4 + 1e-6); anomalies: 2/(0.5 + 1e-6), 2/(2 + 1e-6); mean of the four
    expected = (1.0 + 2 * (4 + 1e-6) + 2 / (0.5 + 1e-6) + 2 / (2 + 1e-6)) / 4
    assert deep_sad_loss(dist, semi_target, eta=2.0, eps=1e-6).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(3.4999983750040625, rel=1e-12)


def test_deep_sad_loss_eps_and_power() -> None:
    # ε keeps the inverse term finite at the centre: 1 / (0 + 1e-6) = 1e6.
    zero = torch.zeros(1, dtype=torch.float64)
    assert deep_sad_loss(zero, torch.tensor([-1])).item() == pytest.approx(1e6, rel=1e-12)
    assert deep_sad_loss(zero, torch.tensor([-1]), eps=0.5).item() == pytest.approx(2.0)
    # +1 is the distance plus ε times η (no power), 0 ignores η and ε.
    assert deep_sad_loss(zero + 3, torch.tensor([1]), eta=0.5, eps=0.25).item() == pytest.approx(0.5 * 3.25)
    assert deep_sad_loss(zero + 3, torch.tensor([0]), eta=0.5, eps=0.25).item() == pytest.approx(3.0)
    # No labels: Deep SVDD, the mean distance.
    dist = torch.tensor([0.3, 0.7, 2.0])
    assert deep_sad_loss(dist, torch.zeros(3)).item() == pytest.approx(1.0)


def test_deep_sad_loss_gradient_matches_formula() -> None:
    dist = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64, requires_grad=True)
    semi_target = torch.tensor([0, 1, -1])
    eta, eps = 1.5, 1e-3
    deep_sad_loss(dist, semi_target, eta, eps).backward()
    expected = torch.tensor([1.0, eta, -eta / (0.5 + eps) ** 2], dtype=torch.float64) / 3
    torch.testing.assert_close(dist.grad, expected)


def test_deep_sad_loss_errors() -> None:
    dist = torch.ones(3)
    with pytest.raises(ValueError, match="semi_target values"):
        deep_sad_loss(dist, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="semi_target must have shape"):
        deep_sad_loss(dist, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="eta"):
        deep_sad_loss(dist, torch.zeros(3), eta=0)
    with pytest.raises(ValueError, match="eps"):
        deep_sad_loss(dist, torch.zeros(3), eps=0)
    with pytest.raises(ValueError, match="dist"):
        deep_sad_loss(torch.ones(3, 2), torch.zeros(3))


def test_soft_boundary_loss_and_radius() -> None:
    dist = torch.tensor([1.0, 4.0, 9.0, 0.25])
    # R² = 2.25; excess over R²: 0, 1.75, 6.75, 0 -> mean 2.125; / ν = 4.25; + R² = 6.5
    assert soft_boundary_loss(dist, torch.tensor(1.5), nu=0.5).item() == pytest.approx(6.5)
    # (1 − ν)-quantile of sqrt(dist) = quantile([0.5, 1, 2, 3], 0.5) = 1.5 (linear interpolation)
    assert soft_boundary_radius(dist, nu=0.5).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="nu"):
        soft_boundary_loss(dist, 1.0, nu=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pretrained_encoder_really_transferred(spatial_dims: int) -> None:
    net = DeepSAD(spatial_dims, 1, 8, channels=(4, 8))
    ae = net.autoencoder()
    # Make the autoencoder's encoder differ from φ: a few optimiser steps also move the BatchNorm statistics.
    opt = torch.optim.SGD(ae.parameters(), lr=0.1)
    for _ in range(2):
        x = torch.rand((4, 1) + (8,) * spatial_dims)
        x_hat, _ = ae(x)
        opt.zero_grad()
        ((x_hat - x) ** 2).mean().backward()
        opt.step()
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    source = ae.encoder.state_dict()
    assert any(not torch.equal(before[k], source[k]) for k in source if k.endswith("weight"))
    net.load_pretrained_encoder(ae)
    copied = net.encoder.state_dict()
    assert set(copied) == set(source) and len(copied) > 0
    for key, value in source.items():
        assert torch.equal(copied[key], value), key
    assert any(k.endswith("running_mean") for k in copied)  # statistics are part of the copy
    # A copy is a copy, not shared storage.
    assert all(
        p.data_ptr() != q.data_ptr() for p, q in zip(net.encoder.parameters(), ae.encoder.parameters())
    )


def test_encoder_copy_refuses_a_different_architecture() -> None:
    net = DeepSAD(2, 1, 8, channels=(4, 8))
    with pytest.raises(RuntimeError):
        net.load_pretrained_encoder(DeepSAD(2, 1, 8, channels=(4, 8, 8)).autoencoder())


def test_center_is_mean_eval_embedding_with_small_coordinates_pushed() -> None:
    net = DeepSAD(2, 1, 6, channels=(4, 8))
    with torch.no_grad():
        net.encoder.fc.weight[0] = 0.0  # coordinate 0 is exactly 0 -> +0.1
        net.encoder.fc.weight[1] = -1e-4 * net.encoder.fc.weight[1].abs()  # tiny negative -> -0.1
    net.train()
    batches = [torch.rand(5, 1, 16, 16), torch.rand(3, 1, 16, 16)]
    # Run once in train mode so the BatchNorm running statistics are not the identity.
    net(torch.cat(batches))
    net.eval()
    with torch.no_grad():
        expected = net(torch.cat(batches)).double().mean(dim=0).float()
    net.train()
    center = net.init_center(iter(batches), eps=0.1)
    assert net.training, "train mode must be restored"
    assert center[0].item() == pytest.approx(0.1) and center[1].item() == pytest.approx(-0.1)
    big = expected.abs() >= 0.1
    torch.testing.assert_close(center[big], expected[big])
    small = ~big
    torch.testing.assert_close(center[small], torch.where(expected[small] < 0, -0.1, 0.1))
    assert bool((center.abs() >= 0.1 - 1e-7).all())
    assert bool(net.center_initialized)
    assert "center" in dict(net.named_buffers()) and "center" not in dict(net.named_parameters())
    with pytest.raises(ValueError, match="empty"):
        net.init_center([])


def test_score_is_squared_distance_in_eval_mode() -> None:
    net = DeepSAD(3, 1, 4, channels=(4, 8))
    x = torch.rand(3, 1, 8, 8, 16)
    with pytest.raises(RuntimeError, match="not initialised"):
        net.score(x)
    net.init_center([x])
    net.train()
    score = net.score(x)
    assert net.training
    net.eval()
    with torch.no_grad():
        expected = ((net(x) - net.center) ** 2).sum(dim=1)
    torch.testing.assert_close(score, expected)
    assert score.shape == (3,) and bool((score >= 0).all())


def test_center_is_all_reduced_across_ranks(monkeypatch) -> None:
    # Simulate a second rank: all_reduce adds that rank's embedding sum and sample count.
    net = DeepSAD(2, 1, 4, channels=(2, 4))
    x = torch.rand(8, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        other_sum = net(x[3:]).double().sum(dim=0)
    net.train()

    def all_reduce(tensor: torch.Tensor, *args, **kwargs) -> None:
        tensor += torch.cat([other_sum, torch.tensor([5.0], dtype=torch.float64)])

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    center = net.init_center([x[:3]], eps=0.0)
    monkeypatch.undo()
    torch.testing.assert_close(center, net.init_center([x], eps=0.0))
