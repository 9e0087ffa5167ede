"""Invertible layers and Glow flows (2D and 3D). Every layer implements ``forward(x) -> (y, logdet)``,
``inverse(y) -> x`` and ``reverse_and_grad(y, grad_y, grad_logdet) -> (x, grad_x, param_grads)``."""

from __future__ import annotations

from mri_anomaly.flows.actnorm_invconv import ActNormInvConv
from mri_anomaly.flows.coupling import Coupling
from mri_anomaly.flows.dequantization import N_BINS, dequantize, discrete_bits_per_dim
from mri_anomaly.flows.diagnostics import saved_activation_bytes
from mri_anomaly.flows.glow import FlowStep, Glow, GlowOutput
from mri_anomaly.flows.invertible_chain import InvertibleChain
from mri_anomaly.flows.prior import LatentPrior
from mri_anomaly.flows.squeeze import squeeze, unsqueeze

__all__ = [
    "ActNormInvConv",
    "Coupling",
    "FlowStep",
    "Glow",
    "GlowOutput",
    "InvertibleChain",
    "LatentPrior",
    "N_BINS",
    "dequantize",
    "discrete_bits_per_dim",
    "saved_activation_bytes",
    "squeeze",
    "unsqueeze",
]
