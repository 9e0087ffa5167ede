"""Config loading, validation messages and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mri_anomaly.training import ConfigError, apply_overrides, build_method, load_config, validate_config
from mri_anomaly.training.config import config_differences, parse_override
from mri_anomaly.training.methods import get_method_class

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
REQUIRED = {
    "glow2d-slices.yaml",
    "glow3d.yaml",
    "glow3d-ratio.yaml",
    "deep-svdd-2d.yaml",
    "deep-sad-2d.yaml",
    "deep-sad-3d.yaml",
    "latent-norm-ae-2d.yaml",
    "latent-norm-ae-3d.yaml",
}


def test_every_required_config_is_shipped():
    assert REQUIRED <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid_and_builds_its_method(path):
    raw = yaml.safe_load(path.read_text())
    # reproducible from the file alone: method, seed and preprocessing are stated, not defaulted
    assert {"method", "spatial_dims", "seed", "preprocessing", "model", "train", "score"} <= set(raw)
    config = load_config(path)
    cls = get_method_class(config["method"])
    assert set(config["train"]["phases"]) == set(cls.phases)
    method = build_method(config)
    assert method.spatial_dims == config["spatial_dims"]
    assert 0 <= config["slices"]["min_brain_fraction"] <= 1


def _base() -> dict:
    return {
        "method": "latent-norm-ae",
        "spatial_dims": 2,
        "seed": 0,
        "preprocessing": {"spacing": [8.0, 8.0, 8.0], "spatial_size": [16, 16, 16], "divisible_by": 8},
        "model": {"latent_dim": 8, "channels": [4, 8]},
        "train": {"batch_size": 2, "phases": {"train": {"steps": 3, "lr": 1e-3}}},
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_with_voxel_maps_leaves_out_the_same_rim(path):
    # One rim for every map (docs/benchmarks/rim_width.md): without it a map's <map>_q999 is the brain's edge
    # (the patch Deep SVDD's map at 0 mm: volume AUROC 0.51 on the demo, 0.88 at 8 mm).
    config = load_config(path)
    if get_method_class(config["method"]).map_names:
        assert config["score"]["map_erosion_mm"] == 8.0


def test_valid_config_gets_defaults():
    cfg = validate_config(_base())
    assert cfg["in_channels"] == 1
    assert cfg["train"]["phases"]["train"] == {"steps": 3, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0}
    assert cfg["train"]["augment"] is None
    assert cfg["score"]["specificity"] == 0.95 and cfg["score"]["top_k"] == 5
    assert cfg["slices"]["min_brain_fraction"] == 0.05


def test_every_problem_is_listed_in_one_message():
    cfg = _base()
    cfg["colour"] = "blue"  # unknown top-level key
    cfg["seed"] = "zero"  # wrong type
    cfg["train"]["batch_size"] = 0  # impossible value
    cfg["train"]["phases"]["train"]["lr"] = -1.0  # impossible value
    cfg["train"]["phases"]["warmup"] = {"steps": 1}  # not a phase of the method
    cfg["train"]["grad_clipping"] = 1.0  # typo of grad_clip
    cfg["model"]["latent_dims"] = 8  # typo of latent_dim
    cfg["model"]["beta"] = "large"  # wrong type for a float argument
    cfg["score"] = {"specificity": 1.5}  # impossible value
    cfg["preprocessing"]["spacing"] = [0, 1, 1]  # the data module's own check
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, source="bad.yaml")
    err = info.value
    text = str(err)
    assert "bad.yaml" in text
    expected = [
        "colour: unknown key",
        "seed: expected an integer",
        "train.batch_size: must be >= 1",
        "train.phases.train.lr: must be > 0",
        "train.phases.warmup: method 'latent-norm-ae' has no phase 'warmup'",
        "train.grad_clipping: unknown key",
        "model.latent_dims: unknown argument of method 'latent-norm-ae'",
        "model.beta: expected float",
        "score.specificity: must be in (0, 1)",
        "preprocessing.spacing",
    ]
    for fragment in expected:
        assert any(fragment in p for p in err.problems), (fragment, err.problems)
    assert len(err.problems) == len(expected)
    assert f"{len(expected)} problem(s)" in text


def test_unknown_method_and_missing_keys():
    with pytest.raises(ConfigError) as info:
        validate_config({"method": "no-such-method", "train": {}})
    problems = info.value.problems
    assert any("unknown method 'no-such-method'" in p and "latent-norm-ae" in p for p in problems)
    assert any(p.startswith("spatial_dims: missing") for p in problems)


def test_slices_section_applies_to_3d_too():
    cfg = _base()
    cfg["spatial_dims"] = 3
    assert validate_config(cfg)["slices"] == {"min_brain_fraction": 0.05, "context": 0}
    cfg["slices"] = {"min_brain_fraction": 1.2}
    with pytest.raises(ConfigError, match=r"slices.min_brain_fraction: must be in \[0, 1\], got 1.2"):
        validate_config(cfg)


def test_slice_context_is_for_2d_methods_that_take_it():
    cfg = validate_config({**_base(), "slices": {"context": 2}})
    assert cfg["slices"] == {"min_brain_fraction": 0.05, "context": 2}
    method = build_method(cfg)
    assert method.slice_context == 2 and method.net.in_channels == 5 and method.net.out_channels == 1
    for slices, spatial_dims, method_name, message in (
        ({"context": -1}, 2, "latent-norm-ae", r"slices.context: must be >= 0"),
        ({"context": 1.5}, 2, "latent-norm-ae", r"slices.context: expected an integer"),
        ({"context": 1}, 3, "latent-norm-ae", r"slices.context: neighbouring slices are for 2D models"),
        ({"context": 1}, 2, "intensity", r"slices.context: method 'intensity' takes no neighbouring slices"),
    ):
        bad = {**_base(), "spatial_dims": spatial_dims, "method": method_name, "slices": slices}
        if method_name != "latent-norm-ae":
            bad["model"] = {}
            bad["train"] = {"phases": {}}
        with pytest.raises(ConfigError, match=message):
            validate_config(bad)


def test_required_model_argument_missing_is_reported():
    class Needy(get_method_class("latent-norm-ae")):  # a method with a required argument
        name = "needy-test"

        def __init__(self, spatial_dims: int, in_channels: int = 1, width: int = ...) -> None:  # type: ignore[assignment]
            super().__init__(spatial_dims, in_channels)

    import inspect

    from mri_anomaly.config_checks import ConfigChecker as _Checker
    from mri_anomaly.training.config import _check_model_kwargs

    Needy.__init__.__signature__ = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("spatial_dims", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int),
            inspect.Parameter("width", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int),
        ]
    )
    chk = _Checker()
    _check_model_kwargs(chk, Needy, {})
    assert chk.problems == ["model.width: required by method 'needy-test' but missing"]


def test_overrides_parse_yaml_scalars_and_create_sections():
    assert parse_override("train.phases.train.steps=5") == (["train", "phases", "train", "steps"], 5)
    assert parse_override("train.phases.train.lr=1e-4")[1] == pytest.approx(1e-4)
    assert parse_override("model.channels=[4, 8]")[1] == [4, 8]
    assert parse_override("score.save_maps=false")[1] is False
    assert parse_override("train.grad_clip=null")[1] is None
    cfg = apply_overrides(_base(), ["train.phases.train.steps=7", "score.top_k=2", "model.beta=0.5"])
    assert cfg["train"]["phases"]["train"]["steps"] == 7 and cfg["score"]["top_k"] == 2
    assert cfg["model"]["beta"] == 0.5
    assert validate_config(cfg)["score"]["top_k"] == 2


def test_override_typo_is_caught_not_ignored():
    cfg = apply_overrides(_base(), ["train.batchsize=4"])
    with pytest.raises(ConfigError, match="train.batchsize: unknown key"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(_base(), ["train.batch_size"])
    with pytest.raises(ConfigError, match="is a int, not a section"):
        apply_overrides(_base(), ["seed.x=1"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_base()))
    cfg = load_config(good, ["train.phases.train.steps=1"])
    assert cfg["train"]["phases"]["train"]["steps"] == 1


# ------------------------------------------------------------------------------------------ model fits the grid (issue 13)
def test_glow_levels_that_do_not_fit_the_grid_are_reported_on_load_with_the_other_problems():
    config = Path(__file__).resolve().parents[1] / "configs" / "glow3d.yaml"
    with pytest.raises(ConfigError) as info:  # 40 x 48 x 40 is not a multiple of 2**4
        load_config(config, ["model.levels=4", "in_channels=2", "train.batch_sise=2"])
    assert info.value.problems == [
        "train.batch_sise: unknown key (allowed: augment, batch_size, checkpoint_every, grad_clip, init_batches, log_every, "
        "max_consecutive_skips, num_workers, phases)",
        "in_channels: 2, but the preprocessing gives 1-channel images (one image file per datalist item); set in_channels: 1",
        "preprocessing.spatial_size: [40, 48, 40] is not divisible by 16, which model.levels=4 (each level halves every "
        "axis) needs; use e.g. [32, 48, 32] or a shallower model",
    ]
    assert (
        load_config(config, ["model.levels=4", "preprocessing.spatial_size=[32, 48, 32]"])["model"]["levels"]
        == 4
    )


def test_a_padded_grid_must_be_padded_to_what_the_model_needs():
    config = Path(__file__).resolve().parents[1] / "configs" / "glow3d.yaml"
    with pytest.raises(
        ConfigError,
        match=r"preprocessing.divisible_by: 4 pads the grid to multiples of 4 .* "
        r"model.levels=3 .* needs multiples of 8; use divisible_by: 8",
    ):
        load_config(config, ["preprocessing.spatial_size=null", "preprocessing.divisible_by=4"])
    assert load_config(config, ["preprocessing.spatial_size=null", "preprocessing.divisible_by=8"])


@pytest.mark.parametrize("name", ["deep-sad-2d", "latent-norm-ae-3d"])
def test_encoder_depth_must_fit_the_axes_the_network_sees(name):
    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    with pytest.raises(ConfigError, match=r"not divisible by 16, which model.channels has 4 levels"):
        load_config(config, ["model.channels=[4, 8, 16, 32]"])
    # 2D models see axial slices: only the first two axes count (the axial 40 is not a multiple of 16)
    if name.endswith("2d"):
        assert load_config(
            config, ["model.channels=[4, 8, 16, 32]", "preprocessing.spatial_size=[32, 48, 40]"]
        )
    else:
        with pytest.raises(ConfigError, match=r"\[32, 48, 40\] is not divisible by 16"):
            load_config(config, ["model.channels=[4, 8, 16, 32]", "preprocessing.spatial_size=[32, 48, 40]"])


def test_every_shipped_config_fits_its_grid():
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        load_config(path)


def test_config_differences_lists_each_differing_leaf():
    a = {"method": "glow", "train": {"lr": 1e-3, "phases": {"p": {"steps": 5}}}, "score": {"top_k": 3}}
    b = {"method": "glow", "train": {"lr": 2e-3, "phases": {"p": {"steps": 5}}}, "model": {"levels": 2}}
    assert config_differences(a, b) == [
        (("model",), None, {"levels": 2}),
        (("score",), {"top_k": 3}, None),
        (("train", "lr"), 1e-3, 2e-3),
    ]
    assert config_differences(a, a) == []
