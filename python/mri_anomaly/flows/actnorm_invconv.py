"""Actnorm followed by an invertible 1x1(x1) convolution: one fused Glow flow step (without coupling)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from mri_anomaly import ops

__all__ = ["ActNormInvConv"]


class ActNormInvConv(nn.Module):
    """Actnorm + invertible channel mixing, ``y = W (exp(log_scale) * (x + bias))`` per voxel.

    W is LU-parameterised, ``W = P L (U + diag(sign * exp(log_diag)))`` with P a permutation and
    ``sign`` fixed buffers, L unit lower- and U strictly upper-triangular (from the parameters
    ``lower``/``upper``, whose other entries are ignored). Hence ``log|det W| = sum(log_diag)``:
    no ``slogdet``, no host sync. W and W^-1 are assembled in float64 from the parameters and cast to
    the input dtype. W starts as a random orthogonal matrix (QR of a Gaussian matrix, then LU).

    Actnorm's data-dependent init is explicit: call :meth:`initialize` on a representative batch
    before training (and before wrapping in DistributedDataParallel). It sets the persistent buffer
    ``initialized``, so loading a checkpoint never re-initialises.

    Parameters, in ``tuple(self.parameters())`` order: ``log_scale`` (C,), ``bias`` (C,),
    ``lower`` (C, C), ``upper`` (C, C), ``log_diag`` (C,).

    Args:
        num_channels: C.
        min_std: floor on the per-channel std used by :meth:`initialize`, so that constant channels
            (MRI background) get a bounded scale ``1 / min_std`` rather than ~1e6.

    Raises:
        ValueError: ``num_channels < 1`` or ``min_std <= 0``.
    """

    def __init__(self, num_channels: int, min_std: float = 1e-2) -> None:
        super().__init__()
        if int(num_channels) != num_channels or num_channels < 1:
            raise ValueError(f"num_channels must be a positive integer, got {num_channels!r}")
        if not min_std > 0:
            raise ValueError(f"min_std must be > 0, got {min_std!r}")
        c = int(num_channels)
        self.num_channels = c
        self.min_std = float(min_std)
        q, _ = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.log_scale = nn.Parameter(torch.zeros(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_diag = nn.Parameter(diag.abs().log().float())
        self.register_buffer("permutation", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("initialized", torch.tensor(False))

    # --- W assembly (float64, differentiable w.r.t. lower, upper, log_diag) ---

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.num_channels, dtype=torch.float64, device=self.lower.device)
        lower = torch.tril(self.lower.double(), -1) + eye
        upper = torch.triu(self.upper.double(), 1) + torch.diag(
            self.sign.double() * torch.exp(self.log_diag.double())
        )
        return self.permutation.double(), lower, upper

    def weight(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W ``(C, C)`` = P L U, assembled in float64 then cast to ``dtype``."""
        p, lower, upper = self._factors()
        return (p @ lower @ upper).to(dtype)

    def weight_inverse(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W^-1 ``(C, C)`` = U^-1 L^-1 P^T by triangular solves in float64, then cast to ``dtype``."""
        p, lower, upper = self._factors()
        lp = torch.linalg.solve_triangular(lower, p.t(), upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, lp, upper=True).to(dtype)

    def weight_logabsdet(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``log|det W|`` = ``sum(log_diag)``, 0-dim."""
        return self.log_diag.to(dtype).sum()

    # --- data-dependent init ---

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, force: bool = False) -> bool:
        """Data-dependent actnorm init: afterwards the actnorm output has zero mean and unit std per channel.

        Per-channel moments are accumulated in float64 (:func:`mri_anomaly.ops.channel_moments`) and
        all-reduced over ``torch.distributed`` when it is initialised, so every rank gets the same
        parameters. The std is floored at ``min_std``. Does nothing (returns False) when already
        initialised, e.g. after loading a checkpoint, unless ``force``.

        Args:
            x: ``(N, C, *spatial)`` input batch of this layer.
            force: re-initialise even if ``initialized`` is set.

        Returns:
            Whether the parameters were (re)initialised.

        Raises:
            ValueError: ``x`` has the wrong rank or channel count, or no finite variance.
        """
        if bool(self.initialized) and not force:
            return False
        if x.dim() < 3 or x.dim() > 5 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"x must have shape (N, {self.num_channels}, *spatial) with 1-3 spatial dims, got {tuple(x.shape)}"
            )
        count, total, total_sq = ops.channel_moments(x.detach())
        moments = torch.stack([count, total, total_sq])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
        count, total, total_sq = moments
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        std = var.sqrt().clamp_min(self.min_std)
        if not bool(torch.isfinite(mean).all() & torch.isfinite(std).all()):
            raise ValueError("x has non-finite values; cannot initialise actnorm from it")
        self.bias.copy_(-mean)
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(True)
        return True

    # --- the flow-layer interface ---

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(N, C, *spatial)`` -> ``(y, logdet)`` with ``y`` like ``x`` and ``logdet`` ``(N,)``."""
        dtype = x.dtype
        return ops.flow_step(
            x, self.log_scale.to(dtype), self.bias.to(dtype), self.weight(dtype), self.weight_logabsdet(dtype)
        )

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` ``(N, C, *spatial)`` -> ``x``, using W^-1 assembled in float64."""
        dtype = y.dtype
        return ops.flow_step_inverse(
            y, self.log_scale.to(dtype), self.bias.to(dtype), self.weight_inverse(dtype)
        )

    def reverse_and_grad(
        self, y: torch.Tensor, grad_y: torch.Tensor, grad_logdet: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Rebuild the input from the output and backpropagate through this layer, without saved activations.

        For memory-efficient backprop over a chain of invertible layers: given this layer's output
        ``y`` and the gradients of the loss w.r.t. ``y`` and ``logdet``, returns the input ``x``, the
        gradient w.r.t. ``x``, and the gradients w.r.t. ``tuple(self.parameters())``, equal (up to
        rounding) to what autograd through :meth:`forward` would give. One pass over the data
        (``flow_step_backward_from_output``); ``grad_weight`` is chained to ``lower``, ``upper`` and
        ``log_diag`` by autograd on the small float64 C x C assembly. Nothing is accumulated into
        ``.grad``; the caller does that.

        Args:
            y: ``(N, C, *spatial)`` output of :meth:`forward`.
            grad_y: ``(N, C, *spatial)`` dLoss/dy.
            grad_logdet: ``(N,)`` dLoss/dlogdet, or None for zero.

        Returns:
            ``(x, grad_x, param_grads)``, ``x`` and ``grad_x`` detached, shaped like ``y``;
            ``param_grads`` aligned with ``tuple(self.parameters())``.
        """
        dtype = y.dtype
        if grad_logdet is None:
            grad_logdet = torch.zeros(y.shape[0], dtype=dtype, device=y.device)
        with torch.no_grad():
            weight_inverse = self.weight_inverse(dtype)
        with torch.enable_grad():
            weight64 = self.weight(torch.float64)
            logabsdet64 = self.weight_logabsdet(torch.float64)
            weight = weight64.detach().to(dtype)
            with torch.no_grad():
                x, grad_x, grad_log_scale, grad_bias, grad_weight = ops.flow_step_backward_from_output(
                    grad_y.detach(),
                    grad_logdet.detach().to(dtype),
                    y.detach(),
                    self.log_scale.detach().to(dtype),
                    self.bias.detach().to(dtype),
                    weight,
                    weight_inverse,
                )
                voxels = y[0, 0].numel()
                grad_logabsdet = (voxels * grad_logdet.detach().to(torch.float64).sum()).reshape(())
            lu_params = {
                n: p
                for n, p in (("lower", self.lower), ("upper", self.upper), ("log_diag", self.log_diag))
                if p.requires_grad
            }
            lu_grads = (
                torch.autograd.grad(
                    (weight64, logabsdet64),
                    tuple(lu_params.values()),
                    (grad_weight.to(torch.float64), grad_logabsdet),
                    allow_unused=True,
                )
                if lu_params
                else ()
            )
        by_name: dict[str, torch.Tensor | None] = {
            "log_scale": grad_log_scale.to(self.log_scale.dtype),
            "bias": grad_bias.to(self.bias.dtype),
        }
        for (name, param), grad in zip(lu_params.items(), lu_grads):
            by_name[name] = None if grad is None else grad.to(param.dtype)
        param_grads = tuple(by_name.get(name) for name, _ in self.named_parameters())
        return x, grad_x, param_grads

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, min_std={self.min_std}"
