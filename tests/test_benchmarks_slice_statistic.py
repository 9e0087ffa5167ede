"""``benchmarks/slice_statistic.py``: the statistic switch and the real-case table reader on hand-made files (no
scoring)."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def ss(load_benchmark):
    return load_benchmark("slice_statistic")


def test_slice_statistic_switch_restores(ss):
    from mri_anomaly.scoring.volume import slice_score_columns_of
    from mri_anomaly.training.methods import get_method_class
    from mri_anomaly.training.methods.base import AnomalyMethod

    before = AnomalyMethod.slice_statistic
    cls = get_method_class("intensity")
    assert before == "top200mm3"  # the package's
    with ss.slice_statistic("q99"):
        assert "intensity_slice_q99" in slice_score_columns_of(cls, {"spatial_dims": 3})
    assert AnomalyMethod.slice_statistic == before
    with pytest.raises(RuntimeError), ss.slice_statistic("q99"):
        raise RuntimeError
    assert AnomalyMethod.slice_statistic == before


def test_real_slice_aurocs_reads_each_seed(ss, tmp_path):
    def write(folder, column, values):
        folder.mkdir(parents=True)
        pd.DataFrame(
            {
                "subject_id": ["ms-patient07"] * 4 + ["ixi-x"] * 2,
                "slice": [0, 1, 2, 3, 0, 1],
                "counted": [1, 1, 1, 0, 1, 1],
                "slice_label": [1, 0, 0, 1, "", ""],
                column: values,
            }
        ).to_csv(folder / "slice_scores.csv", index=False)

    write(tmp_path / "scores" / "intensity", "intensity_slice_q99", [0.9, 0.1, 0.5, 0.0, 1.0, 1.0])
    write(tmp_path / "seeds" / "1" / "intensity", "intensity_slice_q99", [0.3, 0.1, 0.5, 0.0, 1.0, 1.0])
    out = ss.real_slice_aurocs(tmp_path, [0, 1], "q99")
    # one lesion slice (slice 3 is not counted) against two lesion-free ones
    assert out == {"intensity/intensity": {"ms-patient07": {0: 1.0, 1: 0.5}}}
    assert ss.real_slice_aurocs(tmp_path, [0, 1], "top200mm3") == {}
