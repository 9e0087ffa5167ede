"""Evaluation of anomaly scores: detection metrics with bootstrap CIs, thresholds calibrated on healthy
scans, voxel-level metrics, figures and the HTML report, and the ``evaluate``/``demo`` commands."""

from mri_anomaly.evaluation.bootstrap import bootstrap_ci, metrics_with_ci
from mri_anomaly.evaluation.metrics import (
    auroc,
    average_precision,
    best_dice,
    binary_metrics,
    fpr_at_tpr,
    sensitivity_at_specificity,
)
from mri_anomaly.evaluation.thresholds import (
    apply_threshold,
    calibrate_threshold,
    calibrate_thresholds,
    load_thresholds,
    save_thresholds,
)

__all__ = [
    "apply_threshold",
    "auroc",
    "average_precision",
    "best_dice",
    "binary_metrics",
    "bootstrap_ci",
    "calibrate_threshold",
    "calibrate_thresholds",
    "fpr_at_tpr",
    "load_thresholds",
    "metrics_with_ci",
    "save_thresholds",
    "sensitivity_at_specificity",
]
