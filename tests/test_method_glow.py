"""The ``glow`` and ``glow-ratio`` method adapters: training lowers the NLL, the outlier loss works,
weights are copied (not re-initialised), checkpoints reload to identical scores, units of scores and maps."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from mri_anomaly.scoring import MOST_ANOMALOUS_SCORE
from mri_anomaly.training.methods import get_method_class

SIZE = 16
TINY = dict(levels=2, steps=2, hidden_channels=16)


def _healthy(n: int, generator: torch.Generator, spatial_dims: int = 2) -> torch.Tensor:
    """Smooth 'brains': a disc of varying radius and brightness with a soft gradient, in [0, 1]."""
    axes = torch.meshgrid(*[torch.linspace(-1, 1, SIZE)] * spatial_dims, indexing="ij")
    radius = sum(a * a for a in axes).sqrt()
    r0 = 0.6 + 0.2 * torch.rand(n, generator=generator)
    level = 0.5 + 0.3 * torch.rand(n, generator=generator)
    shape = (n,) + (1,) * spatial_dims
    x = level.reshape(shape) * torch.sigmoid((r0.reshape(shape) - radius) * 20) * (1 + 0.2 * axes[0])
    return x.clamp(0, 1).unsqueeze(1)


def _general(n: int, generator: torch.Generator) -> torch.Tensor:
    """A broader distribution: random smooth textures."""
    coarse = torch.rand(n, 1, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def _train(method, phase: str, data, steps: int, general=None, lr: float = 1e-3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    method.begin_phase(phase, [{"image": data[:32]}])
    optimizer = torch.optim.Adam(list(method.phase_parameters(phase)), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (16,), generator=generator)
        general_batch = None
        if general is not None:
            gidx = torch.randint(0, general.shape[0], (16,), generator=generator)
            general_batch = {"image": general[gidx]}
        optimizer.zero_grad()
        loss = method.training_loss(phase, {"image": data[idx]}, general_batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        optimizer.step()


def test_registered_methods_and_phases():
    glow_cls = get_method_class("glow")
    ratio_cls = get_method_class("glow-ratio")
    assert glow_cls.phases == ("train",) and ratio_cls.phases == ("general", "in")
    ratio = ratio_cls.from_config(2, 1, dict(TINY, coupling="additive", outlier_weight=1.0))
    assert ratio.phase_data_section("general") == "general"
    assert ratio.phase_data_section("in") == "training"
    assert ratio.uses_general_data("in") and not ratio.uses_general_data("general")
    assert not ratio_cls(2, 1, **TINY, outlier_weight=0.0).uses_general_data("in")
    with pytest.raises(ValueError, match="unknown phase"):
        ratio.phase_data_section("train")
    with pytest.raises(ValueError, match="outlier_temperature"):
        ratio_cls(2, 1, **TINY, outlier_temperature=0.0)
    with pytest.raises(ValueError, match="coupling"):
        glow_cls(2, 1, **TINY, coupling="nope")


def test_tiny_training_run_lowers_the_nll():
    generator = torch.Generator().manual_seed(0)
    train, held_out = _healthy(128, generator), _healthy(32, generator)
    method = get_method_class("glow")(2, 1, **TINY)
    method.begin_phase("train", [{"image": train[:32]}])
    before = method.score({"image": held_out}).scores["nll_bpd"].mean().item()
    _train(method, "train", train, steps=60)
    after = method.score({"image": held_out}).scores["nll_bpd"].mean().item()
    assert after < before - 0.1, (before, after)


def test_scores_and_maps_units_and_shapes():
    generator = torch.Generator().manual_seed(0)
    method = get_method_class("glow")(2, 1, **TINY)
    method.begin_phase("train", [{"image": _healthy(32, generator)}])
    x = _healthy(4, generator)
    out = method.score({"image": x})
    assert set(out.scores) == set(method.score_names) and set(out.maps) == set(method.map_names)
    for value in out.scores.values():
        assert value.shape == (4,) and torch.isfinite(value).all()
    for value in out.maps.values():
        assert value.shape == (4, 1, SIZE, SIZE)
    # The mean of each map over its voxels is its score.
    torch.testing.assert_close(
        out.maps["nll"].flatten(1).mean(1), out.scores["nll_bpd"], rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        out.maps["final_scale"].flatten(1).mean(1), out.scores["final_scale"], rtol=1e-4, atol=1e-4
    )
    # nll_bpd is the Glow's bits/dim of the half-bin dequantised input.
    from mri_anomaly.flows import dequantize

    torch.testing.assert_close(out.scores["nll_bpd"], method.glow.bits_per_dim(dequantize(x, training=False)))


def test_glow_3d_scores_give_voxel_maps():
    generator = torch.Generator().manual_seed(0)
    method = get_method_class("glow")(3, 1, levels=2, steps=1, hidden_channels=8, memory_efficient=True)
    volumes = _healthy(6, generator, spatial_dims=3)
    _train(method, "train", volumes, steps=2)
    out = method.score({"image": volumes[:2]})
    assert out.maps["nll"].shape == (2, 1, SIZE, SIZE, SIZE)
    slice_profile = out.maps["nll"].mean(dim=(1, 2, 3))  # one value per axial slice (last axis)
    assert slice_profile.shape == (2, SIZE) and torch.isfinite(slice_profile).all()


def test_glow_ratio_copies_general_weights_freezes_it_and_outlier_loss_lowers_in_minus_general():
    generator = torch.Generator().manual_seed(0)
    healthy, general = _healthy(128, generator), _general(128, generator)
    general_held_out = _general(32, generator)
    ratio_cls = get_method_class("glow-ratio")
    base = ratio_cls(2, 1, **TINY, outlier_weight=3.0, outlier_temperature=0.3)
    _train(base, "general", general, steps=10)
    base.begin_phase("in", [{"image": healthy[:16]}])
    # Initialised from the general model: every tensor (actnorm state included) is equal, nothing re-initialised.
    general_state = base.general.state_dict()
    for key, value in base.in_distribution.state_dict().items():
        torch.testing.assert_close(value, general_state[key], rtol=0, atol=0, msg=key)
    assert not any(p.requires_grad for p in base.general.parameters())
    assert {id(p) for p in base.phase_parameters("in")} == {id(p) for p in base.in_distribution.parameters()}
    frozen = {k: v.clone() for k, v in base.general.state_dict().items()}

    def in_minus_general(method) -> float:
        from mri_anomaly.flows import dequantize

        x = dequantize(general_held_out, training=False)
        with torch.no_grad():
            return (method.in_distribution(x).log_prob - method.general(x).log_prob).mean().item() / SIZE**2

    assert in_minus_general(base) == 0.0
    with_outlier = copy.deepcopy(base)
    without_outlier = copy.deepcopy(base)
    without_outlier.outlier_weight = 0.0
    _train(with_outlier, "in", healthy, steps=10, general=general, seed=1)
    _train(without_outlier, "in", healthy, steps=10, seed=1)
    delta_with, delta_without = in_minus_general(with_outlier), in_minus_general(without_outlier)
    print("in - general per dim (nats): with outlier loss", delta_with, "without", delta_without)
    assert delta_with < delta_without - 0.05, (delta_with, delta_without)
    assert delta_with < 0
    for key, value in with_outlier.general.state_dict().items():  # the general model did not move
        torch.testing.assert_close(value, frozen[key], rtol=0, atol=0)
    # llr is bpd_in - bpd_general, and higher on general samples than on healthy ones after training.
    out = with_outlier.score({"image": general_held_out})
    general_out = with_outlier.score({"image": healthy[:32]})
    torch.testing.assert_close(out.maps["llr"].flatten(1).mean(1), out.scores["llr"], rtol=1e-4, atol=1e-4)
    assert out.scores["llr"].mean() > general_out.scores["llr"].mean()
    with pytest.raises(ValueError, match="general_batch"):
        with_outlier.training_loss("in", {"image": healthy[:2]}, None)


@pytest.mark.parametrize("method_name", ["glow", "glow-ratio"])
def test_saved_and_loaded_model_gives_identical_scores_and_is_not_reinitialised(method_name):
    generator = torch.Generator().manual_seed(0)
    data = _healthy(32, generator)
    cls = get_method_class(method_name)
    method = cls.from_config(2, 1, dict(TINY))
    for phase in cls.phases:
        _train(method, phase, data, steps=3, general=data if method.uses_general_data(phase) else None)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    loaded = cls.from_config(2, 1, dict(TINY))
    loaded.load_state_dict(state)
    x = _healthy(4, generator)
    expected, got = method.score({"image": x}), loaded.score({"image": x})
    for name in cls.score_names:
        torch.testing.assert_close(got.scores[name], expected.scores[name], rtol=0, atol=0)
    for name in cls.map_names:
        torch.testing.assert_close(got.maps[name], expected.maps[name], rtol=0, atol=0)
    # begin_phase after loading (as on resume) must not re-initialise or re-copy anything.
    for phase in cls.phases:
        loaded.begin_phase(phase, [{"image": data * 0.5}])
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_nonfinite_scores_become_most_anomalous():
    generator = torch.Generator().manual_seed(0)
    method = get_method_class("glow")(2, 1, **TINY)
    method.begin_phase("train", [{"image": _healthy(8, generator)}])
    with torch.no_grad():
        method.glow.priors[-1].log_scale[0, 0, 0] = float("inf")
    out = method.score({"image": _healthy(2, generator)})
    for value in out.scores.values():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, torch.full_like(value, MOST_ANOMALOUS_SCORE))


def test_begin_phase_without_batches_and_bad_images_raise():
    method = get_method_class("glow")(2, 1, **TINY)
    with pytest.raises(ValueError, match="no batches"):
        method.begin_phase("train", [])
    with pytest.raises(ValueError, match="batch\\['image'\\]"):
        method.begin_phase("train", [{"image": torch.rand(2, 2, SIZE, SIZE)}])
    with pytest.raises(ValueError, match="divisible"):
        method.begin_phase("train", [{"image": torch.rand(2, 1, 10, SIZE)}])
    ratio = get_method_class("glow-ratio")(2, 1, **TINY)
    with pytest.raises(RuntimeError, match="phase 'general' first"):
        ratio.begin_phase("in", [])
    assert math.isfinite(ratio.outlier_temperature)
