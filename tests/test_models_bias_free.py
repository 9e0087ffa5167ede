"""Bias-free encoder / decoder / autoencoder: no bias anywhere, non-affine BatchNorm, 2D and 3D shapes, errors."""

from __future__ import annotations

import pytest
import torch
from mri_anomaly.models import (
    BiasFreeAutoEncoder,
    BiasFreeDecoder,
    BiasFreeEncoder,
    DeepSAD,
    LatentNormAutoEncoder,
)
from torch import nn

# Tiny convolutions gain nothing from intra-op threads (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def _all_networks() -> list[nn.Module]:
    return [
        BiasFreeAutoEncoder(2, 1, 8, channels=(4, 8)),
        BiasFreeAutoEncoder(3, 2, 8, channels=(4, 8, 8)),
        DeepSAD(2, 1, 8),
        DeepSAD(3, 1, 8),
        LatentNormAutoEncoder(3, 1, 8).encoder,  # its decoder has biases on purpose (next test)
    ]


@pytest.mark.parametrize("net", _all_networks(), ids=lambda n: type(n).__name__)
def test_no_bias_and_no_affine_batchnorm(net: nn.Module) -> None:
    names = [name for name, _ in net.named_parameters()]
    assert names, "network has no parameters"
    assert not [n for n in names if n.endswith("bias")], "a bias parameter exists"
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.affine and m.weight is None and m.bias is None for m in norms)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            assert module.bias is None
    assert not [m for m in net.modules() if isinstance(m, (nn.Sigmoid, nn.Tanh))], "bounded activation inside"
    assert any(isinstance(m, nn.LeakyReLU) for m in net.modules())


def test_latent_norm_decoder_has_biases_and_no_norm_on_the_code() -> None:
    """Bias-free is Deep SVDD's constraint only: a bias-free decoder with BatchNorm on the code's linear map
    ignores the scale of z, and the latent-norm loss would shrink z for free."""
    decoder = LatentNormAutoEncoder(3, 1, 8).decoder
    assert decoder.fc.bias is not None and isinstance(decoder.fc_norm, nn.Identity)
    assert all(m.affine for m in decoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_encoder_maps_zero_to_zero_in_eval_mode(spatial_dims: int) -> None:
    # A bias-free network with fresh BatchNorm statistics (mean 0, var 1) is linear-homogeneous at 0.
    encoder = BiasFreeEncoder(spatial_dims, 1, 6, channels=(4, 8)).eval()
    x = torch.zeros((2, 1) + (8,) * spatial_dims)
    assert torch.equal(encoder(x), torch.zeros(2, 6))
    # ... and positively homogeneous: φ(a·x) = a·φ(x) for a > 0 (LeakyReLU, max-pool and avg-pool are).
    x = torch.rand((2, 1) + (8,) * spatial_dims)
    torch.testing.assert_close(encoder(3.0 * x), 3.0 * encoder(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "spatial_dims, shape", [(2, (3, 1, 40, 48)), (3, (2, 1, 16, 24, 8)), (2, (2, 2, 8, 16))]
)
def test_autoencoder_shapes_and_range(spatial_dims: int, shape: tuple[int, ...]) -> None:
    ae = BiasFreeAutoEncoder(spatial_dims, shape[1], 5)
    x = torch.rand(shape)
    x_hat, z = ae(x)
    assert x_hat.shape == x.shape and z.shape == (shape[0], 5)
    assert float(x_hat.detach().min()) > 0 and float(x_hat.detach().max()) < 1
    loss = ((x_hat - x) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ae.parameters())


def test_bad_inputs_name_the_problem() -> None:
    encoder = BiasFreeEncoder(2, 1, 4)
    with pytest.raises(ValueError, match="divisible by 8"):
        encoder(torch.rand(1, 1, 20, 16))
    with pytest.raises(ValueError, match="1 channel"):
        encoder(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        encoder(torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="spatial_dims"):
        BiasFreeEncoder(4, 1, 4)
    with pytest.raises(ValueError, match="kernel_size"):
        BiasFreeEncoder(2, 1, 4, kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        BiasFreeEncoder(2, 1, 4, channels=())
    with pytest.raises(ValueError, match="pooled_size"):
        BiasFreeEncoder(3, 1, 4, pooled_size=(2, 2))
    with pytest.raises(ValueError, match="spatial_size"):
        BiasFreeDecoder(2, 1, 4)(torch.rand(1, 4), (12, 16))
