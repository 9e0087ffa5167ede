"""``benchmarks/denoising_ae.py``: lesion-variant AUROCs by hand, the profile column it reads, and its document
from a hand-made result (no training)."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def dae(load_benchmark):
    return load_benchmark("denoising_ae")


def test_variant_aurocs_count_each_variant_against_every_healthy_scan(dae):
    volume = pd.DataFrame(
        {
            "label": [0, 0, 1, 1, 1, 1],
            "lesion_variant": [None, None, "ms", "ms", "focal_opposite", "tumour"],
            "score": [0.2, 0.4, 0.3, 0.5, 0.1, 0.9],
        }
    )
    out = dae.kind_aurocs(volume, "score")
    # ms: 0.3 beats 0.2 only, 0.5 beats both -> 3 of 4 pairs; dark focal 0.1 beats none; tumour beats both
    assert out == {
        "ms": pytest.approx(0.75),
        "focal_opposite": pytest.approx(0.0),
        "tumour": pytest.approx(1.0),
    }


def test_profile_column_finds_the_one_slice_profile_of_a_map(dae):
    assert dae.profile_column(["latent_norm", "residual_slice_top200mm3"]) == "residual_slice_top200mm3"
    assert dae.profile_column(["intensity_slice_top200mm3"], "intensity") == "intensity_slice_top200mm3"
    with pytest.raises(ValueError, match="one slice profile"):
        dae.profile_column(["latent_norm"])


def test_document_has_a_row_per_variant_and_tolerance_and_the_baseline(dae):
    def measures(auroc: float) -> dict:
        return {
            "auroc": auroc, "vs_intensity": auroc - 0.85, "vs_intensity_ci": [-0.01, 0.02],
            "volume_classes": {"within healthy range": 0.6, "beyond healthy range": 0.9},
            "kinds": {"ms": 0.8, "tumour": 0.9, "focal": 0.95, "focal_opposite": 0.55},
            "slice_classes": {"all": 0.8, "within healthy range": 0.6}, "voxel_ap": 0.5,
            "healthy_median": 0.2, "train_loss": 5.0,
            "real": {"ms-patient07": {"slice": 0.6, "voxel_ap": 0.02}},
        }  # fmt: skip

    result = {
        "meta": {"command": "python benchmarks/denoising_ae.py", "machine": "m", "load": "l", "date": "d",
                 "seconds": 1.0, "demo": "demo-out"},
        "seeds": ["0", "1"], "tolerances": [8.0], "overrides": {"plain": [], "dae": ["model.input_noise_std=0.2"]},
        "profile": "residual_slice_top200mm3", "cases": ["ms-patient07"],
        "variants": {"plain": {"8": {"0": measures(0.86), "1": measures(0.84)}},
                     "dae": {"8": {"0": measures(0.90), "1": measures(0.88)}}},
        "intensity": {**measures(0.85), "profile": "intensity_slice_top200mm3"}, "reading": "",
    }  # fmt: skip
    text = dae.to_markdown(result)
    assert (
        "| `plain` | 8 mm | 0.850 (0.860, 0.840) | +0.010 [-0.010, +0.020], -0.010 [-0.010, +0.020] | – |"
        in text
    )
    assert "| `dae` | 8 mm | 0.890 (0.900, 0.880) |" in text
    assert "− `plain` [95 % CI], same seed |" in text
    assert "`plain`: `(none)`; `dae`: `model.input_noise_std=0.2`" in text
    assert "| `intensity` | – | 0.850 | – | – | 0.600 | 0.900 |" in text
    assert "| `dae` | 8 mm | 0.600 (0.600, 0.600) / 0.020 (0.020, 0.020) |" in text
    assert text.startswith("# The latent-norm autoencoder as a denoising autoencoder")
    # no latent_norm measured (a result of before the column): its cell says so
    assert "| 0.200 (0.200, 0.200) | – | 5.000 (5.000, 5.000) |" in text

    # each later variant against the first at the same seed
    result["variants"]["dae"]["8"]["0"].update(vs_first=0.04, vs_first_ci=[0.01, 0.07])
    result["variants"]["dae"]["8"]["1"].update(vs_first=0.04, vs_first_ci=[-0.01, 0.09])
    text = dae.to_markdown(result)
    assert "| +0.040 [+0.010, +0.070], +0.040 [-0.010, +0.090] | 0.600 (0.600, 0.600) |" in text

    result["name"] = "latent_size"
    result["variants"]["plain"]["8"]["0"]["latent_norm"] = 0.6
    result["variants"]["plain"]["8"]["1"]["latent_norm"] = 0.7
    text = dae.to_markdown(result)
    assert text.startswith("# The latent-norm autoencoder's code size and β")
    assert "| 0.200 (0.200, 0.200) | 0.650 (0.600, 0.700) | 5.000 (5.000, 5.000) |" in text


def test_column_auroc_reads_the_test_scans_only(dae, tmp_path):
    pd.DataFrame(
        {
            "subject_id": ["v0", "t0", "t1", "t2", "t3"],
            "section": ["validation", "test", "test", "test", "test"],
            "label": [0, 0, 0, 1, 1],
            "latent_norm_top5_mean": [9.0, 0.1, 0.5, 0.3, 0.9],
        }
    ).to_csv(tmp_path / "scores.csv", index=False)
    # test pairs (anomalous, healthy): 0.3 > 0.1, 0.3 < 0.5, 0.9 > both -> 3 of 4; the validation 9.0 never counts
    assert dae.column_auroc(tmp_path, "latent_norm_top5_mean") == pytest.approx(0.75)
    assert dae.column_auroc(tmp_path, "missing") is None


def test_differences_with_the_first_variant_pair_the_same_seed_and_scans(dae, tmp_path):
    labels = [0, 0, 1, 1]
    scores = {"plain": [0.1, 0.5, 0.3, 0.9], "ctx": [0.1, 0.2, 0.3, 0.9]}  # AUROC 0.75 and 1.0
    for name, values in scores.items():
        folder = tmp_path / "scores" / f"{name}-seed0-8mm"
        folder.mkdir(parents=True)
        table = {"subject_id": ["v0", "t0", "t1", "t2", "t3"], "section": ["validation"] + ["test"] * 4,
                 "label": [0, *labels], "residual_top200mm3": [9.0, *values]}  # fmt: skip
        pd.DataFrame(table).to_csv(folder / "scores.csv", index=False)
    difference, ci = dae.paired_with(
        tmp_path / "scores" / "ctx-seed0-8mm", tmp_path / "scores" / "plain-seed0-8mm"
    )
    assert difference == pytest.approx(0.25) and ci[0] <= 0.25 <= ci[1]
    results = {
        "plain": {"8": {"0": {}}},
        "ctx": {"8": {"0": {}, "1": {}}},
    }  # seed 1 has no plain run to pair with
    dae.add_differences_with_first(results, tmp_path)
    assert results["ctx"]["8"]["0"]["vs_first"] == pytest.approx(0.25)
    assert "vs_first" not in results["ctx"]["8"]["1"] and "vs_first" not in results["plain"]["8"]["0"]
