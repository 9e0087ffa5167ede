"""A PNG montage of demo (or any datalist) subjects: axial slices with the anomaly mask's contour."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mri_anomaly.data.datalist import first_image, load_datalist

__all__ = ["make_montage"]


def _ras(path: str) -> np.ndarray:
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.get_fdata(dtype=np.float32))


def make_montage(
    datalist_path: str | os.PathLike,
    out_png: str | os.PathLike,
    n_healthy: int = 3,
    n_anomalous: int = 6,
    n_general: int = 3,
    title: str | None = None,
) -> Path:
    """Axial slices of healthy test, anomalous test (with red mask contours) and general subjects.

    Anomalous subjects are shown at the slice with the most lesion voxels, the others at the middle
    of the brain. Images are shown in RAS with anterior up and the subject's right on the left
    (radiological view).

    Args:
        datalist_path: a datalist whose ``test`` section has items with ``label`` and ``mask``.
        out_png: output PNG path.
        n_healthy, n_anomalous, n_general: panels of each group.
        title: figure title.

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dl = load_datalist(datalist_path, check_headers=False)
    test = dl.get("test", [])
    healthy = [it for it in test if it.get("label") == 0][:n_healthy]
    anom = [it for it in test if it.get("label") == 1 and "mask" in it]
    kinds: dict[str, Any] = {}
    contrasts: dict[str, str] = {}
    subj_csv = Path(datalist_path).parent / "subjects.csv"
    if subj_csv.exists():
        import csv

        with open(subj_csv) as f:
            rows_csv = list(csv.DictReader(f))
        kinds = {r["subject_id"]: r["lesion_kind"] for r in rows_csv}
        contrasts = {r["subject_id"]: r.get("contrast", "") for r in rows_csv}
        order: dict[str, list] = {}
        for it in anom:  # interleave kinds
            order.setdefault(kinds.get(it["subject_id"], ""), []).append(it)
        inter = [x for grp in zip(*order.values()) for x in grp] if order else []
        anom = inter + [it for it in anom if it not in inter]
    anom = anom[:n_anomalous]
    gen = dl.get("general", [])[:n_general]
    panels = (
        [("healthy", it) for it in healthy]
        + [("anomalous", it) for it in anom]
        + [("general", it) for it in gen]
    )
    ncol = max(len(healthy), 3)
    rows = [
        panels[: len(healthy)],
        panels[len(healthy) : len(healthy) + len(anom)],
        panels[len(healthy) + len(anom) :],
    ]
    grid = []
    for r in rows:
        for k in range(0, len(r), ncol):
            grid.append(r[k : k + ncol])
    grid = [g for g in grid if g]
    fig, axes = plt.subplots(len(grid), ncol, figsize=(2.4 * ncol, 2.7 * len(grid)), squeeze=False)
    for r, row in enumerate(grid):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            group, it = row[c]
            img = _ras(first_image(it))
            mask = _ras(it["mask"]) > 0.5 if "mask" in it else None
            if mask is not None and mask.any():
                k = int(np.argmax(mask.sum(axis=(0, 1))))
            else:
                k = int(np.round(np.mean(np.nonzero(img.sum(axis=(0, 1)))[0])))
            sl = img[..., k]
            vmax = np.percentile(img[img > 0], 99.5) if (img > 0).any() else 1.0
            ax.imshow(np.flipud(sl.T)[:, ::-1], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            if mask is not None and mask[..., k].any():
                ax.contour(
                    np.flipud(mask[..., k].T.astype(float))[:, ::-1],
                    levels=[0.5],
                    colors="red",
                    linewidths=0.8,
                )
            label = group
            if group == "anomalous":
                label = f"{kinds.get(it['subject_id'], 'anomalous')} ({int(mask.sum())} vox)"
            elif group == "general":
                label = f"general ({contrasts.get(it['subject_id'], '?')})"
            ax.set_title(f"{it['subject_id']}\n{label}, z={k}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
