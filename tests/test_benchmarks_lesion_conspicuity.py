"""``benchmarks/lesion_conspicuity.py``: its conspicuity measures and per-variant AUROCs on hand-made arrays and
score tables (no scoring)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def lc(load_benchmark):
    return load_benchmark("lesion_conspicuity")


def test_conspicuity_by_hand(lc):
    healthy = np.arange(1, 101, dtype=np.float64)  # 1..100: median 50.5, IQR 75.25 - 25.75 = 49.5, q99 99.01
    image = np.r_[healthy, [100.0, 99.5, 30.0], [500.0]]
    lesion = np.r_[np.zeros(100, bool), [True, True, True], [True]]
    brain = np.r_[np.ones(103, bool), [False]]  # the last lesion voxel lies outside the brain: not counted
    c = lc.conspicuity(image, lesion, brain)
    assert c["lesion_voxels"] == 3 and c["chance"] == pytest.approx(3 / 103)
    assert c["above_q99"] == pytest.approx(2 / 3)  # 100 and 99.5 lie above 99.01, 30 does not
    assert c["contrast_iqr"] == pytest.approx((99.5 - 50.5) / 49.5)
    # 100 ties the top healthy voxel and beats 99; 99.5 beats 99; 30 beats 29 and ties one
    assert c["auroc"] == pytest.approx((99.5 + 99 + 29.5) / 300)
    y = np.r_[np.ones(3), np.zeros(100)]
    from sklearn.metrics import average_precision_score

    assert c["ap"] == pytest.approx(average_precision_score(y, np.r_[[100.0, 99.5, 30.0], healthy]))
    empty = lc.conspicuity(image, np.zeros(104, bool), brain)
    assert empty["lesion_voxels"] == 0 and np.isnan(empty["ap"])


def test_group_medians_order_and_values(lc):
    rows = [
        {"group": "focal", "size_stratum": "small", "ap": 0.2},
        {"group": "ms", "size_stratum": "large", "ap": 0.9},
        {"group": "ms", "size_stratum": "small", "ap": 0.1},
        {"group": "ms", "size_stratum": "small", "ap": 0.5},
        {"group": "ms", "size_stratum": "small", "ap": 0.4},
    ]
    out = lc.group_medians(rows, ["ap"])
    assert [(g["group"], g["size_stratum"], g["n"]) for g in out] == [
        ("ms", "small", 3),
        ("ms", "large", 1),
        ("focal", "small", 1),
    ]
    assert out[0]["ap"] == pytest.approx(0.4)


def test_variant_aurocs_and_chosen_columns(lc):
    volume = pd.DataFrame(
        {
            "subject_id": list("abcdef"),
            "label": [0, 0, 0, 1, 1, 1],
            "lesion_variant": [None, None, None, "ms", "ms", "focal_opposite"],
            "good": [0.1, 0.2, 0.3, 0.9, 0.25, 0.05],
            "other": [0.0] * 6,
        }
    )
    table = {"volume": volume, "score_columns": ["good", "other"]}
    v = lc.variant_aurocs([table, table], "good")
    assert v["ms"] == pytest.approx((3 + 2) / 6)  # 0.9 above all three healthy scans, 0.25 above two
    assert v["focal_opposite"] == pytest.approx(0.0)
    assert "tumour" not in v
    cut = lc.chosen_only({0: {"run": table, "dropped": table}}, {"run": "good"})
    assert list(cut[0]) == ["run"] and cut[0]["run"]["score_columns"] == ["good"]


def test_map_summary_medians_per_variant(lc):
    rows = [
        {"map": "image", "group": "ms", "ap": 0.1, "above_q99": 0.2},
        {"map": "image", "group": "ms", "ap": 0.3, "above_q99": 0.4},
        {"map": "image", "group": "ms", "ap": 0.2, "above_q99": np.nan},
        {"map": "run `nll`", "group": "tumour", "ap": 0.5, "above_q99": 0.6},
    ]
    out = lc.map_summary(rows)
    assert [m["map"] for m in out] == ["image", "run `nll`"]
    assert out[0]["ms"] == {"ap": pytest.approx(0.2), "above_q99": pytest.approx(0.3)}  # NaN left out
    assert "tumour" not in out[0] and out[1]["tumour"]["ap"] == pytest.approx(0.5)


def test_lesion_response_by_hand(lc):
    free = np.arange(1, 101, dtype=np.float64)  # healthy voxels 1..96; median 48.5, 99th percentile 95.05
    lesion = np.zeros(100, bool)
    lesion[96:] = True  # voxels 97..100 carry the lesion
    image = free.copy()
    image[96:] += [10.0, 20.0, 30.0, 40.0]  # in the region: 10, 20, 30, median 20
    region = np.ones(100, bool)
    region[99] = False  # the last lesion voxel lies outside the scored region
    healthy = free[:96]
    q50, q99 = np.quantile(healthy, [0.5, 0.99])
    assert lc.lesion_response(image, free, lesion, region) == pytest.approx(20.0 / (q99 - q50))
    assert np.isnan(lc.lesion_response(image, free, np.zeros(100, bool), region))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_glow_parts_add_up_to_the_scored_nll_map(lc, spatial_dims):
    import math

    import torch
    from mri_anomaly.training.methods import get_method_class

    torch.manual_seed(0)
    method = get_method_class("glow-ratio")(spatial_dims, levels=2, steps=2, hidden_channels=8)
    shape = (8, 8, 4)  # (H, W, D): a 2D Glow takes the 4 axial slices
    train = torch.rand(6, 1, *shape[:spatial_dims])
    method.begin_phase("general", [{"image": train}])
    method.begin_phase("in", [])
    method.eval()
    image = torch.rand(1, *shape)
    parts, latents = lc.glow_parts(method, image)

    scales = [f"scale {i} {term}" for i in (1, 2) for term in ("prior", "steps")]
    assert sorted(parts) == sorted([*scales, "all"])
    np.testing.assert_allclose(sum(parts[k] for k in scales), parts["all"], rtol=1e-5, atol=1e-5)
    # `all` is the scored nll map (bits/dim) in nats per voxel: nll * ln 2 - ln(n_bins)
    batch = image[None] if spatial_dims == 3 else image.permute(3, 0, 1, 2)
    nll = method.score({"image": batch}).maps["nll"]
    nll = nll[0, 0] if spatial_dims == 3 else nll[:, 0].permute(1, 2, 0)
    np.testing.assert_allclose(
        parts["all"], nll.numpy() * math.log(2) - math.log(method.n_bins), rtol=1e-4, atol=1e-4
    )
    # each scale's latents repeated over its block on the model grid (2D: blocks within a slice)
    assert [z.shape[1:] for z in latents] == [shape, shape]
    block = (2, 2, 2) if spatial_dims == 3 else (2, 2, 1)
    first = latents[0][:, : block[0], : block[1], : block[2]]
    assert np.all(first == latents[0][:, :1, :1, :1])
    assert not np.all(latents[0][:, :1, :1, :1] == latents[0][:, 2:3, 2:3, 2:3])


def test_edge_correlation(lc):
    image = np.zeros((6, 6, 6))
    image[2:4, 2:4, 2:4] = 1.0
    edges = np.sqrt(sum(g**2 for g in np.gradient(image)))
    np.testing.assert_array_equal(lc.gradient_magnitude(image), edges)
    region = np.ones(image.shape, bool)
    assert lc.edge_correlation(3.0 * edges + 1.0, edges, region) == pytest.approx(1.0)
    assert lc.edge_correlation(-edges, edges, region) == pytest.approx(-1.0)


def test_glow_part_summary_medians_and_best_latent(lc):
    rows = []
    for sid, (resp, spread, edges) in enumerate([(0.1, 1.0, 0.5), (0.3, 3.0, 0.7), (0.2, 2.0, 0.9)]):
        base = {"run": "g", "subject_id": str(sid), "group": "ms"}
        rows.append({**base, "part": "all", "response": resp, "spread": spread, "edges": edges})
        rows.append({**base, "part": "scale 1 latent 0", "response": 0.1 * sid})  # median 0.1
        rows.append(
            {**base, "part": "scale 1 latent 1", "response": -0.5}
        )  # median -0.5: the largest in size
    rows.append({"run": "g", "subject_id": "9", "group": "tumour", "part": "all", "response": 2.0,
                 "spread": 4.0, "edges": 0.0})  # fmt: skip
    summary = lc.glow_part_summary(rows)
    assert [e["part"] for e in summary] == ["all", "scale 1: best latent"]
    assert summary[0]["ms"] == pytest.approx({"response": 0.2, "spread": 2.0, "edges": 0.7})
    assert summary[0]["tumour"]["response"] == 2.0
    assert summary[1]["ms"] == {"response": -0.5, "channel": "1", "channels": 2}
    assert lc.glow_part_summary([]) == []
