"""The ``latent-norm-ae`` method adapter: config, toy separation, residual maps, save/load."""

from __future__ import annotations

import io

import pytest
import torch
from mri_anomaly.models import latent_norm_score
from mri_anomaly.training.methods import get_method_class
from mri_anomaly.training.methods.latent_norm import LatentNormMethod
from sklearn.metrics import roc_auc_score

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
