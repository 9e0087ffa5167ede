"""Fused flow-step ops: actnorm + invertible 1x1(x1) convolution, forward, inverse and backward.

Tensors are ``(N, C, *spatial)`` with 1-3 spatial dims (2D slices and 3D volumes share the kernels);
float32 or float64; CPU, and CUDA where the extension was built with it. Per voxel::

    y = weight @ (exp(log_scale) * (x + bias))
    logdet[n] = V * (sum(log_scale) + weight_logabsdet)      # V = voxels per sample

The ops live in ``torch.ops.mri_anomaly`` (compiled extension ``mri_anomaly._C``) with fake kernels
registered here and autograd in C++ (``flow_step``) or here (``flow_step_inverse``), so they work under
autograd, ``torch.compile`` and ``torch.export``. On CPU the forward and inverse of mid-sized samples run one
folded batched GEMM and the rest the tiled kernel (``csrc/kernels/flow_step_cpu.h``; ``MRI_ANOMALY_CPU_PATH``). Without the extension every function runs :mod:`mri_anomaly.ops.reference`
(the same maths in plain PyTorch) and a warning says so once.
"""

from __future__ import annotations

import warnings

import torch

from mri_anomaly.ops import reference

__all__ = [
    "flow_step",
    "flow_step_inverse",
    "flow_step_backward",
    "flow_step_backward_from_output",
    "channel_moments",
    "backend_name",
    "extension_available",
    "reference",
]

try:
    from mri_anomaly import _C  # noqa: F401  (loading the library registers torch.ops.mri_anomaly.*)

    _EXTENSION_ERROR: str | None = None
except ImportError as error:  # not built (MRI_ANOMALY_NO_EXTENSION=1) or built against another torch
    _EXTENSION_ERROR = str(error)
    warnings.warn(
        f"mri_anomaly._C is not available ({error}); the flow-step ops run on the pure-PyTorch reference "
        "(slower). Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

if _EXTENSION_ERROR is None:
    from mri_anomaly.ops import _registrations  # noqa: F401


def _kernels_by_device() -> dict[str, bool]:
    if _EXTENSION_ERROR is not None:
        return {}
    return {
        device: bool(torch._C._dispatch_has_kernel_for_dispatch_key("mri_anomaly::flow_step", key))
        for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    }


# Looked up once: a plain dict lookup is free at call time and traceable by torch.compile.
_KERNELS: dict[str, bool] = _kernels_by_device()


def extension_available(device_type: str = "cpu") -> bool:
    """Whether the compiled ops have a kernel for ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    return _KERNELS.get(device_type, False)


def backend_name() -> str:
    """``"extension (cpu)"``, ``"extension (cpu, cuda)"`` or ``"pure-PyTorch reference"``."""
    if _EXTENSION_ERROR is not None:
        return "pure-PyTorch reference"
    devices = [d for d in ("cpu", "cuda") if extension_available(d)]
    return f"extension ({', '.join(devices)})"


_warned_devices: set[str] = set()


def _use_extension(t: torch.Tensor) -> bool:
    if not isinstance(t, torch.Tensor):
        return False  # the reference raises the clear TypeError
    device_type = t.device.type
    if device_type == "meta":
        return _EXTENSION_ERROR is None
    if extension_available(device_type):
        return True
    if _EXTENSION_ERROR is None and device_type not in _warned_devices:
        _warned_devices.add(device_type)
        warnings.warn(
            f"mri_anomaly._C has no {device_type} kernels; using the pure-PyTorch reference on {device_type}",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def flow_step(
    x: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
    weight_logabsdet: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Actnorm + invertible 1x1(x1) conv: ``y = W (exp(log_scale) * (x + bias))`` per voxel.

    Differentiable w.r.t. every input.

    Args:
        x: ``(N, C, *spatial)``, 1-3 spatial dims, float32 or float64.
        log_scale: ``(C,)`` actnorm log-scale.
        bias: ``(C,)`` actnorm bias (added before scaling).
        weight: ``(C, C)`` invertible matrix W.
        weight_logabsdet: 0-dim ``log|det W|`` (with an LU parameterisation: the sum of log|diag U|).

    Returns:
        ``y`` of the shape of ``x`` and ``logdet`` ``(N,)`` = ``V * (sum(log_scale) + weight_logabsdet)``.

    Raises:
        TypeError, ValueError: wrong dtype/rank/shape, mixed devices, non-finite parameters (named).
    """
    if _use_extension(x):
        return torch.ops.mri_anomaly.flow_step.default(x, log_scale, bias, weight, weight_logabsdet)
    return reference.flow_step(x, log_scale, bias, weight, weight_logabsdet)


def flow_step_inverse(
    y: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor, weight_inverse: torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`flow_step`: ``x = exp(-log_scale) * (W^-1 y) - bias``.

    Args:
        y: ``(N, C, *spatial)``. log_scale, bias: ``(C,)``. weight_inverse: ``(C, C)`` W^-1
            (assemble it in float64, then cast).

    Returns:
        ``x`` of the shape of ``y``.
    """
    if _use_extension(y):
        return torch.ops.mri_anomaly.flow_step_inverse.default(y, log_scale, bias, weight_inverse)
    return reference.flow_step_inverse(y, log_scale, bias, weight_inverse)


def flow_step_backward(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    x: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`flow_step` from the saved input, in one pass over the data.

    Args:
        grad_y, x: ``(N, C, *spatial)``. grad_logdet: ``(N,)``. log_scale, bias: ``(C,)``. weight: ``(C, C)``.

    Returns:
        ``(grad_x, grad_log_scale, grad_bias, grad_weight)``; the gradient w.r.t. ``weight_logabsdet``
        is ``V * grad_logdet.sum()``.
    """
    if _use_extension(x):
        return torch.ops.mri_anomaly.flow_step_backward.default(
            grad_y, grad_logdet, x, log_scale, bias, weight
        )
    return reference.flow_step_backward(grad_y, grad_logdet, x, log_scale, bias, weight)


def flow_step_backward_from_output(
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    y: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
    weight_inverse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rebuild the input from the output and compute all gradients, in one pass (invertible backprop).

    Args:
        grad_y, y: ``(N, C, *spatial)``. grad_logdet: ``(N,)``. log_scale, bias: ``(C,)``.
        weight, weight_inverse: ``(C, C)``.

    Returns:
        ``(x, grad_x, grad_log_scale, grad_bias, grad_weight)``.
    """
    if _use_extension(y):
        return torch.ops.mri_anomaly.flow_step_backward_from_output.default(
            grad_y, grad_logdet, y, log_scale, bias, weight, weight_inverse
        )
    return reference.flow_step_backward_from_output(
        grad_y, grad_logdet, y, log_scale, bias, weight, weight_inverse
    )


def channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count, sum, sum_sq)`` of ``x`` ``(N, C, *spatial)``, each ``(C,)`` float64.

    Accumulated in float64; sums rather than means so that they can be all-reduced across ranks.
    """
    if _use_extension(x):
        return torch.ops.mri_anomaly.channel_moments.default(x)
    return reference.channel_moments(x)
