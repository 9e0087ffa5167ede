"""Scoring a datalist: tables, aggregation, voxel maps in input space, errors.csv, resuming."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mri_anomaly.data import TINY_PREPROCESSING, PreprocessedCache, load_datalist
from mri_anomaly.scoring.aggregate import aggregate_slice_scores, slice_has_label
from mri_anomaly.scoring.brain import slice_brain_statistic
from mri_anomaly.scoring.runner import score_datalist
from mri_anomaly.training import Trainer, validate_config


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ aggregation
def test_aggregate_slice_scores_by_hand():
    scores = {"s": torch.tensor([9.0, 1.0, 2.0, 3.0, float("nan"), 5.0])}
    counted = torch.tensor(
        [False, True, True, True, False, True]
    )  # slice 0 (9.0) and the NaN slice are not counted
    out = aggregate_slice_scores(scores, counted, top_k=2)
    assert out == pytest.approx({"s_mean": (1 + 2 + 3 + 5) / 4, "s_max": 5.0, "s_top2_mean": 4.0})
    # a counted non-finite slice is the most anomalous, never dropped
    out = aggregate_slice_scores(scores, torch.ones(6, dtype=torch.bool), top_k=1)
    assert out["s_max"] == out["s_top1_mean"] == 1e30
    # no slice qualifies: all slices count; k larger than the number of slices is clipped
    out = aggregate_slice_scores({"s": torch.tensor([1.0, 3.0])}, torch.zeros(2, dtype=torch.bool), top_k=5)
    assert out == pytest.approx({"s_mean": 2.0, "s_max": 3.0, "s_top5_mean": 2.0})
    with pytest.raises(ValueError, match="top_k"):
        aggregate_slice_scores(scores, counted, top_k=0)


def test_slice_profile_over_brain_and_labels():
    volume = torch.zeros(1, 2, 2, 3)
    volume[0, :, :, 1] = 4.0
    volume[0, 0, 0, 2] = 8.0
    assert slice_has_label(volume).tolist() == [0, 1, 1]
    # brain: slice 0 none (all voxels used), slice 1 all four voxels, slice 2 two voxels (values 8 and 0)
    image = torch.zeros(1, 2, 2, 3)
    image[0, :, :, 1] = 1.0
    image[0, 0, :, 2] = 1.0
    assert slice_brain_statistic(volume, image).tolist() == [0.0, 4.0, 4.0]
    # quantile over the slice's brain voxels (linear interpolation): q50 of {8, 0} = 4, q100 = 8
    assert slice_brain_statistic(volume, image, "q50").tolist() == [0.0, 4.0, 4.0]
    assert slice_brain_statistic(volume, image, "q100").tolist() == [0.0, 4.0, 8.0]
    with pytest.raises(ValueError, match="statistic"):
        slice_brain_statistic(volume, image, "median")
    # a region (the brain minus its rim): slices with region voxels use only those, a slice without its brain
    region = torch.zeros(1, 2, 2, 3, dtype=torch.bool)
    region[0, 1, 1, 1] = True  # slice 1: one voxel (value 4); slice 2: none -> its brain {8, 0}
    assert slice_brain_statistic(volume, image, "q100", region=region).tolist() == [0.0, 4.0, 8.0]
    volume[0, 0, 0, 1] = 100.0  # in slice 1's brain but outside the region: not seen
    assert slice_brain_statistic(volume, image, "q100", region=region).tolist() == [0.0, 4.0, 8.0]
    assert slice_brain_statistic(volume, image, "q100").tolist() == [0.0, 100.0, 8.0]


def test_slice_profile_top_volume():
    from mri_anomaly.scoring.brain import top_statistic_voxels
    from mri_anomaly.scoring.maps import is_map_slice_column

    # 200 mm³ at 4 mm (64 mm³ a voxel): round(3.125) = 3 voxels; never fewer than one
    assert top_statistic_voxels("top200mm3", 64.0) == 3
    assert top_statistic_voxels("top200mm3", 1000.0) == 1
    assert top_statistic_voxels("top2.5mm3", 1.0) == 2  # round half to even
    with pytest.raises(ValueError, match="top-volume"):
        top_statistic_voxels("top200", 1.0)
    volume = torch.zeros(1, 3, 2, 2)
    volume[0, :, :, 0] = torch.tensor([[1.0, 9.0], [2.0, 8.0], [3.0, 7.0]])
    volume[0, :, :, 1] = torch.tensor([[5.0, 0.0], [6.0, 0.0], [100.0, 0.0]])
    image = torch.ones(1, 3, 2, 2)
    image[0, 2, 0, 1] = 0.0  # the 100 lies outside slice 1's brain
    # mean of the 3 highest brain voxels: slice 0 (9 + 8 + 7) / 3; slice 1 (6 + 5 + 0) / 3 of its 5 brain voxels
    assert slice_brain_statistic(volume, image, "top3mm3").tolist() == pytest.approx([8.0, 11.0 / 3.0])
    # voxels of 2 mm³: top3mm3 is round(1.5) = 2 voxels
    assert slice_brain_statistic(volume, image, "top3mm3", voxel_mm3=2.0).tolist() == pytest.approx(
        [8.5, 5.5]
    )
    # a region with fewer voxels than asked for: the mean of all of them
    region = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    region[0, 0, 0, :] = True
    assert slice_brain_statistic(volume, image, "top3mm3", region=region).tolist() == pytest.approx(
        [1.0, 5.0]
    )
    # a single hot voxel moves the top-volume profile and not the 99th percentile of a larger slice
    hot = torch.zeros(1, 10, 10, 1)
    hot[0, 4, 4, 0] = 10.0
    brain = torch.ones(1, 10, 10, 1)
    assert slice_brain_statistic(hot, brain, "q99").item() == pytest.approx(
        0.1
    )  # 99th of 100: 0.01 of the way
    assert slice_brain_statistic(hot, brain, "top3mm3").item() == pytest.approx(10.0 / 3.0)
    assert is_map_slice_column("llr_slice_top200mm3") and is_map_slice_column("llr_slice_q99")
    assert not is_map_slice_column("llr_top200mm3")


# ------------------------------------------------------------------------------------------ a scored run
@pytest.fixture(scope="module")
def trained_2d_run(demo_cohort, tmp_path_factory) -> Path:
    config = validate_config(
        {
            "method": "latent-norm-ae",
            "spatial_dims": 2,
            "seed": 0,
            "preprocessing": dict(TINY_PREPROCESSING),
            "slices": {"min_brain_fraction": 0.1},
            "model": {"latent_dim": 8, "channels": [4, 8], "pooled_size": 2},
            "train": {"batch_size": 4, "init_batches": 1, "phases": {"train": {"steps": 2, "lr": 1e-3}}},
            "score": {"top_k": 3, "allow_few_calibration_scans": True},  # one validation scan
        }
    )
    run = tmp_path_factory.mktemp("score") / "run"
    Trainer(config, demo_cohort, run, progress=False).fit()
    return run


@pytest.fixture(scope="module")
def scored(trained_2d_run, demo_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored") / "out"
    summary = score_datalist(
        trained_2d_run, demo_cohort, out, sections=("validation", "test"), progress=False
    )
    data = load_datalist(demo_cohort)
    assert summary.scored == len(data["validation"]) + len(data["test"]) and summary.errors == 0
    return out


def test_scores_csv_rows_columns_and_flags(scored, trained_2d_run, demo_cohort):
    data = load_datalist(demo_cohort)
    rows = read_csv(scored / "scores.csv")
    expected = [("validation", it) for it in data["validation"]] + [("test", it) for it in data["test"]]
    assert [(r["section"], r["image"]) for r in rows] == [
        (s, it["image"]) for s, it in expected
    ]  # datalist order
    assert [r["subject_id"] for r in rows] == [it["subject_id"] for _, it in expected]
    assert [r["label"] for r in rows] == [str(it["label"]) if "label" in it else "" for _, it in expected]
    columns = [
        "latent_norm_mean",
        "latent_norm_max",
        "latent_norm_top3_mean",
        "residual_q999",
        "residual_top200mm3",
    ]
    assert list(rows[0])[:4] == ["subject_id", "image", "section", "label"]
    thresholds = json.loads((trained_2d_run / "thresholds.json").read_text())["thresholds"]
    assert set(thresholds) == set(columns)
    for r in rows:
        for c in columns:
            assert np.isfinite(float(r[c]))
            assert int(r[f"flag:{c}"]) == int(float(r[c]) > thresholds[c])
        assert (
            float(r["latent_norm_mean"]) <= float(r["latent_norm_top3_mean"]) <= float(r["latent_norm_max"])
        )
    meta = json.loads((scored / "score_meta.json").read_text())
    assert meta["method"] == "latent-norm-ae" and meta["score_columns"] == columns
    assert meta["slice_score_columns"] == ["latent_norm", "residual_slice_top200mm3"]
    assert meta["map_names"] == ["residual"]
    assert meta["sections"] == ["validation", "test"] and "top-3 mean" in meta["aggregation"]


def test_volume_scores_are_the_documented_aggregate_of_slice_scores(scored):
    rows = read_csv(scored / "scores.csv")
    slices = read_csv(scored / "slice_scores.csv")
    assert (
        list(slices[0])
        == [
            "subject_id",
            "section",
            "slice",
            "brain_fraction",
            "counted",
            "slice_label",
            "latent_norm",
            "residual_slice_top200mm3",  # the map's slice profile: a slice column, not aggregated to volume columns
        ]
    )
    for r in rows:
        mine = [s for s in slices if s["subject_id"] == r["subject_id"] and s["section"] == r["section"]]
        assert [int(s["slice"]) for s in mine] == list(range(24))  # every axial slice of the 24^3 model grid
        for s in mine:
            assert int(s["counted"]) == int(float(s["brain_fraction"]) >= 0.1)
        kept = sorted((float(s["latent_norm"]) for s in mine if s["counted"] == "1"), reverse=True)
        assert float(r["latent_norm_mean"]) == pytest.approx(np.mean(kept), rel=1e-9)
        assert float(r["latent_norm_max"]) == pytest.approx(kept[0], rel=1e-12)
        assert float(r["latent_norm_top3_mean"]) == pytest.approx(np.mean(kept[:3]), rel=1e-9)
        labels = {s["slice_label"] for s in mine}
        if r["label"] == "1":  # anomalous test scans have a voxel mask: some slices hold lesion voxels
            assert labels <= {"0", "1"} and "1" in labels
        elif r["section"] == "validation":  # no mask: unknown
            assert labels == {""}


def test_voxel_maps_are_float32_in_the_input_space(scored, demo_cohort):
    rows = read_csv(scored / "scores.csv")
    for r in rows:
        path = scored / r["map:residual"]
        assert path.is_file() and r["map:residual"].startswith(f"maps/{r['section']}/")
        image, result = nib.load(r["image"]), nib.load(path)
        assert result.shape == image.shape
        np.testing.assert_allclose(result.affine, image.affine, atol=1e-4)
        assert result.get_data_dtype() == np.float32
        values = np.asarray(result.dataobj)
        assert np.isfinite(values).all() and values.max() > 0  # residuals inside the brain


def test_a_shared_preprocessed_cache_reads_each_scan_once_and_changes_nothing(
    scored, trained_2d_run, demo_cohort, tmp_path, preprocessing_reads
):
    reads = preprocessing_reads
    cache = PreprocessedCache()
    sections = ("validation", "test")
    n = sum(len(load_datalist(demo_cohort)[s]) for s in sections)
    for k in range(3):  # the first call fills the cache; the later ones (other outputs) read nothing
        out = tmp_path / f"out{k}"
        score_datalist(
            trained_2d_run, demo_cohort, out, sections=sections, progress=False, preprocessed_cache=cache
        )
        assert len(reads) == n and len(cache.items) == n
        for table in ("scores.csv", "slice_scores.csv"):
            assert read_csv(out / table) == read_csv(scored / table)
        for r in read_csv(out / "scores.csv"):  # maps taken back to the input space from the cached metadata
            assert (out / r["map:residual"]).read_bytes() == (scored / r["map:residual"]).read_bytes()


def _corrupt_datalist(demo_cohort: Path, folder: Path) -> Path:
    """The demo datalist plus a truncated NIfTI and a missing file in the test section."""
    data = json.loads(Path(demo_cohort).read_text())
    base = Path(demo_cohort).parent
    for section in data:
        if isinstance(data[section], list):
            for it in data[section]:
                for k in ("image", "mask"):
                    if k in it:
                        it[k] = str(base / it[k])
    good = Path(data["test"][0]["image"])
    broken = folder / "broken.nii.gz"
    broken.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:600]))  # header fine, voxels cut off
    data["test"].insert(1, {"image": str(broken), "subject_id": "broken", "label": 0})
    data["test"].append({"image": str(folder / "gone.nii.gz"), "subject_id": "gone", "label": 1})
    path = folder / "datalist.json"
    path.write_text(json.dumps(data))
    return path


def test_corrupt_and_missing_files_go_to_errors_csv_and_the_rest_is_scored(
    trained_2d_run, demo_cohort, tmp_path
):
    datalist = _corrupt_datalist(demo_cohort, tmp_path)
    out = tmp_path / "out"
    summary = score_datalist(
        trained_2d_run, datalist, out, sections=("test",), save_maps=False, progress=False
    )
    n_good = len(load_datalist(demo_cohort)["test"])
    assert summary.scored == n_good and summary.errors == 2
    errors = read_csv(out / "errors.csv")
    assert [e["subject_id"] for e in errors] == ["broken", "gone"]
    assert str(tmp_path / "broken.nii.gz") in errors[0]["error"]
    assert "gone.nii.gz" in errors[1]["error"] and "not found" in errors[1]["error"]
    assert "broken" not in {r["subject_id"] for r in read_csv(out / "scores.csv")}
    # a second run retries only the failed files, rescoring nothing else, and keeps the tables
    before = (out / "scores.csv").read_bytes()
    again = score_datalist(trained_2d_run, datalist, out, sections=("test",), save_maps=False, progress=False)
    assert (again.scored, again.skipped_existing, again.errors) == (0, n_good, 2)
    assert (out / "scores.csv").read_bytes() == before
    assert len(read_csv(out / "errors.csv")) == 2


def test_an_interrupted_score_run_resumes_without_rescoring(trained_2d_run, scored, demo_cohort, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scored, out)
    complete_scores = read_csv(out / "scores.csv")
    complete_slices = read_csv(out / "slice_scores.csv")
    # simulate a crash while the last volume was written: its slice rows are there, its score row is
    # half-written
    lines = (out / "scores.csv").read_text().splitlines(keepends=True)
    (out / "scores.csv").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    summary = score_datalist(
        trained_2d_run, demo_cohort, out, sections=("validation", "test"), progress=False
    )
    assert summary.scored == 1 and summary.skipped_existing == len(complete_scores) - 1
    rows, slices = read_csv(out / "scores.csv"), read_csv(out / "slice_scores.csv")
    assert [r["subject_id"] for r in rows] == [r["subject_id"] for r in complete_scores]
    assert len(slices) == len(complete_slices)  # no duplicated slice rows of the rescored volume
    for a, b in zip(rows, complete_scores):
        assert float(a["latent_norm_max"]) == pytest.approx(float(b["latent_norm_max"]), rel=1e-6)


def test_unknown_section_and_missing_run_are_clear_errors(trained_2d_run, demo_cohort, tmp_path):
    with pytest.raises(ValueError, match="section\\(s\\) nope not in the datalist"):
        score_datalist(trained_2d_run, demo_cohort, tmp_path / "o", sections=("nope",), progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        score_datalist(tmp_path / "no-run", demo_cohort, tmp_path / "o", progress=False)


def test_an_edited_run_config_is_reported_and_the_checkpoint_config_used(trained_2d_run, tmp_path):
    import warnings

    from mri_anomaly.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_2d_run, run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the untouched run loads without a word
        _, trained, _ = load_run(run)
    text = (run / "config.yaml").read_text()
    assert text.count("top_k: 3") == 1
    (run / "config.yaml").write_text(text.replace("top_k: 3", "top_k: 5"))
    with pytest.warns(
        UserWarning, match=r"config.yaml differs from the config stored in checkpoint.pt \(score\.top_k\)"
    ):
        _, used, _ = load_run(run)
    assert used == trained
    (run / "config.yaml").write_text("method: [unclosed")
    with pytest.warns(UserWarning, match="config.yaml: cannot be read"):
        _, used, _ = load_run(run)
    assert used == trained


def test_out_of_another_model_is_refused_and_sections_accumulate(trained_2d_run, demo_cohort, tmp_path):
    out = tmp_path / "out"
    score_datalist(
        trained_2d_run, demo_cohort, out, sections=("validation",), save_maps=False, progress=False
    )
    score_datalist(trained_2d_run, demo_cohort, out, sections=("test",), save_maps=False, progress=False)
    meta = json.loads((out / "score_meta.json").read_text())
    assert meta["sections"] == ["validation", "test"]
    assert {r["section"] for r in read_csv(out / "scores.csv")} == {"validation", "test"}
    other = tmp_path / "other-run"
    shutil.copytree(trained_2d_run, other)
    from mri_anomaly.training import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(other / "checkpoint.pt")
    checkpoint["progress"]["global_step"] += 1  # trained further: a different model
    save_checkpoint(checkpoint, other / "checkpoint.pt")
    with pytest.raises(ValueError, match="holds scores of another model"):
        score_datalist(other, demo_cohort, out, sections=("test",), progress=False)


# ------------------------------------------------------------------------------------------ loud failures (issue 13)
def test_score_command_exits_3_when_scans_failed_and_still_scores_the_rest(
    trained_2d_run, demo_cohort, tmp_path, capsys
):
    from mri_anomaly.cli import EXIT_SOME_SCANS_FAILED, main

    datalist = _corrupt_datalist(demo_cohort, tmp_path)
    out = tmp_path / "out"
    status = main(
        [
            "score",
            "--run",
            str(trained_2d_run),
            "--datalist",
            str(datalist),
            "--section",
            "test",
            "--out",
            str(out),
            "--no-maps",
            "--no-progress",
        ]
    )
    assert status == EXIT_SOME_SCANS_FAILED == 3
    n_good = len(load_datalist(demo_cohort)["test"])
    assert len(read_csv(out / "scores.csv")) == n_good
    assert [e["subject_id"] for e in read_csv(out / "errors.csv")] == ["broken", "gone"]
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mri-anomaly score:")]
    assert summary == [
        f"mri-anomaly score: 2 of {n_good + 2} scan(s) failed, listed in {out / 'errors.csv'} "
        f"({n_good} scored now, 0 already done); exit status 3"
    ]
    # every scan readable: exit 0
    assert (
        main(
            [
                "score",
                "--run",
                str(trained_2d_run),
                "--datalist",
                str(demo_cohort),
                "--section",
                "test",
                "--out",
                str(tmp_path / "clean"),
                "--no-maps",
                "--no-progress",
            ]
        )
        == 0
    )


def test_a_bug_while_scoring_is_raised_not_recorded_as_a_bad_scan(
    trained_2d_run, demo_cohort, tmp_path, monkeypatch
):
    import mri_anomaly.scoring.volume as volume

    def broken_scorer(*args, **kwargs):
        raise RuntimeError("a bug in the scorer")

    monkeypatch.setattr(volume, "raw_volume_scores_batch", broken_scorer)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bug in the scorer"):
        score_datalist(trained_2d_run, demo_cohort, out, sections=("test",), save_maps=False, progress=False)
    assert not read_csv(out / "errors.csv")


def test_a_bug_in_preprocessing_is_raised_not_recorded_as_a_bad_scan(
    trained_2d_run, demo_cohort, tmp_path, monkeypatch
):
    from mri_anomaly.data import VolumeDataset

    def broken_getitem(self, index):
        raise KeyError("image_meta_dict")  # what a transform bug looks like; no InputFileError behind it

    monkeypatch.setattr(VolumeDataset, "__getitem__", broken_getitem)
    out = tmp_path / "out"
    with pytest.raises(KeyError, match="image_meta_dict"):
        score_datalist(trained_2d_run, demo_cohort, out, sections=("test",), save_maps=False, progress=False)
    assert not read_csv(out / "errors.csv")


def test_3d_volumes_scored_in_batches_match_one_at_a_time(demo_cohort, tmp_path):
    """score.batch_size volumes per forward pass (3D) give exactly the scores and slice profiles of one at a time."""
    config = validate_config(
        {
            "method": "glow",
            "spatial_dims": 3,
            "seed": 0,
            "preprocessing": dict(TINY_PREPROCESSING),
            "model": {"levels": 2, "steps": 1, "hidden_channels": 8},
            "train": {"batch_size": 2, "init_batches": 1, "phases": {"train": {"steps": 1, "lr": 1e-3}}},
            "score": {"batch_size": 1},
        }
    )
    run = tmp_path / "run"
    Trainer(config, demo_cohort, run, progress=False).fit()
    one = score_datalist(
        run, demo_cohort, tmp_path / "one", sections=("test",), save_maps=False, progress=False
    )
    import mri_anomaly.scoring.runner as runner
    import mri_anomaly.scoring.volume as volume

    batched_config = {**config, "score": {**config["score"], "batch_size": 3}}
    real_load_run = runner.load_run

    def load_with_batches(run_dir, device="cpu"):
        method, _, checkpoint = real_load_run(run_dir, device)
        return method, batched_config, checkpoint

    forward_sizes = []
    real_batch = volume.raw_volume_scores_batch

    def counting(method, cfg, items, device, want_maps):
        forward_sizes.append(len(items))
        return real_batch(method, cfg, items, device, want_maps)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "load_run", load_with_batches)
        mp.setattr(volume, "raw_volume_scores_batch", counting)
        three = score_datalist(
            run, demo_cohort, tmp_path / "three", sections=("test",), save_maps=False, progress=False
        )
    n = one.scored
    assert three.scored == n and forward_sizes == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    a, b = read_csv(tmp_path / "one" / "scores.csv"), read_csv(tmp_path / "three" / "scores.csv")
    for ra, rb in zip(a, b, strict=True):
        assert ra["subject_id"] == rb["subject_id"]
        for column in one.score_columns:
            assert ra[column] == rb[column]  # identical: a lone volume is scored as a pair, like any batch
    sa, sb = (
        read_csv(tmp_path / "one" / "slice_scores.csv"),
        read_csv(tmp_path / "three" / "slice_scores.csv"),
    )
    assert len(sa) == len(sb)
    for ra, rb in zip(sa, sb, strict=True):
        for column in ("nll_slice_top200mm3", "final_scale_slice_top200mm3"):
            assert ra[column] == rb[column]
