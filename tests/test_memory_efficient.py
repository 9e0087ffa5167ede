"""Memory-efficient (invertible) backprop: same gradients as ordinary autograd, activations flat in depth."""

from __future__ import annotations

import copy

import pytest
import torch
from mri_anomaly.flows import Coupling, Glow, InvertibleChain, dequantize, saved_activation_bytes


def _perturbed_glow(
    spatial_dims: int, steps: int, coupling: str = "affine", dtype=torch.float64
) -> tuple[Glow, torch.Tensor]:
    glow = Glow(spatial_dims, 1, levels=2, steps=steps, hidden_channels=8, coupling=coupling).to(dtype)
    x = dequantize(torch.rand((3, 1) + (8,) * spatial_dims, dtype=dtype), training=True)
    glow.initialize(x)
    with torch.no_grad():
        for module in glow.modules():
            if isinstance(module, Coupling):
                module.net[-1].weight.normal_(0.0, 0.05)
                module.net[-1].bias.normal_(0.0, 0.05)
    return glow, x


def _grads(glow: Glow, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    glow.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = glow(x)
    # A loss that touches the log-density and, separately, one latent (so grad_y and grad_logdet both matter).
    loss = -out.log_prob.mean() + 0.3 * (out.z[0] ** 3).mean()
    loss.backward()
    return x.grad, {name: p.grad.clone() for name, p in glow.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("spatial_dims,coupling", [(2, "affine"), (2, "additive"), (3, "affine")])
def test_memory_efficient_gradients_equal_standard_gradients(spatial_dims, coupling):
    standard, x = _perturbed_glow(spatial_dims, steps=3, coupling=coupling)
    efficient = copy.deepcopy(standard)
    efficient.memory_efficient = True
    assert efficient.memory_efficient and not standard.memory_efficient
    grad_x_std, grads_std = _grads(standard, x)
    grad_x_eff, grads_eff = _grads(efficient, x)
    assert grads_std.keys() == grads_eff.keys()
    # every parameter of a step gets a gradient (the prior and the chain)
    assert len(grads_std) == sum(1 for _ in standard.parameters())
    for name in grads_std:
        torch.testing.assert_close(grads_eff[name], grads_std[name], rtol=1e-7, atol=1e-9, msg=name)
    torch.testing.assert_close(grad_x_eff, grad_x_std, rtol=1e-7, atol=1e-9)


def test_memory_efficient_gradients_in_float32():
    standard, x = _perturbed_glow(2, steps=4, dtype=torch.float32)
    efficient = copy.deepcopy(standard)
    efficient.memory_efficient = True
    _, grads_std = _grads(standard, x)
    _, grads_eff = _grads(efficient, x)
    for name in grads_std:
        torch.testing.assert_close(grads_eff[name], grads_std[name], rtol=1e-3, atol=1e-5, msg=name)


def test_saved_activations_do_not_grow_with_depth_when_memory_efficient():
    saved = {}
    for memory_efficient in (False, True):
        for steps in (2, 8):
            glow, x = _perturbed_glow(2, steps=steps, dtype=torch.float32)
            glow.memory_efficient = memory_efficient
            saved[memory_efficient, steps] = saved_activation_bytes(glow, x)
    assert saved[True, 2] == saved[True, 8], saved
    assert saved[False, 8] > 3 * saved[False, 2], saved
    assert saved[False, 8] > 10 * saved[True, 8], saved


def test_chain_reverse_and_grad_matches_autograd():
    glow, x = _perturbed_glow(3, steps=2)
    chain: InvertibleChain = glow.chains[0]
    from mri_anomaly.flows import squeeze

    h = squeeze(x, 3).requires_grad_(True)
    y, logdet = chain(h)
    grad_y = torch.randn_like(y)
    grad_logdet = torch.randn_like(logdet)
    params = tuple(chain.parameters())
    expected = torch.autograd.grad((y, logdet), (h, *params), (grad_y, grad_logdet))
    rebuilt, grad_h, param_grads = chain.reverse_and_grad(y.detach(), grad_y, grad_logdet)
    torch.testing.assert_close(rebuilt, h.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_h, expected[0])
    assert len(param_grads) == len(params)
    for got, want in zip(param_grads, expected[1:]):
        torch.testing.assert_close(got, want)


def test_memory_efficient_mode_is_plain_forward_without_grad():
    glow, x = _perturbed_glow(2, steps=2)
    reference = glow(x).log_prob
    glow.memory_efficient = True
    with torch.no_grad():
        torch.testing.assert_close(glow(x).log_prob, reference, rtol=0, atol=0)
