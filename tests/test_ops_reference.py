"""The pure-PyTorch reference of the flow-step ops: its hand-written maths against autograd,
brute-force Jacobians and slogdet, and its argument checks (it is the oracle for the extension)."""

from __future__ import annotations

import pytest
import torch
from mri_anomaly.ops import reference as ref

SHAPES = [(2, 3, 5), (2, 4, 3, 5), (1, 5, 3, 2, 3)]  # 1D, 2D, 3D spatial; odd sizes


def make_params(c: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    log_scale = 0.3 * torch.randn(c, generator=g, dtype=dtype)
    bias = 0.5 * torch.randn(c, generator=g, dtype=dtype)
    weight = torch.eye(c, dtype=dtype) + 0.3 * torch.randn(c, c, generator=g, dtype=dtype)
    logabsdet = torch.linalg.slogdet(weight.double())[1].to(dtype)
    return log_scale, bias, weight, logabsdet


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_einsum(shape):
    x = torch.randn(shape, dtype=torch.float64)
    ls, b, w, lad = make_params(shape[1])
    y, logdet = ref.flow_step(x, ls, b, w, lad)
    h = torch.exp(ls).view(1, -1, *[1] * (x.dim() - 2)) * (x + b.view(1, -1, *[1] * (x.dim() - 2)))
    expected = torch.einsum("oc,nc...->no...", w, h)
    torch.testing.assert_close(y, expected)
    voxels = x[0, 0].numel()
    torch.testing.assert_close(
        logdet, torch.full((shape[0],), voxels * (ls.sum() + lad).item(), dtype=torch.float64)
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_autograd(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in make_params(shape[1])]
    y, logdet = ref.flow_step(x, *params)
    grad_y = torch.randn_like(y)
    grad_logdet = torch.randn_like(logdet)
    grads = torch.autograd.grad((y, logdet), (x, *params[:3]), (grad_y, grad_logdet))
    mine = ref.flow_step_backward(grad_y, grad_logdet, x.detach(), *[p.detach() for p in params[:3]])
    for a, e in zip(mine, grads):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_from_output_equals_saved_input(shape):
    x = torch.randn(shape, dtype=torch.float64)
    ls, b, w, lad = make_params(shape[1])
    y, logdet = ref.flow_step(x, ls, b, w, lad)
    grad_y, grad_logdet = torch.randn_like(y), torch.randn_like(logdet)
    saved = ref.flow_step_backward(grad_y, grad_logdet, x, ls, b, w)
    x_rebuilt, *rebuilt = ref.flow_step_backward_from_output(
        grad_y, grad_logdet, y, ls, b, w, torch.linalg.inv(w)
    )
    torch.testing.assert_close(x_rebuilt, x)
    for a, e in zip(rebuilt, saved):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_round_trip(dtype):
    x = torch.randn(2, 4, 3, 5, 2, dtype=dtype)
    ls, b, w, lad = make_params(4, dtype)
    y, _ = ref.flow_step(x, ls, b, w, lad)
    w_inv = torch.linalg.inv(w.double()).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ref.flow_step_inverse(y, ls, b, w_inv), x, atol=tol, rtol=tol)


@pytest.mark.parametrize("shape", [(1, 2, 3), (1, 3, 2, 2), (1, 2, 1, 2, 2)])
def test_logdet_equals_brute_force_jacobian(shape):
    x = torch.randn(shape, dtype=torch.float64)
    ls, b, w, lad = make_params(shape[1], seed=3)
    jac = torch.autograd.functional.jacobian(lambda t: ref.flow_step(t, ls, b, w, lad)[0], x)
    d = x.numel()
    _, brute = torch.linalg.slogdet(jac.reshape(d, d))
    torch.testing.assert_close(ref.flow_step(x, ls, b, w, lad)[1][0], brute)


def test_channel_moments_float64():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float32) + torch.arange(4.0).view(1, 4, 1, 1)
    count, total, total_sq = ref.channel_moments(x)
    xd = x.double().transpose(0, 1).reshape(4, -1)
    assert count.dtype == total.dtype == total_sq.dtype == torch.float64
    torch.testing.assert_close(count, torch.full((4,), 90.0, dtype=torch.float64))
    torch.testing.assert_close(total, xd.sum(1))
    torch.testing.assert_close(total_sq, (xd * xd).sum(1))


def _args(c=3, dtype=torch.float32):
    x = torch.randn(2, c, 4, 4, dtype=dtype)
    ls, b, w, lad = make_params(c, dtype)
    return x, ls, b, w, lad


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: (a[0][0, 0],) + a[1:], ValueError, "x must have shape"),  # rank 2
        (lambda a: (a[0].unsqueeze(-1).unsqueeze(-1),) + a[1:], ValueError, "x must have shape"),  # rank 6
        (lambda a: (a[0], a[1][:2]) + a[2:], ValueError, "log_scale must have shape"),
        (lambda a: a[:3] + (a[3][:, :2], a[4]), ValueError, "weight must have shape"),
        (lambda a: a[:2] + (a[2].double(),) + a[3:], TypeError, "bias has dtype"),
        (lambda a: (a[0].half(),) + a[1:], TypeError, "x must be float32 or float64"),
        (lambda a: (a[0], a[1].to("meta")) + a[2:], ValueError, "log_scale is on meta"),
        (lambda a: a[:4] + (a[4].reshape(1),), ValueError, "weight_logabsdet must have shape"),
        (lambda a: a[:3] + (a[3].clone().fill_(float("nan")), a[4]), ValueError, "weight has non-finite"),
        (lambda a: (a[0], a[1].clone().fill_(float("inf"))) + a[2:], ValueError, "log_scale has non-finite"),
    ],
)
def test_bad_input_names_the_argument(mutate, exc, match):
    with pytest.raises(exc, match=match):
        ref.flow_step(*mutate(_args()))


def test_bad_input_backward_and_inverse():
    x, ls, b, w, _ = _args()
    with pytest.raises(ValueError, match="x must have the shape of grad_y"):
        ref.flow_step_backward(x[:, :, :2], torch.zeros(2), x, ls, b, w)
    with pytest.raises(ValueError, match="grad_logdet must have shape"):
        ref.flow_step_backward(x, torch.zeros(3), x, ls, b, w)
    with pytest.raises(ValueError, match="weight_inverse must have shape"):
        ref.flow_step_inverse(x, ls, b, w[:2])


def test_fallback_without_extension_warns_and_runs_reference():
    """Without mri_anomaly._C the wrappers run the reference, say so once, and ActNormInvConv still works."""
    import subprocess
    import sys

    code = (
        "import sys, warnings\n"
        "sys.modules['mri_anomaly._C'] = None  # makes `from mri_anomaly import _C` raise ImportError\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from mri_anomaly import ops\n"
        "assert any('pure-PyTorch reference' in str(w.message) for w in caught), [str(w.message) for w in caught]\n"
        "assert ops.backend_name() == 'pure-PyTorch reference', ops.backend_name()\n"
        "assert not ops.extension_available('cpu')\n"
        "import torch\n"
        "from mri_anomaly.flows import ActNormInvConv\n"
        "layer = ActNormInvConv(3).double()\n"
        "x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)\n"
        "layer.initialize(x)\n"
        "y, logdet = layer(x)\n"
        "torch.testing.assert_close(layer.inverse(y), x.detach())\n"
        "gy = torch.randn_like(y)\n"
        "want = torch.autograd.grad(y, (x, *layer.parameters()), gy)\n"
        "_, gx, grads = layer.reverse_and_grad(y.detach(), gy)\n"
        "torch.testing.assert_close(gx, want[0])\n"
        "for a, b in zip(grads, want[1:]):\n"
        "    torch.testing.assert_close(a, b)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
