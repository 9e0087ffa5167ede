"""Anomaly scores and losses of normalizing flows (Schirrmeister et al., NeurIPS 2020).

All scores are oriented higher = more anomalous. Log-densities are in nats of the continuous
(dequantised) input, as returned by :class:`mri_anomaly.flows.Glow`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mri_anomaly.flows.dequantization import N_BINS, discrete_bits_per_dim

__all__ = ["bits_per_dim", "scale_bits_per_dim", "final_scale_score", "log_likelihood_ratio", "outlier_loss"]


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, n_bins: int = N_BINS) -> torch.Tensor:
    """Negative log-likelihood in bits per dimension, ``(-log p(x) + D ln n_bins) / (D ln 2)``.

    Args:
        log_prob: ``(N,)`` continuous log-density of the dequantised input, nats.
        num_dims: D of one sample.
        n_bins: quantisation levels of the input.

    Returns:
        ``(N,)``; higher = less likely = more anomalous.
    """
    return discrete_bits_per_dim(log_prob, num_dims, n_bins)


def scale_bits_per_dim(
    contributions: torch.Tensor, latent_dims: list[int], n_bins: int = N_BINS
) -> torch.Tensor:
    """Per-scale NLL in bits per dimension of that scale's latent: ``(-c_i + D_i ln n_bins) / (D_i ln 2)``.

    Each scale takes its share ``D_i ln n_bins`` of the dequantisation constant, so the ``D_i / D``-weighted
    mean over scales equals :func:`bits_per_dim`.

    Args:
        contributions: ``(N, levels)`` per-scale contributions c_i (nats), e.g. ``Glow(x).contributions``.
        latent_dims: D_i of each scale (``Glow.latent_dims(spatial_size)``).

    Returns:
        ``(N, levels)``.
    """
    if contributions.dim() != 2 or contributions.shape[1] != len(latent_dims):
        raise ValueError(
            f"contributions must have shape (N, {len(latent_dims)}) to match latent_dims, got {tuple(contributions.shape)}"
        )
    dims = torch.tensor(latent_dims, dtype=contributions.dtype, device=contributions.device)
    return (-contributions + dims * math.log(n_bins)) / (dims * math.log(2.0))


def final_scale_score(
    contributions: torch.Tensor, latent_dims: list[int], n_bins: int = N_BINS
) -> torch.Tensor:
    """The final (coarsest) scale's NLL in bits per dimension of its latent: :func:`scale_bits_per_dim` ``[:, -1]``.

    Schirrmeister et al. show that the coarse scale's contribution ignores the local pixel statistics that
    dominate the full likelihood, so it separates semantic anomalies better. It is a monotone transform of
    ``-c_L``, so rankings (AUROC) are those of the negated contribution.

    Returns:
        ``(N,)``; higher = more anomalous.
    """
    return scale_bits_per_dim(contributions, latent_dims, n_bins)[:, -1]


def log_likelihood_ratio(
    log_prob_general: torch.Tensor, log_prob_in: torch.Tensor, num_dims: int | None = None
) -> torch.Tensor:
    """Anomaly score ``log p_general(x) - log p_in(x)`` (higher = more anomalous).

    The in-distribution model explains healthy anatomy better than a model of a broad, general
    distribution; both share the local statistics, which cancel in the ratio. The dequantisation constant
    also cancels.

    Args:
        log_prob_general: ``(N,)`` log-density under the general model (nats).
        log_prob_in: ``(N,)`` log-density under the in-distribution model (nats).
        num_dims: if given, the ratio is returned in bits per dimension (divided by ``D ln 2``),
            which equals ``bpd_in - bpd_general``.

    Returns:
        ``(N,)``, nats (or bits/dim with ``num_dims``).
    """
    if log_prob_general.shape != log_prob_in.shape:
        raise ValueError(
            f"log_prob_general {tuple(log_prob_general.shape)} and log_prob_in {tuple(log_prob_in.shape)} must match"
        )
    ratio = log_prob_general - log_prob_in
    if num_dims is not None:
        ratio = ratio / (num_dims * math.log(2.0))
    return ratio


def outlier_loss(
    log_prob_in: torch.Tensor,
    log_prob_general: torch.Tensor,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """Outlier loss on general-distribution samples: ``mean(w * softplus((log p_in - stopgrad log p_general) / T))``.

    This is binary cross-entropy with target "not in-distribution" on the tempered log-likelihood ratio:
    it pushes the in-distribution model's likelihood of general samples below the general model's.
    Gradients reach only ``log_prob_in`` (the general model is detached, i.e. frozen).
    Schirrmeister et al. use whole-image nats with w = 6000, T = 1000 (32x32x3 images); pass per-dimension
    log-densities with ``T`` and ``w`` scaled accordingly to make the loss size-independent.

    Args:
        log_prob_in: ``(N,)`` log-density of general samples under the in-distribution model (with grad).
        log_prob_general: ``(N,)`` log-density of the same samples under the general model.
        weight: w >= 0.
        temperature: T > 0, in the units of the log-densities.

    Returns:
        0-dim loss.

    Raises:
        ValueError: ``temperature <= 0``, ``weight < 0`` or mismatched shapes.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    if log_prob_in.shape != log_prob_general.shape:
        raise ValueError(
            f"log_prob_in {tuple(log_prob_in.shape)} and log_prob_general {tuple(log_prob_general.shape)} must match"
        )
    return weight * F.softplus((log_prob_in - log_prob_general.detach()) / temperature).mean()
