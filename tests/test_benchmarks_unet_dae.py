"""``benchmarks/unet_dae.py``: the peer U-Net denoising autoencoder built from the latent-norm config, its loss
against the clean slice, and its map and score against the latent-norm method's formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mri_anomaly.pipeline import configs_dir
from mri_anomaly.scoring.brain import brain_mask
from mri_anomaly.training import load_config
from mri_anomaly.training.methods import get_method_class
from mri_anomaly.training.methods.latent_norm import coarse_noise, signed_residual


@pytest.fixture(scope="module")
def unet_dae(load_benchmark):
    return load_benchmark("unet_dae")


def _method(unet_dae, *overrides: str):
    config = load_config(configs_dir() / "latent-norm-ae-2d.yaml", ["method=unet-dae", *overrides])
    # the class registered last under the name (another benchmark module may import this one too)
    cls = get_method_class(config["method"])
    assert cls.__name__ == "UNetDenoisingMethod"
    spacing = tuple(float(s) for s in config["preprocessing"]["spacing"])
    return cls.from_config(2, 1, config["model"], model_spacing=spacing)


def test_the_autoencoder_config_with_the_method_swapped_builds_the_peer_on_the_model_grid(unet_dae):
    method = _method(unet_dae, "model.input_noise_std=0.2")
    # the shipped 8 mm tolerance and 16 mm noise cells on the 4 mm grid: 2 and 4 voxels, not 8 and 16
    assert method.residual_tolerance == (2, 2)
    assert method.input_noise_cells == (4, 4)
    assert method.residual == "positive"
    assert type(method.net).__name__ == "DenoisingUNet"
    assert method.grid_divisor({}) == (
        8,
        "unet_channels has 4 levels (each after the first halves every axis)",
    )


def test_loss_compares_the_reconstruction_of_a_noisy_slice_with_the_clean_one(unet_dae):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 40, 48) * 0.8 + 0.1
    clean = _method(unet_dae, "model.input_noise_std=0")
    assert clean.training_loss("train", {"image": x}).item() == pytest.approx(
        F.mse_loss(clean.net(x)[0], x).item(), rel=1e-6
    )
    noisy = _method(unet_dae, "model.input_noise_std=0.2")
    noisy.load_state_dict(clean.state_dict())
    torch.manual_seed(1)
    loss = noisy.training_loss("train", {"image": x})
    torch.manual_seed(1)
    noise = coarse_noise(x.shape, (4, 4), 0.2)
    expected = F.mse_loss(clean.net(x + noise * brain_mask(x).to(x.dtype))[0], x)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(clean.training_loss("train", {"image": x}).item(), rel=1e-3)


def test_map_and_score_are_the_latent_norm_formulas_with_an_empty_code(unet_dae):
    torch.manual_seed(0)
    x = torch.rand(2, 1, 40, 48)
    x[:, :, :5] = 0  # some background
    method = _method(unet_dae, "model.input_noise_std=0.2").eval()
    out = method.score({"image": x})
    x_hat = method.net(x)[0]
    assert torch.allclose(out.maps["residual"], signed_residual(x, x_hat, "positive", (2, 2)))
    brain = brain_mask(x).to(x.dtype)
    expected = ((x - x_hat) * brain).flatten(1).norm(dim=1)
    assert torch.allclose(out.scores["latent_norm"], expected, rtol=1e-5)
