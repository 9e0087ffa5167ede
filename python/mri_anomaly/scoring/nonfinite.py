"""Non-finite scores are "most anomalous", never dropped."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MOST_ANOMALOUS_SCORE", "nonfinite_to_most_anomalous"]

MOST_ANOMALOUS_SCORE = 1.0e30
"""The finite value that stands for a NaN or infinite score. Finite in float32 and float64 (so CSV files,
``sklearn.metrics`` and plots accept it) and far above any real score, so a sample whose score blew up
(a flow's likelihood overflowing on an out-of-distribution input, say) ranks as the most anomalous.
All such samples tie at this value."""


def nonfinite_to_most_anomalous(
    scores: torch.Tensor | np.ndarray, value: float = MOST_ANOMALOUS_SCORE
) -> torch.Tensor | np.ndarray:
    """Replace NaN, +inf and -inf in scores oriented higher = more anomalous by a large finite ``value``.

    A non-finite score means the method could not compute a sensible value for that sample, which for a
    density model means the input is far from the training data; so it becomes the most anomalous score
    (Schirrmeister et al. 2020 do the same) rather than being dropped or silently becoming -inf (which would
    make it look normal) or NaN (which breaks ROC metrics).

    Args:
        scores: a tensor or NumPy array of any shape (per-sample scores or voxel maps).
        value: the stand-in; :data:`MOST_ANOMALOUS_SCORE` by default.

    Returns:
        The same type, shape and dtype, with non-finite entries set to ``value`` (a copy; the input is untouched).

    Raises:
        TypeError: ``scores`` is neither a tensor nor an array of floats.
    """
    if isinstance(scores, torch.Tensor):
        if not torch.is_floating_point(scores):
            return scores.clone()
        return torch.where(torch.isfinite(scores), scores, torch.full_like(scores, value))
    if isinstance(scores, np.ndarray):
        if not np.issubdtype(scores.dtype, np.floating):
            return scores.copy()
        return np.where(np.isfinite(scores), scores, np.asarray(value, dtype=scores.dtype))
    raise TypeError(f"scores must be a torch.Tensor or numpy.ndarray, got {type(scores).__name__}")
