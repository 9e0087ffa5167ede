"""Fake (meta) kernels and autograd formulas of the compiled ``torch.ops.mri_anomaly`` ops.

Imported by :mod:`mri_anomaly.ops` once ``mri_anomaly._C`` has loaded. The fake kernels give
torch.compile / torch.export the output shapes (always contiguous, like the real kernels). The autograd
of ``flow_step`` is registered in C++ (``csrc/torch/flow_step.cpp``) and that of ``flow_step_inverse``
here; both call backward ops or plain torch ops, so the backward of ``flow_step`` stays one opaque fused op.
"""

from __future__ import annotations

import torch

_LIB = "mri_anomaly"


def _check_like(name: str, t: torch.Tensor, ref: torch.Tensor, shape: tuple) -> None:
    torch._check_value(
        tuple(t.shape) == tuple(shape), lambda: f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}"
    )
    torch._check_type(
        t.dtype == ref.dtype, lambda: f"{name} has dtype {t.dtype} but the activations have {ref.dtype}"
    )
    torch._check_value(
        t.device == ref.device,
        lambda: (
            f"{name} is on {t.device} but the activations are on {ref.device}; they must be on one device"
        ),
    )


def _check_activation(name: str, t: torch.Tensor) -> None:
    torch._check_value(
        3 <= t.dim() <= 5, lambda: f"{name} must have shape (N, C, *spatial) with 1-3 spatial dims"
    )
    torch._check_type(t.dtype in (torch.float32, torch.float64), lambda: f"{name} must be float32 or float64")


@torch.library.register_fake(f"{_LIB}::flow_step")
def _flow_step_fake(x, log_scale, bias, weight, weight_logabsdet):
    _check_activation("x", x)
    c = x.shape[1]
    _check_like("log_scale", log_scale, x, (c,))
    _check_like("bias", bias, x, (c,))
    _check_like("weight", weight, x, (c, c))
    _check_like("weight_logabsdet", weight_logabsdet, x, ())
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((x.shape[0],))


@torch.library.register_fake(f"{_LIB}::flow_step_inverse")
def _flow_step_inverse_fake(y, log_scale, bias, weight_inverse):
    _check_activation("y", y)
    c = y.shape[1]
    _check_like("log_scale", log_scale, y, (c,))
    _check_like("bias", bias, y, (c,))
    _check_like("weight_inverse", weight_inverse, y, (c, c))
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _backward_fake_common(grad_y, grad_logdet, xy, log_scale, bias, weight):
    _check_activation("grad_y", grad_y)
    torch._check_value(xy.shape == grad_y.shape, lambda: "x/y must have the shape of grad_y")
    c = grad_y.shape[1]
    _check_like("grad_logdet", grad_logdet, grad_y, (grad_y.shape[0],))
    _check_like("log_scale", log_scale, grad_y, (c,))
    _check_like("bias", bias, grad_y, (c,))
    _check_like("weight", weight, grad_y, (c, c))
    return (
        torch.empty_like(grad_y, memory_format=torch.contiguous_format),
        log_scale.new_empty((c,)),
        bias.new_empty((c,)),
        weight.new_empty((c, c)),
    )


@torch.library.register_fake(f"{_LIB}::flow_step_backward")
def _flow_step_backward_fake(grad_y, grad_logdet, x, log_scale, bias, weight):
    return _backward_fake_common(grad_y, grad_logdet, x, log_scale, bias, weight)


@torch.library.register_fake(f"{_LIB}::flow_step_backward_from_output")
def _flow_step_backward_from_output_fake(grad_y, grad_logdet, y, log_scale, bias, weight, weight_inverse):
    grads = _backward_fake_common(grad_y, grad_logdet, y, log_scale, bias, weight)
    _check_like("weight_inverse", weight_inverse, grad_y, (grad_y.shape[1], grad_y.shape[1]))
    return (torch.empty_like(y, memory_format=torch.contiguous_format), *grads)


@torch.library.register_fake(f"{_LIB}::channel_moments")
def _channel_moments_fake(x):
    _check_activation("x", x)
    c = x.shape[1]
    return tuple(x.new_empty((c,), dtype=torch.float64) for _ in range(3))


# --- autograd ---


# flow_step's autograd is registered in C++ (csrc/torch/flow_step.cpp: a Python autograd kernel cost about
# 100 us per call, which dominated small layers); its backward is the fused flow_step_backward op.


def _inverse_setup_context(ctx, inputs, output):
    y, log_scale, bias, weight_inverse = inputs
    ctx.save_for_backward(y, log_scale, bias, weight_inverse, output)


def _inverse_backward(ctx, grad_x):
    # x = exp(-s) * (W^-1 y) - b: an affine map; sampling rarely needs it, so plain torch ops suffice.
    y, log_scale, bias, weight_inverse, x = ctx.saved_tensors
    n, c = y.shape[0], y.shape[1]
    g_x = grad_x.reshape(n, c, -1)
    g_k = torch.exp(-log_scale)[:, None] * g_x
    grad_y = torch.matmul(weight_inverse.t(), g_k).reshape(y.shape)
    grad_weight_inverse = torch.matmul(g_k, y.reshape(n, c, -1).transpose(1, 2)).sum(0)
    grad_log_scale = -(g_x * (x.reshape(n, c, -1) + bias[:, None])).sum(dim=(0, 2))
    grad_bias = -g_x.sum(dim=(0, 2))
    return grad_y, grad_log_scale, grad_bias, grad_weight_inverse


torch.library.register_autograd(
    f"{_LIB}::flow_step_inverse", _inverse_backward, setup_context=_inverse_setup_context
)
