"""A synthetic score directory in the layout of docs/design/interfaces.md (used by the evaluation tests)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SHAPE = (12, 12, 8)


def make_score_dir(
    root: Path,
    name: str = "scores",
    seed: int = 0,
    n_val: int = 20,
    n_test: int = 12,
    separation: float = 2.0,
    with_maps: bool = True,
    sites: bool = True,
) -> tuple[Path, dict]:
    """Scans (``root/data``), a datalist dict and ``root/name`` with scores.csv, slice_scores.csv, maps/.

    Test scans alternate healthy/anomalous; an anomalous scan has a cubic lesion (brighter voxels) and a
    map equal to lesion + noise, so every level has a known, strong signal.
    """
    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    out = root / name
    (out / "maps").mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    sections: dict[str, list] = {"training": [], "validation": [], "test": []}
    rows, slice_rows = [], []
    for section, n in (("validation", n_val), ("test", n_test)):
        for i in range(n):
            sid = f"{section[:3]}{i:03d}"
            label = int(section == "test" and i % 2 == 1)
            image = np.zeros(SHAPE, np.float32)
            image[2:10, 2:10, 1:7] = 1.0 + 0.1 * rng.normal(size=(8, 8, 6))  # "brain" in a zero background
            mask = np.zeros(SHAPE, np.float32)
            if label:
                z = 2 + i % 3
                mask[4:7, 4:7, z : z + 2] = 1
                image[mask > 0] += 1.0
            img_path, mask_path = data / f"{sid}.nii.gz", data / f"{sid}_mask.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), img_path)
            item = {
                "image": str(img_path),
                "subject_id": sid,
                "label": label,
                "site": f"site{(i // 2) % 2 if sites else 0}",
            }
            if label:
                nib.save(nib.Nifti1Image(mask, affine), mask_path)
                item["mask"] = str(mask_path)
            sections[section].append(item)
            row = {
                "subject_id": sid,
                "image": str(img_path),
                "section": section,
                "label": label,
                "nll": float(rng.normal() + separation * label),
                "ratio": float(rng.normal() + 0.5 * separation * label),
            }
            if with_maps:
                amap = (mask * separation + rng.normal(size=SHAPE) * 0.5).astype(np.float32)
                rel = f"maps/{sid}_residual.nii.gz"
                nib.save(nib.Nifti1Image(amap, affine), out / rel)
                row["map:residual"] = rel
            rows.append(row)
            for k in range(SHAPE[2]):
                lab = int(mask[..., k].any())
                # as the scorer writes it: no mask (a healthy scan) -> empty slice_label
                slice_rows.append(
                    {
                        "subject_id": sid,
                        "section": section,
                        "slice": k,
                        "slice_label": lab if label else "",
                        "nll": float(rng.normal() + separation * lab),
                        "ratio": float(rng.normal()),
                    }
                )
    pd.DataFrame(rows).to_csv(out / "scores.csv", index=False)
    pd.DataFrame(slice_rows).to_csv(out / "slice_scores.csv", index=False)
    (out / "score_meta.json").write_text(
        json.dumps({"method": "synthetic", "score_columns": ["nll", "ratio"]})
    )
    (root / "datalist.json").write_text(json.dumps(sections))
    return out, sections


def test_synthetic_score_dir_follows_the_layout(tmp_path):
    from mri_anomaly.data import load_datalist

    out, _ = make_score_dir(tmp_path, n_val=3, n_test=4)
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == ["subject_id", "image", "section", "label", "nll", "ratio", "map:residual"]
    assert (out / scores["map:residual"][0]).is_file()
    slices = pd.read_csv(out / "slice_scores.csv")
    assert (
        len(slices) == 7 * SHAPE[2] and slices["slice_label"].sum() == 2 * 2
    )  # two anomalous scans, 2 lesion slices each
    sections = load_datalist(tmp_path / "datalist.json")
    assert [it["label"] for it in sections["test"]] == [0, 1, 0, 1]
