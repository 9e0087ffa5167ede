"""Invertible layers and Glow flows (2D and 3D). Every layer implements ``forward(x) -> (y, logdet)``,
``inverse(y) -> x`` and ``reverse_and_grad(y, grad_y, grad_logdet) -> (x, grad_x, param_grads)``."""

from __future__ import annotations

from mri_anomaly.flows.actnorm_invconv import ActNormInvConv

__all__ = ["ActNormInvConv"]
