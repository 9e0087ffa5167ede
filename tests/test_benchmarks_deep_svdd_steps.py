"""``benchmarks/deep_svdd_steps.py``: its reading from hand-made numbers (no training)."""

from __future__ import annotations


def _result(steps: int, distance: float, aurocs: dict[str, float]) -> dict:
    return {"steps_per_phase": steps, "fit": {"validation": {"distance": distance}}, "auroc": aurocs}


def test_reading_names_the_columns_that_moved_when_the_best_one_falls(load_benchmark):
    svdd = load_benchmark("deep_svdd_steps")
    data = [
        _result(500, 0.25, {"whole": 0.66, "patch": 0.81, "still": 0.70}),
        _result(2000, 0.04, {"whole": 0.71, "patch": 0.78, "still": 0.71}),
    ]
    text = svdd.reading(data)
    assert "best volume AUROC 0.810 → 0.780" in text
    assert "without detecting better" in text
    # moved by >= 0.02 either way: whole (+0.05) and patch (-0.03); still (+0.01) is not named
    assert text.endswith("Columns that moved by 0.02 or more: `whole` 0.660 → 0.710, `patch` 0.810 → 0.780.")


def test_reading_says_longer_training_detects_better_when_the_best_column_rises(load_benchmark):
    svdd = load_benchmark("deep_svdd_steps")
    text = svdd.reading([_result(500, 0.25, {"a": 0.70}), _result(2000, 0.04, {"a": 0.75})])
    assert "longer training detects better." in text
