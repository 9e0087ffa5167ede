"""Latent-norm autoencoder: the score formula with plain norms, its gradient, the model's loss/score/map."""

from __future__ import annotations

import pytest
import torch
from mri_anomaly.models import LatentNormAutoEncoder, latent_norm_score

# Tiny convolutions gain nothing from intra-op threads (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def test_latent_norm_score_hand_computed() -> None:
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    x_hat = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]], dtype=torch.float64).view(2, 1, 2, 2)
    z = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    # plain norms: ‖(3, 4, 0, 0)‖ = 5, ‖(1, 2, 2)‖ = 3 -> 5 + 0.5·3; ‖(1, −1, 1, −1)‖ = 2, ‖0‖ = 0 -> 2
    torch.testing.assert_close(
        latent_norm_score(x, x_hat, z, beta=0.5), torch.tensor([6.5, 2.0], dtype=torch.float64)
    )
    # squared norms would give 25 + 0.5·9: make sure they are not used
    assert latent_norm_score(x, x_hat, z, beta=0.5)[0].item() != pytest.approx(29.5)


def test_latent_norm_gradient_matches_formula() -> None:
    x = torch.rand(3, 1, 4, 4, 4, dtype=torch.float64)
    x_hat = torch.rand(3, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    beta = 2.5
    latent_norm_score(x, x_hat, z, beta).mean().backward()
    residual = x - x_hat.detach()
    norm_r = residual.flatten(1).norm(dim=1).view(3, 1, 1, 1, 1)
    torch.testing.assert_close(x_hat.grad, -residual / norm_r / 3)
    torch.testing.assert_close(z.grad, beta * z.detach() / z.detach().norm(dim=1, keepdim=True) / 3)


def test_latent_norm_score_errors() -> None:
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="x_hat"):
        latent_norm_score(x, torch.rand(2, 1, 4, 5), torch.rand(2, 3), 1.0)
    with pytest.raises(ValueError, match="z must"):
        latent_norm_score(x, x, torch.rand(3, 3), 1.0)
    with pytest.raises(ValueError, match="beta"):
        latent_norm_score(x, x, torch.rand(2, 3), -1.0)
    with pytest.raises(ValueError, match="beta"):
        LatentNormAutoEncoder(2, 1, 4, beta=-0.1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_model_loss_score_and_residual(spatial_dims: int) -> None:
    model = LatentNormAutoEncoder(spatial_dims, 1, 6, beta=0.7, channels=(4, 8))
    x = torch.rand((3, 1) + (8,) * spatial_dims)
    x_hat, z = model(x)
    torch.testing.assert_close(model.loss(x), latent_norm_score(x, x_hat, z, 0.7).mean())
    score = model.score(x)
    residual = model.residual_map(x)
    assert model.training
    model.eval()
    with torch.no_grad():
        x_hat, z = model(x)
    torch.testing.assert_close(score, (x - x_hat).flatten(1).norm(dim=1) + 0.7 * z.norm(dim=1))
    torch.testing.assert_close(residual, (x - x_hat).abs())
    assert residual.shape == x.shape


def test_training_collapses_codes_of_normal_data() -> None:
    # "Targeted collapse": with β > 0 the training pulls the codes of the training data toward 0.
    torch.manual_seed(0)
    model = LatentNormAutoEncoder(2, 1, 8, beta=1.0, channels=(4, 8))
    base = torch.rand(1, 1, 16, 16)
    data = (base + 0.05 * torch.randn(32, 1, 16, 16)).clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(data).item()
    with torch.no_grad():
        z_before = model(data)[1].norm(dim=1).mean().item()
    for _ in range(60):
        loss = model.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z_after = model(data)[1].norm(dim=1).mean().item()
    assert model.loss(data).item() < 0.5 * first
    assert z_after < 0.5 * z_before


def test_decoder_output_depends_on_the_scale_of_the_code() -> None:
    """The latent term must cost something: x_hat changes when z is scaled (the bias-free decoder of Deep SAD's
    pretraining, BatchNorm right after the code's linear map, is invariant to it in training mode)."""
    from mri_anomaly.models.bias_free import BiasFreeAutoEncoder

    torch.manual_seed(0)
    z = torch.randn(6, 8)

    @torch.no_grad()
    def change(model: torch.nn.Module) -> float:
        return float((model.decoder(z, (16, 16)) - model.decoder(0.5 * z, (16, 16))).abs().max())

    latent_norm = LatentNormAutoEncoder(2, 1, 8, beta=1.0, channels=(4, 8))
    assert change(latent_norm.train()) > 0.05 and change(latent_norm.eval()) > 5e-3
    # up to BatchNorm's epsilon, halving z changes nothing in the bias-free decoder (measured 3.5e-5 vs 0.14)
    assert change(BiasFreeAutoEncoder(2, 1, 8, channels=(4, 8)).train()) < 1e-3


def test_latent_term_changes_the_ranking() -> None:
    """Trained with beta > 0 the codes of normal data shrink; an input unlike the training data keeps a larger
    code, so adding beta ||z|| reorders samples whose reconstruction errors alone rank otherwise."""
    torch.manual_seed(0)
    model = LatentNormAutoEncoder(2, 1, 8, beta=1.0, channels=(4, 8))
    base = torch.rand(1, 1, 16, 16)
    data = (base + 0.05 * torch.randn(64, 1, 16, 16)).clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = model.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = torch.cat([(base + 0.05 * torch.randn(20, 1, 16, 16)).clamp(0, 1), torch.rand(20, 1, 16, 16)])
    with torch.no_grad():
        x_hat, z = model(test)
    residual = (test - x_hat).flatten(1).norm(dim=1)
    codes = z.norm(dim=1)
    assert codes[20:].mean() > codes[:20].mean()  # the latent norm itself separates the two groups
    with_latent = residual + model.beta * codes
    assert not torch.equal(residual.argsort(), with_latent.argsort())
