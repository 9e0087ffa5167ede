"""Flow scores: bits/dim, per-scale bits/dim, log-likelihood ratio, outlier loss, non-finite handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mri_anomaly.scoring import (
    MOST_ANOMALOUS_SCORE,
    bits_per_dim,
    final_scale_score,
    log_likelihood_ratio,
    nonfinite_to_most_anomalous,
    outlier_loss,
    scale_bits_per_dim,
)
from sklearn.metrics import roc_auc_score


def test_bits_per_dim_values():
    # log p = 0 -> 8 bits/dim for 256 levels; log p = D ln 2 -> one bit less.
    d = 100
    log_prob = torch.tensor([0.0, d * math.log(2.0)], dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(log_prob, d), torch.tensor([8.0, 7.0], dtype=torch.float64))
    torch.testing.assert_close(
        bits_per_dim(log_prob, d, n_bins=32), torch.tensor([5.0, 4.0], dtype=torch.float64)
    )


def test_scale_bits_per_dim_average_to_total_and_final_scale_is_last():
    contributions = torch.tensor([[-50.0, 10.0, -3.0], [5.0, -20.0, 1.0]], dtype=torch.float64)
    dims = [32, 16, 16]
    per_scale = scale_bits_per_dim(contributions, dims)
    weighted = (per_scale * torch.tensor(dims, dtype=torch.float64)).sum(1) / sum(dims)
    torch.testing.assert_close(weighted, bits_per_dim(contributions.sum(1), sum(dims)))
    torch.testing.assert_close(
        final_scale_score(contributions, dims), 8.0 - contributions[:, 2] / (16 * math.log(2))
    )
    with pytest.raises(ValueError, match="latent_dims"):
        scale_bits_per_dim(contributions, [1, 2])


def test_log_likelihood_ratio_sign_and_units():
    general = torch.tensor([-100.0, -100.0])
    inside = torch.tensor([-90.0, -130.0])  # first sample: in-distribution model likes it more -> normal
    ratio = log_likelihood_ratio(general, inside)
    torch.testing.assert_close(ratio, torch.tensor([-10.0, 30.0]))
    assert ratio[1] > ratio[0]
    per_dim = log_likelihood_ratio(general, inside, num_dims=10)
    torch.testing.assert_close(per_dim, torch.tensor([-10.0, 30.0]) / (10 * math.log(2)))
    with pytest.raises(ValueError, match="must match"):
        log_likelihood_ratio(general, inside[:1])


def test_outlier_loss_value_and_gradient_only_to_in_distribution_model():
    log_in = torch.tensor([10.0, -5.0], requires_grad=True)
    log_general = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = outlier_loss(log_in, log_general, weight=3.0, temperature=2.0)
    expected = 3.0 * (math.log1p(math.exp(5.0)) + math.log1p(math.exp(-2.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert log_general.grad is None  # stop-gradient on the general model
    sigmoid = torch.sigmoid(torch.tensor([5.0, -2.5]))
    torch.testing.assert_close(log_in.grad, 3.0 * sigmoid / 2.0 / 2)
    with pytest.raises(ValueError, match="temperature"):
        outlier_loss(log_in, log_general, weight=1.0, temperature=0.0)


def test_nonfinite_scores_become_most_anomalous_and_metrics_work():
    scores = torch.tensor([0.1, float("nan"), 0.3, float("inf"), -float("inf")])
    cleaned = nonfinite_to_most_anomalous(scores)
    assert torch.isfinite(cleaned).all()
    torch.testing.assert_close(
        cleaned, torch.tensor([0.1, MOST_ANOMALOUS_SCORE, 0.3, MOST_ANOMALOUS_SCORE, MOST_ANOMALOUS_SCORE])
    )
    assert torch.isnan(scores[1])  # input untouched
    # sklearn accepts it, and the broken samples rank as anomalous.
    labels = np.array([0, 1, 0, 1, 1])
    assert roc_auc_score(labels, cleaned.numpy()) == 1.0
    array = nonfinite_to_most_anomalous(np.array([np.nan, 2.0], dtype=np.float32))
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    assert np.isfinite(array).all() and array[0] > array[1]
    with pytest.raises(TypeError, match="scores must be"):
        nonfinite_to_most_anomalous([1.0, float("nan")])
