"""Affine and additive coupling layers for 2D and 3D Glow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Coupling", "COUPLING_TYPES"]

COUPLING_TYPES = ("affine", "additive")


def _conv(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


class Coupling(nn.Module):
    """Glow coupling: the first channel half conditions an elementwise transform of the second half.

    With ``x = (x_a, x_b)`` split on channels and ``(t, raw) = NN(x_a)``::

        affine:    y_b = (x_b + t) * s,  s = sigmoid(raw + 2),   logdet = sum log s
        additive:  y_b = x_b + t,                                logdet = 0
        y_a = x_a

    ``sigmoid(raw + 2)`` keeps ``s`` in (0, 1) and starts near 0.88, which is what keeps affine Glow
    training stable (Schirrmeister et al. 2020; the ``exp`` scale of the original Glow explodes).
    NN is conv3x3(x3) -> ReLU -> conv1x1(x1) -> ReLU -> conv3x3(x3) whose last conv is zero-initialised,
    so the layer starts as the identity (affine: up to the constant scale sigmoid(2)).

    Args:
        spatial_dims: 1, 2 or 3.
        num_channels: C >= 2 of the input.
        hidden_channels: width of the NN.
        coupling: ``"affine"`` or ``"additive"``.

    Raises:
        ValueError: unknown ``coupling``, ``num_channels < 2`` or ``hidden_channels < 1``.
    """

    def __init__(
        self, spatial_dims: int, num_channels: int, hidden_channels: int, coupling: str = "affine"
    ) -> None:
        super().__init__()
        if coupling not in COUPLING_TYPES:
            raise ValueError(f"coupling must be one of {COUPLING_TYPES}, got {coupling!r}")
        if num_channels < 2:
            raise ValueError(f"num_channels must be >= 2 for a coupling layer, got {num_channels}")
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        self.spatial_dims = spatial_dims
        self.num_channels = num_channels
        self.coupling = coupling
        self.cond_channels = num_channels // 2
        self.out_channels = num_channels - self.cond_channels
        conv = _conv(spatial_dims)
        factor = 2 if coupling == "affine" else 1
        self.net = nn.Sequential(
            conv(self.cond_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            conv(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            conv(hidden_channels, factor * self.out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_and_log_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a)
        if self.coupling == "additive":
            return h, None
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, F.logsigmoid(raw + 2.0)

    def forward_with_logdet_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, but the log-determinant per location ``(N, *spatial)`` (summed over channels)."""
        self._check(x, "x")
        x_a, x_b = x[:, : self.cond_channels], x[:, self.cond_channels :]
        shift, log_s = self._shift_and_log_scale(x_a)
        if log_s is None:
            return torch.cat([x_a, x_b + shift], 1), x.new_zeros((x.shape[0], *x.shape[2:]))
        y_b = (x_b + shift) * torch.exp(log_s)
        return torch.cat([x_a, y_b], 1), log_s.sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(N, C, *spatial)`` -> ``(y, logdet)``, ``y`` like ``x``, ``logdet`` ``(N,)``."""
        y, logdet_map = self.forward_with_logdet_map(x)
        return y, logdet_map.reshape(x.shape[0], -1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` ``(N, C, *spatial)`` -> ``x``."""
        self._check(y, "y")
        y_a, y_b = y[:, : self.cond_channels], y[:, self.cond_channels :]
        shift, log_s = self._shift_and_log_scale(y_a)
        x_b = y_b - shift if log_s is None else y_b * torch.exp(-log_s) - shift
        return torch.cat([y_a, x_b], 1)

    def reverse_and_grad(
        self, y: torch.Tensor, grad_y: torch.Tensor, grad_logdet: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Rebuild the input from the output and backpropagate through a local recomputation.

        Since ``y_a = x_a``, the NN output needed to invert ``y_b`` is also the one the forward used: the
        NN runs once, with grad, and serves both the inversion and the backward. Only this layer's
        activations live at once.

        Args:
            y: ``(N, C, *spatial)`` output of :meth:`forward`.
            grad_y: ``(N, C, *spatial)`` dLoss/dy.
            grad_logdet: ``(N,)`` dLoss/dlogdet, or None for zero.

        Returns:
            ``(x, grad_x, param_grads)``; ``param_grads`` aligned with ``tuple(self.parameters())``.
        """
        self._check(y, "y")
        params = tuple(self.parameters())
        trainable = [p for p in params if p.requires_grad]
        y = y.detach()
        grad_y = grad_y.detach()
        y_a, y_b = y[:, : self.cond_channels], y[:, self.cond_channels :]
        with torch.enable_grad():
            x_a = y_a.clone().requires_grad_(True)
            shift, log_s = self._shift_and_log_scale(x_a)
            with torch.no_grad():
                x_b = y_b - shift if log_s is None else y_b * torch.exp(-log_s) - shift
            x_b.requires_grad_(True)
            outputs, grads = [], [grad_y[:, self.cond_channels :]]
            if log_s is None:
                outputs.append(x_b + shift)
            else:
                outputs.append((x_b + shift) * torch.exp(log_s))
                if grad_logdet is not None:
                    outputs.append(log_s.reshape(log_s.shape[0], -1).sum(1))
                    grads.append(grad_logdet.detach().to(log_s.dtype))
            found = torch.autograd.grad(outputs, [x_a, x_b, *trainable], grads, allow_unused=True)
        grad_x_a = grad_y[:, : self.cond_channels] + (found[0] if found[0] is not None else 0)
        grad_x = torch.cat([grad_x_a, found[1]], 1)
        by_id = {id(p): g for p, g in zip(trainable, found[2:])}
        return torch.cat([y_a, x_b.detach()], 1), grad_x, tuple(by_id.get(id(p)) for p in params)

    def _check(self, t: torch.Tensor, name: str) -> None:
        if t.dim() != self.spatial_dims + 2 or t.shape[1] != self.num_channels:
            raise ValueError(
                f"{name} must have shape (N, {self.num_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(t.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, num_channels={self.num_channels}, coupling={self.coupling!r}"
        )
