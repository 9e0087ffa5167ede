"""Pure-PyTorch reference of the fused flow-step ops (actnorm + invertible 1x1(x1) convolution).

The same maths as the compiled extension, written with plain tensor ops: it is the oracle in the
tests and the fallback when ``mri_anomaly._C`` is not built. Tensors are ``(N, C, *spatial)`` with
1-3 spatial dims; V is the number of voxels per sample. Per voxel::

    h = exp(log_scale) * (x + bias)          # actnorm
    y = weight @ h                           # invertible 1x1(x1) conv
    logdet[n] = V * (sum(log_scale) + weight_logabsdet)

Gradients (sums run over samples and voxels)::

    g_h = weight^T @ g_y;   g_x = exp(log_scale) * g_h;   g_bias = sum(g_x)
    g_log_scale = sum(g_h * h) + V * sum_n(g_logdet);     g_weight = sum(g_y @ h^T)
"""

from __future__ import annotations

import torch

__all__ = [
    "check_flow_step_args",
    "flow_step",
    "flow_step_inverse",
    "flow_step_backward",
    "flow_step_backward_from_output",
    "channel_moments",
]

_FLOAT_TYPES = (torch.float32, torch.float64)


def _is_tracing() -> bool:
    return torch.compiler.is_compiling()


def _check_activation(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 3 or t.dim() > 5:
        raise ValueError(
            f"{name} must have shape (N, C, *spatial) with 1-3 spatial dims, got shape {tuple(t.shape)}"
        )
    if t.dtype not in _FLOAT_TYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def check_flow_step_args(
    activations: dict[str, torch.Tensor],
    params: dict[str, torch.Tensor],
    scalars: dict[str, torch.Tensor] | None = None,
    grad_logdet: torch.Tensor | None = None,
) -> None:
    """Validate the arguments of a flow-step op; raise a clear error naming the argument.

    Args:
        activations: ``{name: (N, C, *spatial)}``; all must have the same shape.
        params: ``{name: tensor}``, each ``(C,)`` or ``(C, C)`` (names containing ``weight``).
        scalars: ``{name: 0-dim tensor}``.
        grad_logdet: optional ``(N,)``.

    Raises:
        TypeError: wrong type or dtype (all must share the activations' float32/float64 dtype).
        ValueError: wrong rank or shape, mixed devices, or non-finite parameters.
    """
    names = list(activations)
    first = activations[names[0]]
    _check_activation(names[0], first)
    n, c = first.shape[0], first.shape[1]
    for name in names[1:]:
        t = activations[name]
        _check_activation(name, t)
        if t.shape != first.shape:
            raise ValueError(
                f"{name} must have the shape of {names[0]} {tuple(first.shape)}, got {tuple(t.shape)}"
            )
    others = dict(params)
    others.update(scalars or {})
    if grad_logdet is not None:
        others["grad_logdet"] = grad_logdet
    for name, t in others.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if "weight" in name and name != "weight_logabsdet":
            expected: tuple[int, ...] = (c, c)
        elif scalars is not None and name in scalars:
            expected = ()
        elif name == "grad_logdet":
            expected = (n,)
        else:
            expected = (c,)
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} for {names[0]} with {c} channels, got {tuple(t.shape)}"
            )
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {names[0]} has dtype {first.dtype}; they must match"
            )
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {names[0]} is on {first.device}; they must be on one device"
            )
    # Finiteness is a value check: free on the CPU, a host sync on accelerators, impossible while tracing.
    if not _is_tracing():
        for name, t in list(params.items()) + list((scalars or {}).items()):
            if t.device.type == "cpu" and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} has non-finite values (NaN or inf)")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)


def flow_step(
    x: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
    weight_logabsdet: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward flow step. Returns ``y`` (same shape as ``x``) and ``logdet`` ``(N,)``.

    Args:
        x: ``(N, C, *spatial)``.
        log_scale, bias: ``(C,)`` actnorm parameters.
        weight: ``(C, C)`` invertible channel-mixing matrix W.
        weight_logabsdet: 0-dim, ``log|det W|``.
    """
    check_flow_step_args(
        {"x": x},
        {"log_scale": log_scale, "bias": bias, "weight": weight},
        {"weight_logabsdet": weight_logabsdet},
    )
    h = torch.exp(log_scale)[:, None] * (_flat(x) + bias[:, None])
    y = torch.matmul(weight, h).reshape(x.shape)
    voxels = h.shape[-1]
    logdet = (voxels * (log_scale.sum() + weight_logabsdet)).expand(x.shape[0]).clone()
    return y, logdet


def flow_step_inverse(
    y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, weight_inverse: torch.Tensor
) -> torch.Tensor:
    """Inverse flow step ``x = exp(-log_scale) * (W^-1 @ y) - bias``; ``y`` is ``(N, C, *spatial)``."""
    check_flow_step_args({"y": y}, {"log_scale": log_scale, "bias": bias, "weight_inverse": weight_inverse})
    h = torch.matmul(weight_inverse, _flat(y))
    return (torch.exp(-log_scale)[:, None] * h - bias[:, None]).reshape(y.shape)


def _backward_from_h(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    h: torch.Tensor,
    log_scale: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g_y = _flat(grad_y)
    g_h = torch.matmul(weight.t(), g_y)
    g_x = torch.exp(log_scale)[:, None] * g_h
    voxels = h.shape[-1]
    grad_log_scale = (g_h * h).sum(dim=(0, 2)) + voxels * grad_logdet.sum()
    grad_bias = g_x.sum(dim=(0, 2))
    grad_weight = torch.matmul(g_y, h.transpose(1, 2)).sum(dim=0)
    return g_x.reshape(grad_y.shape), grad_log_scale, grad_bias, grad_weight


def flow_step_backward(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    x: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`flow_step` from the saved input.

    Args:
        grad_y, x: ``(N, C, *spatial)``. grad_logdet: ``(N,)``.

    Returns:
        ``(grad_x, grad_log_scale, grad_bias, grad_weight)``. The gradient w.r.t. ``weight_logabsdet``
        is ``V * grad_logdet.sum()`` and is left to the caller.
    """
    check_flow_step_args(
        {"grad_y": grad_y, "x": x},
        {"log_scale": log_scale, "bias": bias, "weight": weight},
        grad_logdet=grad_logdet,
    )
    h = torch.exp(log_scale)[:, None] * (_flat(x) + bias[:, None])
    return _backward_from_h(grad_y, grad_logdet, h, log_scale, weight)


def flow_step_backward_from_output(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    y: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
    weight_inverse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`flow_step` that rebuilds the input from the output (invertible backprop).

    Returns:
        ``(x, grad_x, grad_log_scale, grad_bias, grad_weight)`` with ``x`` the rebuilt input.
    """
    check_flow_step_args(
        {"grad_y": grad_y, "y": y},
        {"log_scale": log_scale, "bias": bias, "weight": weight, "weight_inverse": weight_inverse},
        grad_logdet=grad_logdet,
    )
    h = torch.matmul(weight_inverse, _flat(y))
    x = (torch.exp(-log_scale)[:, None] * h - bias[:, None]).reshape(y.shape)
    return (x, *_backward_from_h(grad_y, grad_logdet, h, log_scale, weight))


def channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count, sum, sum_sq)`` of ``x`` ``(N, C, *spatial)``, each ``(C,)`` float64.

    Sums (not means) so that they can be all-reduced across ranks before dividing.
    """
    _check_activation("x", x)
    xf = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
    count = torch.full((x.shape[1],), float(xf.shape[1]), dtype=torch.float64, device=x.device)
    return count, xf.sum(dim=1), (xf * xf).sum(dim=1)
