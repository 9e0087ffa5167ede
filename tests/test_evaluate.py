"""`evaluate` on a synthetic score directory: metrics.json shape, numbers, thresholds in the run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mri_anomaly.evaluation.evaluate import evaluate
from mri_anomaly.evaluation.metrics import binary_metrics
from mri_anomaly.evaluation.thresholds import calibrate_threshold, load_thresholds
from test_evaluate_data import make_score_dir


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    score_dir, sections = make_score_dir(root)
    run = root / "run"
    run.mkdir()
    metrics = evaluate(
        score_dir,
        root / "datalist.json",
        root / "out",
        runs=[run],
        n_bootstrap=100,
        n_bootstrap_voxel=20,
        report=False,
    )
    return root, score_dir, run, metrics


def test_metrics_json_shape_and_values(evaluated):
    root, score_dir, _, metrics = evaluated
    on_disk = json.loads((root / "out" / "metrics.json").read_text())
    assert set(on_disk) >= {"volume", "slice", "voxel", "thresholds"}
    for key in ("auroc", "auroc_ci", "ap", "ap_ci", "fpr_at_95tpr", "sens_at_95spec", "sens_at_90spec_ci"):
        assert key in on_disk["volume"]["nll"], key
    # the volume numbers are exactly scikit-learn's on the test rows
    df = pd.read_csv(score_dir / "scores.csv")
    test = df[df["section"] == "test"]
    expected = binary_metrics(test["label"], test["ratio"])
    for key, value in expected.items():
        assert on_disk["volume"]["ratio"][key] == pytest.approx(value)
    assert on_disk["volume"]["ratio"]["n"] == 12 and on_disk["volume"]["ratio"]["n_anomalous"] == 6
    lo, hi = on_disk["volume"]["ratio"]["auroc_ci"]
    assert lo <= on_disk["volume"]["ratio"]["auroc"] <= hi
    # slice level: slices of the test scans, lesion slices positive
    sl = pd.read_csv(score_dir / "slice_scores.csv")
    sl = sl[sl["section"] == "test"]
    assert sl["slice_label"].isna().any()  # healthy scans have no mask: their slices count as healthy
    sl = sl.fillna({"slice_label": 0})
    assert on_disk["slice"]["nll"]["n"] == len(sl)
    assert on_disk["slice"]["nll"]["auroc"] == pytest.approx(
        binary_metrics(sl["slice_label"], sl["nll"])["auroc"]
    )
    assert "clustered" in on_disk["slice"]["nll"]["ci_method"]
    # voxel level: the map is lesion*2 + noise(0.5): strongly separating, best Dice well above chance
    vox = on_disk["voxel"]["residual"]
    assert vox["auroc"] > 0.95 and vox["best_dice"] > 0.6
    assert vox["n_scans"] == 12 and vox["n_scans_with_anomaly"] == 6
    assert vox["n_anomalous"] == 6 * 18  # 3x3x2 lesion voxels per anomalous scan, all inside the brain
    assert set(on_disk["per_site"]) == {"site0", "site1"}


def test_thresholds_stored_and_reported(evaluated):
    _, score_dir, run, metrics = evaluated
    stored = load_thresholds(run)
    df = pd.read_csv(score_dir / "scores.csv")
    val = df[df["section"] == "validation"]
    assert stored["thresholds"]["nll"] == pytest.approx(calibrate_threshold(val["nll"], 0.95))
    assert stored["section"] == "validation" and stored["n_healthy"] == 20
    t = metrics["thresholds"]["nll"]
    assert t["calibration_specificity"] >= 0.95
    test = df[df["section"] == "test"]
    flagged = test["nll"].to_numpy() > t["threshold"]
    assert t["test_sensitivity"] == pytest.approx(flagged[test["label"] == 1].mean())
    assert t["test_specificity"] == pytest.approx(1 - flagged[test["label"] == 0].mean())


def test_comparison_prefixes_runs(tmp_path):
    a, sections = make_score_dir(tmp_path, "glow", seed=1, with_maps=False, n_val=5)
    b, _ = make_score_dir(tmp_path, "svdd", seed=2, with_maps=False, n_val=5)
    m = evaluate([a, b], sections, tmp_path / "cmp", n_bootstrap=0, report=False)
    assert set(m["volume"]) == {"glow/nll", "glow/ratio", "svdd/nll", "svdd/ratio"}
    assert "auroc_ci" not in m["volume"]["glow/nll"]
    assert any("only 5 healthy scans" in n for n in m["notes"])


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="scores.csv"):
        evaluate(tmp_path, None, tmp_path / "o")
    (tmp_path / "scores.csv").write_text("image,nll\na.nii.gz,1.0\n")
    with pytest.raises(ValueError, match="no subject_id"):
        evaluate(tmp_path, None, tmp_path / "o")
    d, sections = make_score_dir(tmp_path / "x", with_maps=False)
    with pytest.raises(ValueError, match="one run per score directory"):
        evaluate([d], sections, tmp_path / "o", runs=[tmp_path, tmp_path])


def test_one_class_is_reported_not_crashed(tmp_path):
    d, sections = make_score_dir(tmp_path, with_maps=False)
    df = pd.read_csv(d / "scores.csv")
    df.loc[df["section"] == "test", "label"] = 0
    df.to_csv(d / "scores.csv", index=False)
    for item in sections["test"]:
        item["label"] = 0
    m = evaluate(d, sections, tmp_path / "o", n_bootstrap=0, report=False)
    assert "both healthy" in m["volume"]["nll"]["error"]
    assert np.isfinite(m["thresholds"]["nll"]["threshold"])


def test_cli_evaluate(tmp_path, capsys):
    from mri_anomaly.cli import main

    d, _ = make_score_dir(tmp_path, with_maps=False)
    run = tmp_path / "run"
    run.mkdir()
    rc = main(
        [
            "evaluate",
            "--scores",
            str(d),
            "--datalist",
            str(tmp_path / "datalist.json"),
            "--out",
            str(tmp_path / "ev"),
            "--run",
            str(run),
            "--bootstrap",
            "10",
            "--specificity",
            "0.9",
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (tmp_path / "ev" / "report.html").is_file()
    assert load_thresholds(run)["specificity"] == 0.9
    assert m["thresholds"]["nll"]["threshold"] == pytest.approx(load_thresholds(run)["thresholds"]["nll"])
    rc = main(["evaluate", "--scores", str(tmp_path / "nowhere"), "--out", str(tmp_path / "ev2")])
    assert rc == 2
    assert "nowhere/scores.csv: not found" in capsys.readouterr().err


def test_a_section_with_one_class_is_a_loud_warning(tmp_path, capsys):
    score_dir, sections = make_score_dir(tmp_path, n_val=4, n_test=4, with_maps=False)
    scores = pd.read_csv(score_dir / "scores.csv")
    scores[scores["label"] == 0].to_csv(score_dir / "scores.csv", index=False)  # test: healthy scans only
    metrics = evaluate(score_dir, None, tmp_path / "out", n_bootstrap=10, report=False, log=lambda m: None)
    expected = (
        f"scores: section 'test' (2 scans in {score_dir / 'scores.csv'}) has only 2 healthy scans and no "
        "anomalous (label 1) ones: AUROC, AP and sensitivities need both"
    )
    assert len(metrics["warnings"]) == 1 and metrics["warnings"][0].startswith(expected)
    assert f"warning: {expected}" in capsys.readouterr().err
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (
        on_disk["warnings"] == metrics["warnings"]
        and f"WARNING: {metrics['warnings'][0]}" in on_disk["notes"]
    )
    assert "error" in on_disk["volume"]["nll"]
    # both classes: no warning
    both, _ = make_score_dir(tmp_path / "b", n_val=4, n_test=4, with_maps=False)
    clean = evaluate(both, None, tmp_path / "o2", n_bootstrap=10, report=False, log=lambda m: None)
    assert clean["warnings"] == []


def test_workers_give_the_same_metrics_thresholds_and_figures(tmp_path):
    # three runs on the same scans (same seed: the same files), the second without maps, the third weaker
    a, sections = make_score_dir(tmp_path, "glow", seed=3)
    b, _ = make_score_dir(tmp_path, "svdd", seed=3, with_maps=False)
    c, _ = make_score_dir(tmp_path, "ae", seed=3, separation=0.5)
    for d in (a, b, c):  # a brain fraction per slice (the same in every run): the slice control is made once
        sl = pd.read_csv(d / "slice_scores.csv")
        sl["brain_fraction"] = (sl["slice"] % 5 + 1) / 5.0
        sl.to_csv(d / "slice_scores.csv", index=False)
    runs = [tmp_path / "runs" / n for n in ("glow", "svdd", "ae")]
    for run in runs:
        run.mkdir(parents=True)
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        metrics = evaluate([a, b, c], sections, out, runs=runs, n_bootstrap=50, n_bootstrap_voxel=10,
                           workers=workers, log=lambda msg: None)  # fmt: skip
        metrics["meta"].pop("seconds")
        figures = {p.name: p.read_bytes() for p in sorted((out / "figures").glob("*.png"))}
        thresholds = [(run / "thresholds.json").read_text() for run in runs]
        results[workers] = (json.dumps(metrics), figures, thresholds)
    serial, parallel = results[1], results[2]
    assert parallel[0] == serial[0]  # every value, and the keys in the same order
    assert len(serial[1]) >= 10 and parallel[1] == serial[1]
    assert parallel[2] == serial[2]
    m = json.loads(serial[0])
    assert list(m["runs"]) == ["glow", "svdd", "ae"]
    controls = [k for k in m["slice"] if "control" in m["slice"][k]]
    assert controls == ["control/brain_fraction"]  # from the first run, whichever worker evaluated it
    assert m["slice"]["control/brain_fraction"]["control"].endswith("(slices of glow)")
    assert sorted({k.split("/")[0] for k in m["voxel"]}) == ["ae", "glow"]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        evaluate([a], sections, tmp_path / "out0", workers=0)
