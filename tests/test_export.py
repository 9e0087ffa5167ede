"""``mri-anomaly export`` + ``load_exported``: the exported program scores and flags as ``mri-anomaly score``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mri_anomaly
import numpy as np
import pandas as pd
import pytest
import torch
from mri_anomaly.cli import main
from mri_anomaly.export import METADATA_FILE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "preprocessing.spacing=[8, 8, 8]",
    "preprocessing.spatial_size=[24, 24, 24]",
    "train.batch_size=2",
    "train.init_batches=1",
    "train.phases.train.steps=2",
    "score.top_k=3",
    "score.allow_few_calibration_scans=true",  # the tiny cohort has one validation scan
    "model.levels=2",
    "model.steps=1",
    "model.hidden_channels=8",
]


@pytest.mark.parametrize("config", ["glow2d-slices", "glow3d"])
def test_exported_scores_and_flags_equal_score(config, demo_cohort, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(CONFIGS / f"{config}.yaml"),
                "--datalist",
                str(demo_cohort),
                "--out",
                str(run),
                "--no-progress",
                *[a for o in TINY for a in ("--set", o)],
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "score",
                "--run",
                str(run),
                "--datalist",
                str(demo_cohort),
                "--section",
                "validation,test",
                "--out",
                str(tmp_path / "scores"),
                "--no-maps",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "model.pt2")]) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "model.onnx")]) == 0
    scored = pd.read_csv(tmp_path / "scores" / "scores.csv")
    stored = json.loads((run / "thresholds.json").read_text())
    thresholds = stored["thresholds"]

    # the program carries everything: scoring works with the run folder gone (torch.export and ONNX alike)
    shutil.move(str(run), str(tmp_path / "elsewhere"))
    images = list(scored["image"])
    columns = json.loads((tmp_path / "scores" / "score_meta.json").read_text())["score_columns"]
    primary = columns[0]
    for exported, reference in (("model.pt2", False), ("model.onnx", None), ("model.pt2", True)):
        # (pt2 with reference=True: the fused ops decomposed into their reference maths, as on a device the
        # compiled ops lack; only the tolerance-level checks below apply to it)
        scorer = mri_anomaly.load_exported(tmp_path / exported, reference_ops=reference)
        if reference:
            assert not [n for n in scorer.program.graph.nodes if str(n.target).startswith("mri_anomaly.")]
        table = scorer.score_table(images)
        assert scorer.score_columns_ == columns and scorer.thresholds_ == pytest.approx(thresholds)
        for c in columns:
            # the same kernels agree to 1e-5; ONNX Runtime / the reference maths to 1e-5 of the column's scale
            # (standardised slice scores near 0 magnify rounding differences of ~1e-7 in the raw ones)
            scale = 1.0 if reference is False else max(1.0, float(np.abs(scored[c]).max()))
            np.testing.assert_allclose(
                table[c].to_numpy(), scored[c].to_numpy(), rtol=1e-5, atol=1e-5 * scale, err_msg=exported
            )
            differ = [i for i, (a, b) in enumerate(zip(table[f"flag:{c}"], scored[f"flag:{c}"])) if a != b]
            if reference is False:  # the same kernels: identical flags
                assert differ == [], (exported, c)
            else:  # ONNX Runtime / the reference maths round differently (~1e-7): only a scan scored at its
                # threshold (the calibration scan that set it) may land on the other side of it
                assert all(
                    abs(scored[c][i] - thresholds[c]) <= 1e-5 * max(1.0, abs(thresholds[c])) for i in differ
                )
        np.testing.assert_allclose(
            scorer.decision_function(images), table[primary].to_numpy(), rtol=0, atol=0
        )
        if reference is False:
            assert scorer.predict(images).tolist() == scored[f"flag:{primary}"].tolist()
        assert scorer.threshold_ == pytest.approx(thresholds[primary])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        scorer.decision_function([images[0], str(broken)])

    # the metadata a deployment needs, and the fused ops inside the program
    extra = {METADATA_FILE: ""}
    program = torch.export.load(str(tmp_path / "model.pt2"), extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert meta["preprocessing"]["spatial_size"] == [24, 24, 24] and meta["preprocessing"]["spacing"] == [
        8,
        8,
        8,
    ]
    assert meta["versions"]["torch"] == torch.__version__ and meta["primary_score"] == primary
    # the per-position slice norms score standardises with travel in the file (2D runs have them)
    assert meta["slice_norms"] == stored.get("slice_norms") and (
        config != "glow2d-slices" or meta["slice_norms"]
    )
    assert meta["score_names"] == ["nll_bpd", "final_scale"] and meta["map_names"] == ["nll", "final_scale"]
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("mri_anomaly.flow_step") for t in targets), sorted(targets)
    # the ONNX model: plain ONNX operators (the flow steps as their reference maths), the same metadata
    import onnx

    model = onnx.load(str(tmp_path / "model.onnx"))
    assert json.loads({p.key: p.value for p in model.metadata_props}["mri_anomaly"]) == meta
    assert [o.name for o in model.graph.output] == [
        "score:nll_bpd",
        "score:final_scale",
        "map:nll",
        "map:final_scale",
    ]
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node), {
        n.domain for n in model.graph.node
    }


def test_export_errors(tmp_path):
    assert main(["export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "m.pt2")]) == 2
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="bad.pt2"):
        mri_anomaly.load_exported(tmp_path / "bad.pt2")
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        mri_anomaly.load_exported(tmp_path / "missing.pt2")
