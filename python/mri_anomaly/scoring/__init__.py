"""Anomaly scores (all oriented higher = more anomalous), aggregation and voxel maps."""

from __future__ import annotations

from mri_anomaly.scoring.flow_scores import (
    bits_per_dim,
    final_scale_score,
    log_likelihood_ratio,
    outlier_loss,
    scale_bits_per_dim,
)
from mri_anomaly.scoring.nonfinite import MOST_ANOMALOUS_SCORE, nonfinite_to_most_anomalous

__all__ = [
    "MOST_ANOMALOUS_SCORE",
    "bits_per_dim",
    "final_scale_score",
    "log_likelihood_ratio",
    "nonfinite_to_most_anomalous",
    "outlier_loss",
    "scale_bits_per_dim",
]
