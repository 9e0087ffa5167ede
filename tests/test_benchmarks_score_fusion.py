"""``benchmarks/score_fusion.py``: robust z-scores, the fusion rules, the combinations and the fused measures on
hand-made tables (no training, no scoring)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def sf(load_benchmark):
    return load_benchmark("score_fusion")


def test_robust_z_by_hand(sf):
    healthy = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan])  # median 3, MAD 1 (the NaN is not a healthy value)
    z = sf.robust_z(np.array([3.0, 6.0, 0.0, np.nan, np.inf]), healthy)
    assert z[:3] == pytest.approx([0.0, 3 / 1.4826, -3 / 1.4826])
    assert z[3] == np.inf and z[4] == np.inf  # a non-finite score stays the most anomalous
    with pytest.raises(ValueError, match="no spread"):
        sf.robust_z(np.array([1.0]), np.array([2.0, 2.0, 2.0, 5.0]))


def test_fuse_rules_by_hand(sf):
    a, b = np.array([1.0, -2.0, 0.5]), np.array([0.0, 4.0, 0.5])
    assert sf.fuse([a, b], "max") == pytest.approx([1.0, 4.0, 0.5])
    assert sf.fuse([a, b], "mean") == pytest.approx([0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="rule"):
        sf.fuse([a, b], "sum")


def test_combinations(sf):
    runs = (*sf.LEARNED, *sf.BASELINES)
    combos = sf.combinations(runs)
    assert len(combos) == 7 + 21 + 1 and len(set(combos)) == len(combos)
    assert combos[-1] == sf.LEARNED and ("latent-norm-ae-2d", "normative") in combos
    # with fewer than three learned runs there is no "all learned" set beside the pairs
    assert sf.combinations(("glow3d-ratio", "latent-norm-ae-2d", "intensity"))[-1] == (
        "latent-norm-ae-2d",
        "intensity",
    )


def _tables() -> dict[int, pd.DataFrame]:
    """4 healthy, 4 anomalous scans: run ``a`` finds anomalies 0-1 (bright lesions), ``b`` anomalies 2-3 (dark ones);
    each alone ranks two anomalous scans at the top and two among the healthy ones."""
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    return {
        0: pd.DataFrame(
            {
                "subject_id": [f"s{i}" for i in range(8)],
                "label": y,
                "lesion_variant": ["", "", "", "", "ms", "ms", "focal_opposite", "focal_opposite"],
                "a": [0.0, 0.5, 1.0, 1.5, 5.0, 6.0, -0.5, 0.7],
                "b": [1.5, 1.0, 0.5, 0.0, 0.1, 1.1, 5.0, 6.0],
                "intensity": [0.0, 0.5, 1.0, 1.5, 5.0, 6.0, -0.5, 0.7],
                "normative": [1.5, 1.0, 0.5, 0.0, 0.1, 1.1, 5.0, 6.0],
            }
        )
    }


def test_fused_measures_by_hand(sf):
    scans = pd.DataFrame(
        {
            "subject_id": ["s4", "s5", "s6", "s7"],
            "group": ["ms", "ms", "focal_opposite", "focal_opposite"],
            "class": [sf.CLASSES[2], sf.CLASSES[2], sf.CLASSES[1], sf.CLASSES[1]],
        }
    )
    out = sf.fused_measures(_tables(), scans, [("a",), ("a", "b")], n_resamples=0)
    alone, fused_max, fused_mean = out
    assert [e["rule"] for e in out] == ["alone", "max", "mean"]
    # a alone: 2 anomalous scans above every healthy one, s6 above 0 of 4, s7 above 2 of 4: (8 + 0 + 2) / 16
    assert alone["auroc"][0] == pytest.approx(10 / 16)
    assert alone["classes"][sf.CLASSES[2]] == pytest.approx(1.0)
    assert alone["classes"][f"{sf.CLASSES[1]}:focal_opposite"] == pytest.approx(2 / 8)
    assert alone["kinds"] == pytest.approx({"ms": 1.0, "focal_opposite": 2 / 8})
    # the max finds both kinds: every anomalous scan has one run at 5 or more, every healthy one at most 1.5
    assert fused_max["auroc"][0] == pytest.approx(1.0) and fused_max["mean"] == pytest.approx(1.0)
    # the mean: healthy scans all 0.75; anomalous 2.55, 3.55, 2.25, 3.35: also perfect here
    assert fused_mean["auroc"][0] == pytest.approx(1.0)
    # the baselines here are a and b themselves: the fused pair equals the baselines fused by the same rule
    assert fused_max["vs_baselines"]["difference"] == pytest.approx(0.0)
    assert fused_max["vs_intensity"]["difference"] == pytest.approx(1.0 - 10 / 16)
    assert fused_max["vs_intensity"]["per_seed"] == {0: pytest.approx(6 / 16)}
    # a run alone is compared with the baselines fused by max
    assert alone["vs_baselines"]["difference"] == pytest.approx(10 / 16 - 1.0)
    # the page: a row per score and the winners (without a CI, n_resamples=0, a difference above 0 holds)
    assert sf.winners(out) == []  # both differ from the baselines fused by 0
    weaker = {0: _tables()[0].assign(normative=lambda t: t["intensity"])}  # baselines fused = a alone
    beaten = sf.fused_measures(weaker, scans, [("a", "b")], n_resamples=0)
    assert [e["rule"] for e in sf.winners(beaten)] == ["max", "mean"]
    result = {
        "meta": {
            "command": "c",
            "machine": "m",
            "load": "l",
            "date": "d",
            "seconds": 1.0,
            "demo": "demo-out",
        },
        "seeds": [0],
        "columns": {"intensity": "intensity_top200mm3"},
        "n_test": 8,
        "n_anomalous": 4,
        "n_validation": 4,
        "fused": out,
        "z": sf.z_summary(_tables(), scans, ["a", "b"]),
    }
    # a: healthy 0, .5, 1, 1.5 (90th percentile 1.35, max 1.5); beyond range s4, s5 above it, within s6, s7 not
    assert result["z"]["a"] == pytest.approx(
        {"healthy_q90": 1.35, "healthy_max": 1.5, "within_above_q90": 0.0, "beyond_above_q90": 1.0}
    )
    assert result["z"]["b"]["within_above_q90"] == 1.0 and result["z"]["b"]["beyond_above_q90"] == 0.0
    md = sf.to_markdown(result)
    assert "| a | 1.35 | 1.50 | 0% | 100% |" in md
    assert (
        "| max(a, b) | 1.000 (1.000) | +0.375 **holds** | +0.000 | 1.000 | – | 1.000 | 1.000 |" in md
        and "| a | 0.625 (0.625) |" in md
    )
    assert "Highest mean over seeds of a fused score: max(a, b), 1.000" in md and "CI above 0: none." in md


def test_standardised_tables_use_validation_scans(sf, monkeypatch, tmp_path):
    def volume(section: str, offset: float) -> pd.DataFrame:
        n = 5
        return pd.DataFrame(
            {
                "subject_id": [f"{section}{i}" for i in range(n)],
                "label": [0] * n if section == "val" else [0, 0, 1, 1, 1],
                "lesion_variant": [""] * n if section == "val" else ["", "", "ms", "ms", "focal"],
                "score": np.arange(n, dtype=float) + offset,
            }
        )

    calls = []

    def fake_load(demo, seeds, runs, section="test"):
        calls.append((tuple(seeds), tuple(runs), section))
        prefix = "val" if section == "validation" else "test"
        # validation scores 1..5 (median 3, MAD 1) for every run; test scores 0..4 + 10 * seed
        return {
            s: {
                r: {
                    "volume": volume(prefix, 1.0 if prefix == "val" else 10.0 * s),
                    "score_columns": ["score"],
                }
                for r in runs
            }
            for s in seeds
        }

    monkeypatch.setattr(sf, "load_seed_tables", fake_load)
    tables, columns = sf.standardised_tables(sf.demo_tables(tmp_path, [0, 1]), [0, 1])
    assert columns == {r: "score" for r in (*sf.LEARNED, *sf.BASELINES)}
    assert sorted(tables) == [0, 1]
    t1 = tables[1].set_index("subject_id")
    # a learned run at seed 1: (10 + i - 3) / 1.4826; a baseline: the demo's own (seed 0) test scores, (i - 3) / 1.4826
    assert t1["glow3d-ratio"].to_numpy() == pytest.approx((10 + np.arange(5) - 3) / 1.4826)
    assert t1["intensity"].to_numpy() == pytest.approx((np.arange(5) - 3) / 1.4826)
    assert list(t1["lesion_variant"]) == ["", "", "ms", "ms", "focal"]
    assert all(c[0] == (0,) for c in calls if set(c[1]) == set(sf.BASELINES))  # baselines read at seed 0 only

    def partial_load(demo, seeds, runs, section="test"):
        out = fake_load(demo, seeds, runs, section)
        if 1 in out:
            out[1].pop("deep-sad-2d", None)
            out[1].pop("glow2d-ratio", None)
        return out

    monkeypatch.setattr(sf, "load_seed_tables", partial_load)
    with pytest.raises(SystemExit, match="seed 1: glow2d-ratio, seed 1: deep-sad-2d"):
        sf.demo_tables(tmp_path, [0, 1])


def _slices() -> dict[int, pd.DataFrame]:
    """Two scans of 3 slices each; the lesion slices are scan t1's 1 and 2. ``a`` finds slice 1, ``b`` slice 2."""
    return {
        0: pd.DataFrame(
            {
                "subject_id": ["t0", "t0", "t0", "t1", "t1", "t1"],
                "slice": [0, 1, 2, 0, 1, 2],
                "slice_label": [0, 0, 0, 0, 1, 1],
                "a": [0.0, 1.0, 0.5, 0.2, 4.0, 0.1],
                "b": [0.3, 0.0, 1.0, 0.6, 0.4, 5.0],
                "intensity": [0.0, 1.0, 0.5, 0.2, 4.0, 0.1],
                "normative": [0.0, 1.0, 0.5, 0.2, 4.0, 0.1],
            }
        )
    }


def test_fused_slices_by_hand(sf):
    scans = pd.DataFrame({"subject_id": ["s4"], "group": ["ms"], "class": [sf.CLASSES[2]]})
    out = sf.fused_measures(_tables(), scans, [("a",), ("a", "b")], n_resamples=0, slices=_slices())
    alone, fused_max, _ = out
    # a alone: slice 1 above all 4 lesion-free slices, slice 2 (0.1) above only t0's 0.0: (4 + 1) / 8
    assert alone["slice"]["auroc"][0] == pytest.approx(5 / 8)
    # max(a, b): lesion-free 0.3, 1.0, 1.0, 0.6; lesion 4.0, 5.0: perfect
    assert fused_max["slice"]["auroc"][0] == pytest.approx(1.0)
    # intensity = normative = a here: the baselines fused equal a, so the pair beats both by 3/8
    assert fused_max["slice"]["vs_intensity"]["difference"] == pytest.approx(3 / 8)
    assert fused_max["slice"]["vs_baselines"]["difference"] == pytest.approx(3 / 8)
    assert [e["rule"] for e in sf.winners(out, "slice")] == ["max", "mean"]


def test_slice_tables_pick_seed0_columns(sf, monkeypatch, tmp_path):
    def slice_table(seed: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "subject_id": ["t0", "t0", "t1", "t1"],
                "slice": [0, 1, 0, 1],
                "slice_label": [0, 0, 0, 1],
                "good": [0.0, 0.1, 0.2, 1.0 + seed],  # ranks the lesion slice first
                "bad": [1.0, 0.1, 0.2, 0.0],
            }
        )

    def fake_load(demo, seeds, runs, section="test"):
        return {
            s: {r: {"slice": slice_table(s), "slice_columns": ["bad", "good"]} for r in runs} for s in seeds
        }

    monkeypatch.setattr(sf, "load_seed_tables", fake_load)
    tables, columns = sf.slice_tables(sf.demo_tables(tmp_path, [0, 2]), [0, 2])
    assert set(columns.values()) == {"good"}
    assert list(tables[2]["latent-norm-ae-2d"]) == [0.0, 0.1, 0.2, 3.0]  # seed 2's own scores
    assert list(tables[2]["intensity"]) == [0.0, 0.1, 0.2, 1.0]  # the demo's baseline at every seed

    def uneven_load(demo, seeds, runs, section="test"):
        out = fake_load(demo, seeds, runs, section)
        if "normative" in runs:
            out[0]["normative"]["slice"] = slice_table(0).iloc[1:]
        return out

    monkeypatch.setattr(sf, "load_seed_tables", uneven_load)
    with pytest.raises(RuntimeError, match="normative's counted test slices differ"):
        sf.slice_tables(sf.demo_tables(tmp_path, [0]), [0])


def test_real_fused_inside_each_scan(sf):
    t = pd.DataFrame(
        {
            "subject_id": ["ms", "ms", "ms", "br", "br", "br"],
            "slice": [0, 1, 2, 0, 1, 2],
            "slice_label": [0, 1, 0, 0, 1, 1],
            "a": [0.0, 2.0, 1.0, 3.0, 1.0, 0.0],
            "b": [1.0, 0.0, 0.5, 0.0, 1.0, 2.0],
        }
    )
    alone, fused_max, fused_mean = sf.real_fused({0: t, 1: t.assign(a=t["b"])}, [("a",), ("a", "b")])
    # each scan on its own: ms's lesion slice 1 above both others under a (1.0), below both under b (0.0);
    # br's lesion slices below its lesion-free one under a (0.0), above it under b (1.0)
    assert alone["cases"] == {"br": [0.0, 1.0], "ms": [1.0, 0.0]}
    # max(a, b) at seed 0: ms 2.0 vs 1.0, 1.0; br 1.0 and 2.0 vs 3.0: 0.0
    assert fused_max["cases"]["ms"][0] == pytest.approx(1.0) and fused_max["cases"]["br"][0] == 0.0
    assert fused_mean["cases"]["ms"][0] == pytest.approx(1.0)  # 1.0 vs 0.5, 0.75
    assert sf.spread([0.5, 1.0, None], 3) == "0.750 (0.500–1.000)" and sf.spread([]) == "–"


def test_real_slice_tables_reuse_or_score(sf, monkeypatch, tmp_path):
    """A real score folder of the demo's trained run is read; one of another model (or none) is scored anew."""
    import json

    demo, work = tmp_path / "demo", tmp_path / "real"
    runs = (*sf.LEARNED, *sf.BASELINES)
    for r in runs:
        (demo / "scores" / r).mkdir(parents=True)
        (demo / "scores" / r / "score_meta.json").write_text(json.dumps({"run_fingerprint": f"fp-{r}"}))
    slices = pd.DataFrame(
        {
            "subject_id": ["ms-patient07"] * 3 + ["elsewhere"],
            "slice": [0, 1, 2, 0],
            "counted": [1, 1, 0, 1],
            "slice_label": [0, 1, 1, 1],
            "col": [0.0, 1.0, 2.0, 3.0],
        }
    )

    def write(folder, fingerprint):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "score_meta.json").write_text(json.dumps({"run_fingerprint": fingerprint}))
        slices.to_csv(folder / "slice_scores.csv", index=False)

    for r in runs:
        write(work / "scores" / r, f"fp-{r}")
    write(work / "scores" / "normative", "another model")
    scored = []

    def fake_score_run(run_dir, cases, datalist, folder, max_voxels):
        scored.append((run_dir, folder))
        assert [c["subject_id"] for c in json.loads(datalist.read_text())["test"]] == list(sf.FLAIR_CASES)
        write(folder, "fp-normative")

    monkeypatch.setattr(sf, "score_run", fake_score_run)
    monkeypatch.setattr(sf, "real_cases", lambda data: [{"subject_id": c} for c in (*sf.FLAIR_CASES, "ixi")])
    tables = sf.real_slice_tables(demo, [0], {r: "col" for r in runs}, tmp_path / "data", work, 1000)
    assert scored == [(demo / "runs" / "normative", work / "scores" / "normative")]
    # counted lesion/lesion-free slices of the FLAIR cases only, a column per run
    t = tables[0]
    assert list(t["slice"]) == [0, 1] and list(t["normative"]) == [0.0, 1.0] and set(runs) <= set(t)
    assert sf.real_slice_tables(demo, [0], {r: "col" for r in runs}, tmp_path, work, 1000)[0].equals(t)
    assert len(scored) == 1  # now the folder is the demo's run: read, not scored again
