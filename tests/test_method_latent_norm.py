"""The ``latent-norm-ae`` method adapter: config, toy separation, residual maps, save/load."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
import torch
from mri_anomaly.models import latent_norm_score
from mri_anomaly.training.methods import get_method_class
from mri_anomaly.training.methods.latent_norm import LatentNormMethod, signed_residual
from sklearn.metrics import roc_auc_score

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = 16
SMALL = dict(latent_dim=8, channels=[4, 8, 8], pooled_size=2)


# Tiny convolutions gain nothing from intra-op threads (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def _slices(n: int, generator: torch.Generator, lesion: bool = False) -> torch.Tensor:
    """Smooth ellipses (healthy); with ``lesion``, a bright disc of radius 2.5 inside each."""
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cy = 7.5 + 0.5 * torch.randn(n, 1, 1, generator=generator)
    cx = 7.5 + 0.5 * torch.randn(n, 1, 1, generator=generator)
    image = 0.6 * torch.sigmoid(8 * (1 - ((yy - cy) / 6) ** 2 - ((xx - cx) / 5) ** 2))
    image = image + 0.02 * torch.randn(n, SIZE, SIZE, generator=generator)
    if lesion:
        centre = 4 + 8 * torch.rand(n, 2, 1, 1, generator=generator)
        disc = (yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 <= 2.5**2
        image = torch.where(disc, torch.ones_like(image), image)
    return image.clamp(0, 1).unsqueeze(1)


def test_registered_and_built_from_plain_config() -> None:
    cls = get_method_class("latent-norm-ae")
    assert cls is LatentNormMethod and cls.score_names == ("latent_norm",) and cls.map_names == ("residual",)
    method = cls.from_config(3, 1, {"latent_dim": 4, "beta": 3.0, "channels": [2, 4]})
    assert method.net.beta == 3.0 and method.phases == ("train",)
    with pytest.raises(ValueError, match="unknown phase"):
        method.training_loss("pretrain", {"image": torch.rand(1, 1, 8, 8, 8)})


def test_toy_problem_separates_with_residual_maps() -> None:
    generator = torch.Generator().manual_seed(0)
    method = LatentNormMethod(2, **SMALL, beta=1.0)
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    for _ in range(150):
        loss = method.training_loss("train", {"image": _slices(32, generator)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_generator = torch.Generator().manual_seed(1234)
    normal = method.score({"image": _slices(64, test_generator)})
    anomalous_images = _slices(64, test_generator, lesion=True)
    anomalous = method.score({"image": anomalous_images})
    scores = torch.cat([normal.scores["latent_norm"], anomalous.scores["latent_norm"]])
    auroc = roc_auc_score([0] * 64 + [1] * 64, scores.numpy())
    assert auroc > 0.9, auroc
    assert normal.scores["latent_norm"].std().item() > 1e-4
    # The residual map is brightest on the lesion: mean residual inside the discs > 3× outside.
    residual = anomalous.maps["residual"]
    assert residual.shape == (64, 1, SIZE, SIZE)
    lesion = anomalous_images == 1.0
    assert residual[lesion].mean() > 3 * residual[~lesion].mean()


def test_score_matches_formula_and_maps_average_channels() -> None:
    method = LatentNormMethod(3, in_channels=2, latent_dim=4, beta=0.3, channels=[2, 4])
    x = torch.rand(2, 2, 8, 8, 4)
    out = method.score({"image": x})
    method.eval()
    with torch.no_grad():
        x_hat, z = method.net(x)
    torch.testing.assert_close(out.scores["latent_norm"], latent_norm_score(x, x_hat, z, 0.3))
    torch.testing.assert_close(out.maps["residual"], (x - x_hat).abs().mean(dim=1, keepdim=True))


def test_save_and_load_give_identical_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    method = LatentNormMethod(2, **SMALL)
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    for _ in range(3):
        loss = method.training_loss("train", {"image": _slices(8, generator)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    loaded = LatentNormMethod(2, **SMALL)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    batch = {"image": _slices(4, generator, lesion=True)}
    a, b = method.score(batch), loaded.score(batch)
    assert torch.equal(a.scores["latent_norm"], b.scores["latent_norm"])
    assert torch.equal(a.maps["residual"], b.maps["residual"])


def _box_range_by_loops(x_hat: torch.Tensor, radius: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum and minimum of ``x_hat`` (N, C, *spatial) over a box of ``radius`` per axis, clipped at the
    borders, by explicit loops over the voxels (the reference for the pooled version)."""
    hi, lo = torch.empty_like(x_hat), torch.empty_like(x_hat)
    for index in itertools.product(*(range(s) for s in x_hat.shape[2:])):
        box = tuple(slice(max(i - r, 0), i + r + 1) for i, r in zip(index, radius))
        values = x_hat[(slice(None), slice(None), *box)].flatten(2)
        hi[(slice(None), slice(None), *index)] = values.amax(dim=2)
        lo[(slice(None), slice(None), *index)] = values.amin(dim=2)
    return hi, lo


@pytest.mark.parametrize("radius", [(1, 2), (1, 0, 2)])
def test_tolerant_residual_matches_loops(radius: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    shape = (2, 2, 7, 6) if len(radius) == 2 else (2, 1, 5, 4, 6)
    x, x_hat = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
    hi, lo = _box_range_by_loops(x_hat, radius)
    torch.testing.assert_close(signed_residual(x, x_hat, "positive", radius), (x - hi).clamp_min(0))
    torch.testing.assert_close(signed_residual(x, x_hat, "negative", radius), (lo - x).clamp_min(0))
    torch.testing.assert_close(
        signed_residual(x, x_hat, "absolute", radius), (x - hi).clamp_min(0) + (lo - x).clamp_min(0)
    )
    # Radius 0 is the voxel-by-voxel residual of before.
    zero = (0,) * len(radius)
    assert torch.equal(signed_residual(x, x_hat, "absolute", zero), (x - x_hat).abs())
    assert torch.equal(signed_residual(x, x_hat, "positive", None), (x - x_hat).clamp_min(0))
    with pytest.raises(ValueError, match="one radius per spatial axis"):
        signed_residual(x, x_hat, "positive", (1,))


def test_tolerance_removes_a_shifted_edge_and_keeps_a_lesion() -> None:
    """Tissue (0.6) left of column 10, background (0) right of it; the reconstruction draws the edge one column
    early and misses a 3 x 3 lesion (1.0) and a dark 3 x 3 spot (0.1) inside the tissue."""
    x = torch.zeros(1, 1, 20, 20)
    x[..., :11] = 0.6
    x[..., 4:7, 2:5] = 1.0
    x[..., 13:16, 2:5] = 0.1
    x_hat = torch.zeros(1, 1, 20, 20)
    x_hat[..., :10] = 0.6
    exact = signed_residual(x, x_hat, "positive")
    assert exact[..., 10].max() == pytest.approx(
        0.6
    )  # the shifted edge is as bright as tissue in the exact map
    tolerant = signed_residual(x, x_hat, "positive", (1, 1))
    assert tolerant[..., 10].abs().max() == 0  # gone at one voxel's tolerance
    torch.testing.assert_close(tolerant[..., 4:7, 2:5], torch.full((1, 1, 3, 3), 0.4))  # the lesion stays
    assert tolerant.sum().item() == pytest.approx(9 * 0.4)  # and nothing else is left
    negative = signed_residual(x, x_hat, "negative", (1, 1))
    torch.testing.assert_close(negative[..., 13:16, 2:5], torch.full((1, 1, 3, 3), 0.5))
    assert negative.sum().item() == pytest.approx(9 * 0.5)
    torch.testing.assert_close(signed_residual(x, x_hat, "absolute", (1, 1)), tolerant + negative)


def test_tolerance_in_mm_becomes_voxels_of_the_model_grid() -> None:
    from mri_anomaly.runs import build_method
    from mri_anomaly.training.config import ConfigError, load_config

    config = load_config(CONFIGS / "latent-norm-ae-2d.yaml")
    assert config["model"]["residual_tolerance_mm"] == 8.0 and config["preprocessing"]["spacing"] == [
        4.0,
        4.0,
        4.0,
    ]
    assert build_method(config).residual_tolerance == (2, 2)  # the slice's two axes, 4 mm voxels
    config = load_config(
        CONFIGS / "latent-norm-ae-2d.yaml",
        ["preprocessing.spacing=[1.0, 2.0, 3.0]", "model.residual_tolerance_mm=5"],
    )
    assert build_method(config).residual_tolerance == (5, 2)
    config = load_config(CONFIGS / "latent-norm-ae-3d.yaml")
    assert config["model"]["residual_tolerance_mm"] == 8.0
    spacing = config["preprocessing"]["spacing"]
    assert build_method(config).residual_tolerance == tuple(round(8 / s) for s in spacing) == (2, 2, 2)
    # Runs from before the option (no key) keep the voxel-by-voxel map.
    assert LatentNormMethod(2, **SMALL).residual_tolerance == (0, 0)
    with pytest.raises(ConfigError, match="residual_tolerance_mm must be >= 0"):
        build_method(load_config(CONFIGS / "latent-norm-ae-2d.yaml", ["model.residual_tolerance_mm=-1"]))
    # The grid spacing comes from preprocessing, not from model:.
    with pytest.raises(ConfigError, match="model.model_spacing: unknown argument"):
        load_config(CONFIGS / "latent-norm-ae-2d.yaml", ["model.model_spacing=[1, 1, 1]"])


def test_coarse_noise_is_drawn_on_cells_and_upsampled() -> None:
    from mri_anomaly.training.methods.latent_norm import coarse_noise

    torch.manual_seed(0)
    fine = coarse_noise((2, 1, 12, 8), (1, 1), 0.5)
    torch.manual_seed(0)
    assert torch.equal(fine, torch.randn(2, 1, 12, 8) * 0.5)  # cells of one voxel: plain noise
    torch.manual_seed(1)
    noise = coarse_noise((2, 1, 12, 8), (4, 4), 0.5, torch.float64)
    torch.manual_seed(1)
    grid = torch.randn(2, 1, 3, 2, dtype=torch.float64) * 0.5
    expected = torch.nn.functional.interpolate(grid, size=(12, 8), mode="bilinear", align_corners=False)
    assert noise.shape == (2, 1, 12, 8) and torch.allclose(noise, expected)
    # smooth at the cell scale: neighbours differ far less than independent draws would
    assert (noise[..., 1:, :] - noise[..., :-1, :]).abs().mean() < 0.25 * noise.abs().mean()
    assert coarse_noise((1, 2, 8, 8, 8), (3, 3, 3), 1.0).shape == (1, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="one size per spatial axis"):
        coarse_noise((1, 1, 8, 8), (2, 2, 2), 1.0)


def test_input_noise_trains_against_the_clean_image_inside_the_brain() -> None:
    """With ``input_noise_std`` the net sees ``x + n`` in the brain (background untouched) and the loss compares
    its output with the clean ``x``; at 0 it is the plain autoencoder's loss, and the option reaches the config."""
    from mri_anomaly.runs import build_method
    from mri_anomaly.training.config import ConfigError, load_config
    from mri_anomaly.training.methods.latent_norm import coarse_noise

    x = _slices(4, torch.Generator().manual_seed(0))
    x[..., :2, :] = 0.0  # background rows
    plain = LatentNormMethod(2, **SMALL)
    assert plain.input_noise_std == 0.0
    assert torch.equal(plain.training_loss("train", {"image": x}), plain.net.loss(x))

    method = LatentNormMethod(
        2, **SMALL, input_noise_std=0.3, input_noise_mm=8.0, model_spacing=(4.0, 4.0, 4.0)
    )
    assert method.input_noise_cells == (2, 2)
    seen = []

    def identity(inputs):  # x̂ = the (noisy) input, z = 0: the loss is then ‖noise inside the brain‖₂
        seen.append(inputs)
        return inputs, torch.zeros(inputs.shape[0], 8)

    method.net.forward = identity
    torch.manual_seed(3)
    loss = method.training_loss("train", {"image": x})
    torch.manual_seed(3)
    noise = coarse_noise(x.shape, (2, 2), 0.3) * (x > 0)
    assert torch.allclose(seen[0], x + noise) and torch.equal(seen[0][..., :2, :], x[..., :2, :])
    assert loss == pytest.approx(torch.linalg.vector_norm(noise.flatten(1), dim=1).mean().item(), rel=1e-5)
    # scoring adds nothing: the same input gives the same map twice
    method = LatentNormMethod(2, **SMALL, input_noise_std=0.3)
    first, second = method.score({"image": x}), method.score({"image": x})
    assert torch.equal(first.maps["residual"], second.maps["residual"])

    config = load_config(CONFIGS / "latent-norm-ae-2d.yaml", ["model.input_noise_std=0.2"])
    built = build_method(config)
    assert built.input_noise_std == 0.2 and built.input_noise_cells == (4, 4)  # 16 mm at 4 mm voxels
    assert build_method(load_config(CONFIGS / "latent-norm-ae-2d.yaml")).input_noise_std == 0.0
    with pytest.raises(ConfigError, match="input_noise_std must be >= 0"):
        build_method(load_config(CONFIGS / "latent-norm-ae-2d.yaml", ["model.input_noise_std=-0.1"]))


def test_slice_context_reads_the_neighbours_and_reconstructs_the_centre_slice() -> None:
    torch.manual_seed(0)
    method = LatentNormMethod(2, in_channels=2, slice_context=1, beta=0.5, **SMALL)
    assert method.net.in_channels == 6 and method.net.out_channels == 2
    x = torch.rand(3, 6, SIZE, SIZE)
    centre = x[:, 2:4]
    out = method.score({"image": x})
    method.eval()
    with torch.no_grad():
        x_hat, z = method.net(x)
    assert x_hat.shape == centre.shape
    # loss, score and map compare x_hat with the centre slice's two channels, never with the neighbours
    brain = (centre > 0).any(dim=1, keepdim=True).float()
    torch.testing.assert_close(
        out.scores["latent_norm"], latent_norm_score(centre * brain, x_hat * brain, z, 0.5)
    )
    torch.testing.assert_close(out.maps["residual"], (centre - x_hat).abs().mean(dim=1, keepdim=True))
    method.train()
    torch.testing.assert_close(
        method.training_loss("train", {"image": x}), method.net.loss(x, centre), rtol=0, atol=0
    )
    # the neighbours reach the reconstruction: another slice above changes x_hat of the same centre
    other = x.clone()
    other[:, 4:6] = torch.rand(3, 2, SIZE, SIZE)
    method.eval()
    with torch.no_grad():
        assert not torch.allclose(method.net(other)[0], x_hat)
    with pytest.raises(ValueError, match=r"\(N, 6, \*spatial\).*2 channel\(s\) x 3 slices"):
        method.score({"image": centre})
    with pytest.raises(ValueError, match="pass target"):
        method.net.loss(x)
    with pytest.raises(ValueError, match="slice_context is for 2D"):
        LatentNormMethod(3, slice_context=1, **SMALL)
    with pytest.raises(ValueError, match="whole number"):
        LatentNormMethod(2, slice_context=-1, **SMALL)
    # built from a config's slices.context; a method without 2.5D inputs refuses one
    built = get_method_class("latent-norm-ae").from_config(2, 1, dict(SMALL), slice_context=2)
    assert built.slice_context == 2 and built.net.in_channels == 5
    with pytest.raises(ValueError, match="takes no neighbouring slices"):
        get_method_class("intensity").from_config(2, 1, {}, slice_context=1)


def _ellipses(centres: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, 1, SIZE, SIZE) smooth ellipses centred at ``centres`` (N, 2), with a little noise."""
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cy, cx = centres[:, 0, None, None], centres[:, 1, None, None]
    image = 0.6 * torch.sigmoid(8 * (1 - ((yy - cy) / 5) ** 2 - ((xx - cx) / 4) ** 2))
    return (image + 0.02 * torch.randn(image.shape, generator=generator)).clamp(0, 1).unsqueeze(1)


def test_only_a_stack_model_finds_a_slice_that_breaks_from_its_neighbours() -> None:
    """The 2.5D property: anatomy continues from slice to slice, so a model given the neighbours predicts the
    centre from them. A centre slice shifted from its neighbours looks healthy on its own (drawn as the healthy
    ones are, the plain model scores it near chance) but not beside them."""

    def stacks(n: int, generator: torch.Generator, shifted: bool = False) -> torch.Tensor:
        centres = 7.5 + 1.5 * torch.randn(n, 2, generator=generator)
        offset = torch.zeros(n, 2)
        if shifted:
            offset[:, 0] = 3.0 * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        return torch.cat(
            [
                _ellipses(centres - offset, generator),
                _ellipses(centres, generator),
                _ellipses(centres - offset, generator),
            ],
            dim=1,
        )

    aurocs = {}
    for context in (0, 1):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        method = LatentNormMethod(2, slice_context=context, **SMALL, beta=1.0)
        centre_only = slice(1, 2) if context == 0 else slice(0, 3)
        opt = torch.optim.Adam(method.parameters(), lr=1e-2)
        for _ in range(200):
            loss = method.training_loss("train", {"image": stacks(32, generator)[:, centre_only]})
            opt.zero_grad()
            loss.backward()
            opt.step()
        test_generator = torch.Generator().manual_seed(1234)
        normal = method.score({"image": stacks(64, test_generator)[:, centre_only]})
        anomalous = method.score({"image": stacks(64, test_generator, shifted=True)[:, centre_only]})
        scores = torch.cat([normal.scores["latent_norm"], anomalous.scores["latent_norm"]])
        aurocs[context] = roc_auc_score([0] * 64 + [1] * 64, scores.numpy())
    assert aurocs[1] > 0.85 and aurocs[0] < 0.7, aurocs
