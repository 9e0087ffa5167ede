"""End to end, for every shipped config: mri-anomaly train -> mri-anomaly score on the tiny demo cohort (in the
config's contrasts: the two-contrast cohort for a config with ``preprocessing.contrasts``).

Tiny sizes come from the command line (--set), exactly as a user would make a smoke run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from mri_anomaly.cli import main
from mri_anomaly.data import load_datalist
from mri_anomaly.training.methods import get_method_class

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TINY_MODEL = {
    "glow": ["model.levels=2", "model.steps=1", "model.hidden_channels=8"],
    "glow-ratio": ["model.levels=2", "model.steps=1", "model.hidden_channels=8"],
    "deep-sad": ["model.channels=[4, 8]", "model.pooled_size=2", "model.rep_dim=8"],
    "deep-sad-patch": ["model.channels=[4, 8]", "model.rep_dim=8"],
    "latent-norm-ae": ["model.channels=[4, 8]", "model.pooled_size=2", "model.latent_dim=8"],
    "intensity": [],
    "normative": [],
}
FIT_ONLY = {"intensity", "normative"}  # baselines: statistics, no optimiser steps
# the baselines also run on two contrasts (their maps average the channels)
TWO_CONTRASTS = ("preprocessing.contrasts=[flair, t1]", "in_channels=2")
CASES = [(p, ()) for p in CONFIGS] + [
    (p, TWO_CONTRASTS) for p in CONFIGS if p.stem in ("intensity", "normative")
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_path, extra",
    CASES,
    ids=[p.stem + ("-two-contrasts" if extra else "") for p, extra in CASES],
)
def test_train_then_score(config_path, extra, request, tmp_path):
    raw = yaml.safe_load(config_path.read_text())
    # a multi-contrast config trains on the two-contrast cohort (maps in the first contrast's space)
    contrasts = (raw.get("preprocessing") or {}).get("contrasts") or bool(extra)
    demo_cohort = request.getfixturevalue("demo_cohort_two_contrasts" if contrasts else "demo_cohort")
    method = get_method_class(raw["method"])
    steps = 0 if raw["method"] in FIT_ONLY else 2
    overrides = [
        "preprocessing.spacing=[8, 8, 8]",
        "preprocessing.spatial_size=[24, 24, 24]",
        "train.batch_size=2",
        "train.init_batches=1",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "score.top_k=3",
        "score.allow_few_calibration_scans=true",  # the tiny cohort has one validation scan
        *TINY_MODEL[raw["method"]],
        *[f"train.phases.{phase}.steps={steps}" for phase in method.phases],
        *extra,
    ]
    set_args = [a for o in overrides for a in ("--set", o)]
    run, out = tmp_path / "run", tmp_path / "scores"
    assert (
        main(
            [
                "train",
                "--config",
                str(config_path),
                "--datalist",
                str(demo_cohort),
                "--out",
                str(run),
                "--no-progress",
                *set_args,
            ]
        )
        == 0
    )

    log = read_csv(run / "train_log.csv") if steps else []
    assert [int(r["global_step"]) for r in log] == list(range(1, steps * len(method.phases) + 1))
    assert [r["phase"] for r in log] == [p for p in method.phases for _ in range(steps)]
    assert all(np.isfinite(float(r["loss"])) for r in log)
    thresholds = json.loads((run / "thresholds.json").read_text())

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
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    data = load_datalist(demo_cohort)
    rows = read_csv(out / "scores.csv")
    assert len(rows) == len(data["validation"]) + len(data["test"])
    assert not read_csv(out / "errors.csv")
    meta = json.loads((out / "score_meta.json").read_text())
    # every map's high quantile and top-200-mm³ mean (scoring.maps)
    map_columns = [f"{m}_{s}" for m in method.map_names for s in ("q999", "top200mm3")]
    profiles = [f"{m}_slice_{method.slice_statistic}" for m in method.map_names]  # each map's slice profile
    if raw["spatial_dims"] == 2:  # slice-wise: every slice score aggregated three ways (not the map profiles)
        assert (
            meta["score_columns"]
            == [f"{s}_{a}" for s in method.score_names for a in ("mean", "max", "top3_mean")] + map_columns
        )
        assert meta["slice_score_columns"] == list(method.score_names) + profiles
    else:  # volume-wise: the method's own scores
        assert meta["score_columns"] == list(method.score_names) + map_columns
        assert meta["slice_score_columns"] == profiles
    assert set(thresholds["thresholds"]) == set(meta["score_columns"])
    for r in rows:
        assert (
            0.0 <= float(r["cropped_foreground_fraction"]) <= 1.0
        )  # the grid's crop of each scan is recorded
        for c in meta["score_columns"]:
            assert np.isfinite(float(r[c]))
            assert r[f"flag:{c}"] in ("0", "1")
    # the validation scans calibrated the thresholds: at 95 % specificity none of them is flagged
    for r in rows:
        if r["section"] == "validation":
            assert all(r[f"flag:{c}"] == "0" for c in meta["score_columns"])
    slices = read_csv(out / "slice_scores.csv")
    assert len(slices) == 24 * len(rows)
    for name in method.map_names:
        for r in rows:
            image = nib.load(out / r[f"map:{name}"])
            assert image.shape == nib.load(r["image"]).shape
