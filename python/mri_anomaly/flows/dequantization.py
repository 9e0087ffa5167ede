"""Dequantisation of [0, 1] images for flows, and the bits-per-dimension conversion."""

from __future__ import annotations

import math

import torch

__all__ = ["dequantize", "discrete_bits_per_dim", "N_BINS"]

N_BINS = 256


def dequantize(
    x: torch.Tensor, training: bool, n_bins: int = N_BINS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Map images in [0, 1] to a continuous variable in [0, 1) on a fixed grid of ``n_bins`` levels.

    ``k = round(clamp(x, 0, 1) * (n_bins - 1))`` is the bin; the output is ``(k + u) / n_bins`` with
    ``u ~ U(0, 1)`` when ``training`` (so the flow's continuous density lower-bounds the discrete
    likelihood) and ``u = 1/2`` (the bin centre, deterministic) otherwise. Values outside [0, 1] are
    clamped: they fall in the first or last bin.

    Args:
        x: images ``(N, C, *spatial)`` in [0, 1] (any shape works).
        training: uniform noise (True) or the half-bin offset (False).
        n_bins: number of quantisation levels (>= 2).
        generator: optional RNG for the noise.

    Returns:
        A float tensor like ``x``.

    Raises:
        ValueError: ``n_bins < 2`` or non-finite values in ``x``.
        TypeError: ``x`` is not a floating-point tensor.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor in [0, 1], got {x.dtype}")
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    message = "x has non-finite values (NaN or inf); images must be finite and scaled to [0, 1]"
    if torch.compiler.is_exporting():  # no host sync in an exported program: the check runs inside it
        torch._assert_async(torch.isfinite(x).all(), message)
    elif not bool(torch.isfinite(x).all()):
        raise ValueError(message)
    bins = torch.round(x.clamp(0.0, 1.0) * (n_bins - 1))
    if training:
        offset = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        offset = torch.full_like(x, 0.5)
    return (bins + offset) / n_bins


def discrete_bits_per_dim(log_prob: torch.Tensor, num_dims: int, n_bins: int = N_BINS) -> torch.Tensor:
    """Bits per dimension of the quantised data from the continuous log-density of the dequantised input.

    ``bpd = (-log_prob + D ln n_bins) / (D ln 2)``: the continuous density on [0, 1)^D times the bin volume
    ``n_bins**-D`` is the probability of the bin.

    Args:
        log_prob: ``(N,)`` continuous log-density in nats.
        num_dims: D, the number of dimensions of one sample (C times the voxels).
        n_bins: quantisation levels.

    Returns:
        ``(N,)`` bits per dimension (same dtype as ``log_prob``).
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return (-log_prob + num_dims * math.log(n_bins)) / (num_dims * math.log(2.0))
