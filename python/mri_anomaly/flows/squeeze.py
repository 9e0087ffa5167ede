"""Space-to-depth squeeze for 2D and 3D flows (Glow's 2x2 / 2x2x2 squeeze)."""

from __future__ import annotations

import torch

__all__ = ["squeeze", "unsqueeze"]


def squeeze(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Move each 2x2(x2) block of voxels into channels.

    Args:
        x: ``(N, C, *spatial)`` with ``spatial_dims`` spatial axes, each of even size.
        spatial_dims: 2 or 3 (any positive number works).

    Returns:
        ``(N, C * 2**spatial_dims, *(s // 2 for s in spatial))``. Channel ``c * 2**d + k`` holds
        channel ``c`` at block offset ``k`` (row-major over the block's axes).

    Raises:
        ValueError: wrong rank or an odd spatial size.
    """
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"x must have shape (N, C, *spatial) with {spatial_dims} spatial dims, got {tuple(x.shape)}"
        )
    n, c, *spatial = x.shape
    if any(s % 2 for s in spatial):
        raise ValueError(f"every spatial size of x must be even to squeeze, got {tuple(spatial)}")
    shape = [n, c]
    for s in spatial:
        shape += [s // 2, 2]
    x = x.reshape(shape)
    # (N, C, s1, 2, s2, 2, ...) -> (N, C, 2, 2, ..., s1, s2, ...)
    perm = [0, 1] + [3 + 2 * i for i in range(spatial_dims)] + [2 + 2 * i for i in range(spatial_dims)]
    return x.permute(perm).reshape(n, c * 2**spatial_dims, *(s // 2 for s in spatial))


def unsqueeze(y: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Inverse of :func:`squeeze`: ``(N, C * 2**d, *spatial)`` -> ``(N, C, *(2 * s for s in spatial))``.

    Raises:
        ValueError: wrong rank or channels not divisible by ``2**spatial_dims``.
    """
    if y.dim() != spatial_dims + 2:
        raise ValueError(
            f"y must have shape (N, C, *spatial) with {spatial_dims} spatial dims, got {tuple(y.shape)}"
        )
    n, cb, *spatial = y.shape
    block = 2**spatial_dims
    if cb % block:
        raise ValueError(f"y must have a multiple of {block} channels to unsqueeze, got {cb}")
    c = cb // block
    y = y.reshape(n, c, *([2] * spatial_dims), *spatial)
    # (N, C, 2, ..., s1, s2, ...) -> (N, C, s1, 2, s2, 2, ...)
    perm = [0, 1]
    for i in range(spatial_dims):
        perm += [2 + spatial_dims + i, 2 + i]
    return y.permute(perm).reshape(n, c, *(2 * s for s in spatial))
