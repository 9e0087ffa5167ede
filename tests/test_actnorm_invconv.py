"""ActNormInvConv: LU-parameterised W, data-dependent init, checkpoint behaviour, inverse, log-det,
and reverse_and_grad against autograd."""

from __future__ import annotations

import io

import pytest
import torch
from mri_anomaly.flows import ActNormInvConv


def perturbed(c: int, dtype=torch.float64, seed: int = 0) -> ActNormInvConv:
    torch.manual_seed(seed)
    layer = ActNormInvConv(c).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer


def test_init_weight_is_orthogonal_and_lu_consistent():
    layer = ActNormInvConv(6)
    w = layer.weight()
    assert w.dtype == torch.float64
    torch.testing.assert_close(w @ w.t(), torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(layer.weight_logabsdet(), torch.linalg.slogdet(w)[1], atol=1e-6, rtol=0)
    assert not bool(layer.initialized)


def test_logabsdet_and_inverse_after_training_like_updates():
    layer = perturbed(5)
    w = layer.weight()
    torch.testing.assert_close(layer.weight_logabsdet(), torch.linalg.slogdet(w)[1])
    torch.testing.assert_close(layer.weight_inverse() @ w, torch.eye(5, dtype=torch.float64))
    assert torch.all(
        torch.sign(torch.linalg.slogdet(w)[0]) == torch.prod(layer.sign) * torch.det(layer.permutation)
    )


@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)])
def test_initialize_gives_zero_mean_unit_std(spatial):
    layer = ActNormInvConv(4)
    x = 3.0 + 2.5 * torch.randn(3, 4, *spatial) * torch.tensor([1.0, 0.1, 5.0, 1.0]).view(
        1, 4, *[1] * len(spatial)
    )
    assert layer.initialize(x) is True
    assert bool(layer.initialized)
    h = torch.exp(layer.log_scale).view(1, 4, *[1] * len(spatial)) * (
        x + layer.bias.view(1, 4, *[1] * len(spatial))
    )
    flat = h.transpose(0, 1).reshape(4, -1).double()
    torch.testing.assert_close(flat.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        flat.std(1, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_constant_channel_gets_floored_scale():
    layer = ActNormInvConv(2, min_std=1e-2)
    x = torch.randn(2, 2, 4, 4, 4)
    x[:, 1] = 0.0  # MRI background: a constant channel
    layer.initialize(x)
    torch.testing.assert_close(layer.log_scale[1], torch.tensor(-torch.log(torch.tensor(1e-2)).item()))
    y, logdet = layer(x)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()


def test_initialized_survives_state_dict_and_blocks_reinit():
    layer = ActNormInvConv(3)
    layer.initialize(torch.randn(2, 3, 4, 4) * 4 + 1)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    loaded = ActNormInvConv(3)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert bool(loaded.initialized)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    assert loaded.initialize(torch.randn(2, 3, 4, 4)) is False
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(loaded.log_scale, layer.log_scale)
    assert loaded.initialize(torch.randn(2, 3, 4, 4), force=True) is True
    assert not torch.equal(loaded.log_scale, layer.log_scale)


def test_initialize_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3"):
        ActNormInvConv(3).initialize(torch.randn(2, 4, 5, 5))


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_channels"):
        ActNormInvConv(0)
    with pytest.raises(ValueError, match="min_std"):
        ActNormInvConv(2, min_std=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_round_trip(dtype):
    layer = perturbed(4)
    x = torch.randn(2, 4, 5, 3, 4, dtype=dtype)
    layer = layer.to(torch.float32) if dtype == torch.float32 else layer
    y, _ = layer(x)
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(layer.inverse(y), x, atol=tol, rtol=tol)


def test_logdet_equals_brute_force_jacobian():
    layer = perturbed(3, seed=1)
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: layer(t)[0], x)
    _, brute = torch.linalg.slogdet(jac.reshape(x.numel(), x.numel()))
    torch.testing.assert_close(layer(x)[1][0], brute)


@pytest.mark.parametrize("spatial", [(5,), (3, 4), (3, 2, 3)])
def test_reverse_and_grad_equals_autograd(spatial):
    layer = perturbed(4, seed=2)
    x = torch.randn(2, 4, *spatial, dtype=torch.float64, requires_grad=True)
    y, logdet = layer(x)
    grad_y, grad_logdet = torch.randn_like(y), torch.randn_like(logdet)
    params = tuple(layer.parameters())
    expected = torch.autograd.grad((y, logdet), (x, *params), (grad_y, grad_logdet))
    x_rebuilt, grad_x, param_grads = layer.reverse_and_grad(y.detach(), grad_y, grad_logdet)
    assert len(param_grads) == len(params) == 5
    torch.testing.assert_close(x_rebuilt, x.detach())
    torch.testing.assert_close(grad_x, expected[0])
    for got, want, p in zip(param_grads, expected[1:], params):
        assert got.shape == p.shape and got.dtype == p.dtype
        torch.testing.assert_close(got, want)


def test_reverse_and_grad_float32_and_no_logdet_grad():
    layer = perturbed(3, seed=4).float()
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y, logdet = layer(x)
    grad_y = torch.randn_like(y)
    expected = torch.autograd.grad(y, (x, *layer.parameters()), grad_y)
    _, grad_x, param_grads = layer.reverse_and_grad(y.detach(), grad_y, None)
    torch.testing.assert_close(grad_x, expected[0], atol=1e-5, rtol=1e-4)
    for got, want in zip(param_grads, expected[1:]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
