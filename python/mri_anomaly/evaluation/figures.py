"""PNG figures of the report (matplotlib, Agg backend: no display needed).

Every function draws one figure, saves it to ``path`` and returns the path. Scores are oriented higher =
more anomalous; non-finite scores are shown at the top of their axis (see
:func:`~mri_anomaly.evaluation.metrics.finite_ranked`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from mri_anomaly.evaluation.metrics import check_binary, finite_ranked  # noqa: E402

__all__ = [
    "distribution_figure",
    "overlay_montage",
    "pr_figure",
    "roc_figure",
    "slice_profile_figure",
]

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]  # name -> (y_true, y_score)
_DPI = 90


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _cycle(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def roc_figure(curves: Curves, path: str | os.PathLike, title: str = "ROC") -> Path:
    """ROC curves of several scores on one axis; the legend gives each AUROC."""
    from sklearn.metrics import roc_auc_score

    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    for color, (name, (y, s)) in zip(_cycle(len(curves)), curves.items()):
        y, s = check_binary(y, s, name)
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color=color, lw=1.5, label=f"{name} ({roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set(
        xlabel="false-positive rate (1 - specificity)", ylabel="true-positive rate (sensitivity)", title=title
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
    return _save(fig, path)


def pr_figure(curves: Curves, path: str | os.PathLike, title: str = "Precision-recall") -> Path:
    """Precision-recall curves; the legend gives each AP and the dotted line the prevalence."""
    from sklearn.metrics import average_precision_score

    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    prevalence = None
    for color, (name, (y, s)) in zip(_cycle(len(curves)), curves.items()):
        y, s = check_binary(y, s, name)
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(
            recall,
            precision,
            where="post",
            color=color,
            lw=1.5,
            label=f"{name} ({average_precision_score(y, s):.3f})",
        )
        prevalence = y.mean()
    if prevalence is not None:
        ax.axhline(prevalence, color="0.6", lw=0.8, ls=":")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="upper right", title="AP", title_fontsize=7)
    return _save(fig, path)


def distribution_figure(
    columns: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    thresholds: Mapping[str, float] | None = None,
    title: str = "",
) -> Path:
    """One histogram panel per score column: healthy vs anomalous, with the calibrated threshold if given.

    Args:
        columns: ``{column: (y_true, y_score)}``.
        thresholds: ``{column: threshold}`` drawn as a vertical line.
    """
    n = max(len(columns), 1)
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (name, (y, s)) in zip(axes.flat, columns.items()):
        y = np.asarray(y).astype(int)
        s = finite_ranked(np.asarray(s, dtype=np.float64))
        bins = np.histogram_bin_edges(s, bins=min(30, max(5, s.size // 3)))
        ax.hist(s[y == 0], bins=bins, alpha=0.6, color="tab:blue", label=f"healthy (n={int((y == 0).sum())})")
        ax.hist(
            s[y == 1], bins=bins, alpha=0.6, color="tab:red", label=f"anomalous (n={int((y == 1).sum())})"
        )
        if thresholds and name in thresholds and np.isfinite(thresholds[name]):
            ax.axvline(thresholds[name], color="k", ls="--", lw=1, label="threshold")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score (higher = more anomalous)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def slice_profile_figure(
    profiles: Sequence[tuple[str, np.ndarray, Mapping[str, np.ndarray], np.ndarray | None]],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Per-slice score profiles along the axial axis, one panel per subject, lesion slices shaded.

    Args:
        profiles: ``(subject_id, slice indices (S,), {column: (S,) scores}, slice labels (S,) or None)``.
            Scores are plotted as given (standardise them beforehand to share an axis).
    """
    n = max(len(profiles), 1)
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 2.1 * n), squeeze=False)
    for ax, (subject, idx, cols, labels) in zip(axes[:, 0], profiles):
        idx = np.asarray(idx)
        if labels is not None:
            lab = np.asarray(labels).astype(bool)
            for k in idx[lab]:
                ax.axvspan(k - 0.5, k + 0.5, color="tab:red", alpha=0.15, lw=0)
        for color, (name, values) in zip(_cycle(len(cols)), cols.items()):
            ax.plot(idx, finite_ranked(np.asarray(values, dtype=np.float64)), color=color, lw=1.2, label=name)
        ax.set_title(
            f"{subject}" + ("  (shaded: slices with ground-truth anomaly)" if labels is not None else ""),
            fontsize=8,
        )
        ax.set_xlabel("axial slice", fontsize=8)
        ax.set_ylabel("score (z vs healthy)", fontsize=8)
        ax.tick_params(labelsize=7)
    if profiles:
        axes[0, 0].legend(fontsize=6, ncol=min(4, len(profiles[0][2])), loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _canonical(path: str | os.PathLike) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    return arr[..., 0] if arr.ndim == 4 else arr


def overlay_montage(
    cases: Sequence[tuple[str, str | os.PathLike, str | os.PathLike, str | os.PathLike | None]],
    path: str | os.PathLike,
    n_slices: int = 5,
    title: str = "",
) -> Path:
    """Axial montage of the map over the scan with the ground-truth contour, one row per case.

    Volumes are reoriented to RAS (``nibabel.as_closest_canonical``) so the axial axis is the last one. Rows
    show ``n_slices`` slices spread over the anomaly's extent (or the middle of the volume without a mask).
    The map is drawn inside the scan (voxels above the scan's minimum) where it exceeds its own 95th percentile
    there, scaled to its 99.5th.

    Args:
        cases: ``(subject_id, image path, map path, mask path or None)``; all on one voxel grid.

    Raises:
        ValueError: naming the files when map, image and mask grids differ.
    """
    n = max(len(cases), 1)
    fig, axes = plt.subplots(n, n_slices, figsize=(1.9 * n_slices, 2.0 * n), squeeze=False)
    for row, (subject, image_path, map_path, mask_path) in enumerate(cases):
        image, amap = _canonical(image_path), _canonical(map_path)
        mask = _canonical(mask_path) > 0.5 if mask_path else None
        if image.shape != amap.shape or (mask is not None and mask.shape != image.shape):
            raise ValueError(
                f"overlay of {subject}: grids differ: image {image_path} {image.shape}, map {map_path} {amap.shape}"
                + (f", mask {mask_path} {mask.shape}" if mask is not None else "")
            )
        inside = image > image.min()
        finite = np.isfinite(amap)
        ref = amap[inside & finite] if (inside & finite).any() else amap[finite]
        lo, hi = np.percentile(ref, [95, 99.5]) if ref.size else (0.0, 1.0)
        if mask is not None and mask.any():
            zs = np.flatnonzero(mask.any(axis=(0, 1)))
            picks = np.linspace(zs.min(), zs.max(), n_slices + 2)[1:-1] if zs.size > n_slices else zs
        else:
            zs = np.flatnonzero(inside.any(axis=(0, 1)))
            picks = np.linspace(zs.min(), zs.max(), n_slices + 2)[1:-1] if zs.size else [image.shape[2] // 2]
        picks = np.unique(np.round(np.asarray(picks)).astype(int))
        vmin, vmax = np.percentile(image[inside], [0.5, 99.5]) if inside.any() else (image.min(), image.max())
        for col in range(n_slices):
            ax = axes[row, col]
            ax.axis("off")
            if col >= picks.size:
                continue
            z = int(picks[col])
            ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
            m = np.where(np.isfinite(amap[:, :, z]), amap[:, :, z], hi)
            m = np.ma.masked_where(~inside[:, :, z] | (m < lo), m)  # the map inside the scan only
            ax.imshow(m.T, cmap="hot", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-12), alpha=0.6)
            if mask is not None and mask[:, :, z].any():
                ax.contour(
                    mask[:, :, z].T.astype(float), levels=[0.5], colors="cyan", linewidths=0.8, origin="lower"
                )
            ax.set_title(f"{subject} z={z}" if col == 0 else f"z={z}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
