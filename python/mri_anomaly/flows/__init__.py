"""Invertible layers and Glow flows (2D and 3D). Every layer implements ``forward(x) -> (y, logdet)``,
``inverse(y) -> x`` and ``reverse_and_grad(y, grad_y, grad_logdet) -> (x, grad_x, param_grads)``."""

from __future__ import annotations

from mri_anomaly.flows.actnorm_invconv import ActNormInvConv

__all__ = ["ActNormInvConv"]

# --- Glow (issue 3) ---
from mri_anomaly.flows.coupling import Coupling  # noqa: E402
from mri_anomaly.flows.dequantization import N_BINS, dequantize, discrete_bits_per_dim  # noqa: E402
from mri_anomaly.flows.glow import FlowStep, Glow, GlowOutput  # noqa: E402
from mri_anomaly.flows.invertible_chain import InvertibleChain  # noqa: E402
from mri_anomaly.flows.prior import LatentPrior  # noqa: E402
from mri_anomaly.flows.squeeze import squeeze, unsqueeze  # noqa: E402

__all__ += [
    "Coupling",
    "FlowStep",
    "Glow",
    "GlowOutput",
    "InvertibleChain",
    "LatentPrior",
    "N_BINS",
    "dequantize",
    "discrete_bits_per_dim",
    "squeeze",
    "unsqueeze",
]
