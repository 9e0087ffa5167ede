"""Glow: exact log-likelihood (brute-force Jacobians), per-scale bookkeeping, invertibility, sampling, errors."""

from __future__ import annotations

import math

import pytest
import torch
from mri_anomaly.flows import Coupling, Glow, LatentPrior, dequantize, squeeze, unsqueeze


def _perturb_couplings(glow: Glow, std: float = 0.05) -> None:
    """Couplings start as (scaled) identities; give their zero-initialised last convs random weights so they act."""
    with torch.no_grad():
        for module in glow.modules():
            if isinstance(module, Coupling):
                module.net[-1].weight.normal_(0.0, std)
                module.net[-1].bias.normal_(0.0, std)


def _tiny_glow(
    spatial_dims: int, coupling: str = "affine", size: int = 4, n: int = 6, **kwargs
) -> tuple[Glow, torch.Tensor]:
    glow = Glow(spatial_dims, 1, levels=2, steps=2, hidden_channels=8, coupling=coupling, **kwargs).double()
    x = dequantize(torch.rand((n, 1) + (size,) * spatial_dims, dtype=torch.float64), training=True)
    glow.initialize(x)
    _perturb_couplings(glow)
    return glow, x


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_log_prob_equals_brute_force_change_of_variables(spatial_dims, coupling):
    glow, x = _tiny_glow(spatial_dims, coupling)
    sample = x[:1]

    def latents(flat: torch.Tensor) -> torch.Tensor:
        out = glow(flat.reshape(sample.shape))
        return torch.cat([u.reshape(-1) for u in out.z])

    flat = sample.reshape(-1)
    jacobian = torch.autograd.functional.jacobian(latents, flat)
    assert jacobian.shape == (flat.numel(), flat.numel())
    sign, logabsdet = torch.linalg.slogdet(jacobian)
    u = latents(flat)
    log_normal = (-0.5 * u * u - 0.5 * math.log(2 * math.pi)).sum()
    expected = log_normal + logabsdet
    got = glow(sample).log_prob[0]
    assert sign != 0
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_contributions_sum_to_log_prob_and_maps_sum_to_contributions(spatial_dims):
    glow, x = _tiny_glow(spatial_dims, size=8, n=3)
    out = glow(x, return_maps=True)
    assert out.contributions.shape == (3, 2)
    torch.testing.assert_close(out.contributions.sum(1), out.log_prob, rtol=0, atol=0)
    maps = out.log_density_maps
    assert maps.shape == (3, 2) + (8,) * spatial_dims
    torch.testing.assert_close(maps.flatten(2).sum(2), out.contributions, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(glow.log_density_maps(x), maps)
    # The maps path (steps one by one) gives the same density as the plain path.
    torch.testing.assert_close(glow(x).log_prob, out.log_prob, rtol=1e-12, atol=1e-9)
    # Latents: one per scale, shapes (C_i, spatial / 2**(i+1)), dims summing to D.
    block = 2**spatial_dims
    assert out.z[0].shape == (3, block // 2) + (4,) * spatial_dims
    assert out.z[1].shape == (3, block // 2 * block) + (2,) * spatial_dims
    assert sum(glow.latent_dims(x.shape[2:])) == glow.num_dims(x.shape[2:]) == 8**spatial_dims


def test_contribution_of_a_scale_is_its_flow_logdets_plus_prior_density():
    glow, x = _tiny_glow(2, size=8, n=2)
    out = glow(x)
    # Recompute c_0 by hand from the components.
    h = squeeze(x, 2)
    h, flow_logdet = glow.chains[0](h)
    z0 = h[:, : glow.latent_channels[0]]
    prior = glow.priors[0]
    u = torch.exp(prior.log_scale) * z0 + prior.shift
    prior_logdet = prior.log_scale.sum()
    log_normal = (-0.5 * u * u - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    torch.testing.assert_close(out.contributions[:, 0], flow_logdet + prior_logdet + log_normal)
    torch.testing.assert_close(out.z[0], u)


def test_initialize_standardises_latents_and_is_not_repeated():
    glow = Glow(2, 1, levels=2, steps=2, hidden_channels=8).double()
    x = dequantize(torch.rand(64, 1, 8, 8, dtype=torch.float64), training=True)
    assert glow.initialize(x) is True
    out = glow(x)
    for u in out.z:  # per-dimension prior: every latent dimension has mean 0, std 1 over the init batch
        torch.testing.assert_close(u.mean(0), torch.zeros_like(u[0]), atol=1e-8, rtol=0)
        torch.testing.assert_close(u.std(0, unbiased=False), torch.ones_like(u[0]), atol=1e-6, rtol=0)
    before = {k: v.clone() for k, v in glow.state_dict().items()}
    assert glow.initialize(x * 0.5) is False
    for key, value in glow.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_squeeze_round_trip_and_block_layout(spatial_dims):
    x = torch.arange(2 * 3 * 4**spatial_dims, dtype=torch.float32).reshape((2, 3) + (4,) * spatial_dims)
    y = squeeze(x, spatial_dims)
    assert y.shape == (2, 3 * 2**spatial_dims) + (2,) * spatial_dims
    torch.testing.assert_close(unsqueeze(y, spatial_dims), x, rtol=0, atol=0)
    # Channel 0 holds the top-left(-front) voxel of each block.
    idx = (slice(None), 0) + (slice(0, None, 2),) * spatial_dims
    torch.testing.assert_close(y[:, 0], x[idx], rtol=0, atol=0)


def _phantom(n: int, spatial_dims: int, size: int, lesion: bool, generator: torch.Generator) -> torch.Tensor:
    """Smooth 'healthy' blobs in [0, 1]; with ``lesion``, a bright cube and heavy noise (out of distribution)."""
    axes = torch.meshgrid(*[torch.linspace(-1, 1, size)] * spatial_dims, indexing="ij")
    radius = sum(a * a for a in axes).sqrt()
    base = (0.7 * (radius < 0.8).float() + 0.2 * torch.cos(3 * axes[0])).clamp(0, 1)
    x = base.expand((n, 1) + (size,) * spatial_dims).clone()
    x = x + 0.02 * torch.randn(x.shape, generator=generator)
    if lesion:
        centre = slice(size // 4, size // 4 + size // 4)
        x[(slice(None), 0) + (centre,) * spatial_dims] = 1.0
        x = x + 0.3 * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_reconstruction_error_on_healthy_and_out_of_distribution_inputs(spatial_dims):
    generator = torch.Generator().manual_seed(1)
    size = 16 if spatial_dims == 2 else 8
    glow = Glow(spatial_dims, 1, levels=2, steps=4, hidden_channels=16)  # float32: the working precision
    healthy = dequantize(_phantom(8, spatial_dims, size, False, generator), training=True)
    glow.initialize(healthy)
    _perturb_couplings(glow, std=0.1)
    for lesion in (False, True):
        x = dequantize(_phantom(4, spatial_dims, size, lesion, generator), training=False)
        with torch.no_grad():
            out = glow(x)
            rebuilt = glow.inverse(out.z)
        assert torch.isfinite(out.log_prob).all()
        error = (rebuilt - x).abs().max().item()
        assert error < 1e-4, f"lesion={lesion}: max |x - f^-1(f(x))| = {error}"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sample_shapes_finiteness_and_temperature(spatial_dims):
    glow, _ = _tiny_glow(spatial_dims, size=8)
    generator = torch.Generator().manual_seed(0)
    samples = glow.sample(5, temperature=0.7, generator=generator)
    assert samples.shape == (5, 1) + (8,) * spatial_dims
    assert torch.isfinite(samples).all()
    # Zero temperature is the inverse of the zero latent: all samples identical.
    cold = glow.sample(3, temperature=0.0)
    torch.testing.assert_close(cold[0], cold[2], rtol=0, atol=0)
    # Sampling is the inverse of the density: encoding a sample gives back its latents.
    generator = torch.Generator().manual_seed(0)
    z = [
        torch.randn(u.shape[1:], generator=generator, dtype=torch.float64)[None] for u in glow(samples[:1]).z
    ]
    torch.testing.assert_close(glow(glow.inverse(z)).z[1], z[1], rtol=1e-7, atol=1e-7)


def test_bits_per_dim_matches_definition():
    glow, x = _tiny_glow(2, size=8, n=3)
    d = 64
    expected = (-glow(x).log_prob + d * math.log(256)) / (d * math.log(2))
    torch.testing.assert_close(glow.bits_per_dim(x), expected)


def test_bad_inputs_raise_clear_errors():
    glow, x = _tiny_glow(2, size=8)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 4"):
        glow(torch.rand(1, 1, 8, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 channels but the Glow was built with in_channels=1"):
        glow(torch.rand(1, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 spatial dims"):
        glow(torch.rand(1, 1, 8, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="initialised for"):
        glow(torch.rand(1, 1, 16, 16, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="initialize"):
        Glow(2, 1, 2, 1, 4)(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="coupling"):
        Glow(2, 1, 2, 1, 4, coupling="spline")
    with pytest.raises(ValueError, match="spatial_dims"):
        Glow(4, 1, 2, 1, 4)
    with pytest.raises(ValueError, match="steps"):
        Glow(2, 1, 2, [1, 2, 3], 4)
    with pytest.raises(ValueError, match="non-finite"):
        dequantize(torch.tensor([float("nan")]), training=False)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flow_log_det_maps_split_each_scale_into_flow_and_prior(spatial_dims):
    glow, x = _tiny_glow(spatial_dims, size=8, n=2)
    out = glow(x, return_maps=True, split_maps=True)
    assert out.flow_log_det_maps.shape == out.log_density_maps.shape
    assert glow(x).flow_log_det_maps is None and glow(x, return_maps=True).flow_log_det_maps is None
    torch.testing.assert_close(
        glow(x, return_maps=True).log_density_maps, out.log_density_maps, rtol=0, atol=0
    )
    # Recompute each scale's flow log-det and prior log-density on the plain path (whole chain at once).
    h = x
    for level, (chain, prior) in enumerate(zip(glow.chains, glow.priors)):
        h, flow_logdet = chain(squeeze(h, spatial_dims))
        z, h = h[:, : glow.latent_channels[level]], h[:, glow.latent_channels[level] :]
        _, prior_log_prob = prior(z)
        flow_part = out.flow_log_det_maps[:, level].flatten(1).sum(1)
        prior_part = (out.log_density_maps - out.flow_log_det_maps)[:, level].flatten(1).sum(1)
        torch.testing.assert_close(flow_part, flow_logdet, rtol=1e-10, atol=1e-8)
        torch.testing.assert_close(prior_part, prior_log_prob, rtol=1e-10, atol=1e-8)
        assert not torch.allclose(flow_part, torch.zeros_like(flow_part))


def test_per_channel_prior_accepts_other_sizes():
    glow, x = _tiny_glow(2, size=8, prior="per_channel")
    big = dequantize(torch.rand(2, 1, 16, 16, dtype=torch.float64), training=False)
    out = glow(big, return_maps=True)
    torch.testing.assert_close(out.log_density_maps.flatten(2).sum(2), out.contributions)
    torch.testing.assert_close(glow.inverse(out.z), big)


def test_per_dimension_prior_is_sized_by_a_loaded_state_dict():
    glow, x = _tiny_glow(3, size=8)
    fresh = Glow(3, 1, levels=2, steps=2, hidden_channels=8).double()
    assert not fresh.priors[0].is_sized
    fresh.load_state_dict(glow.state_dict())
    assert isinstance(fresh.priors[0], LatentPrior) and fresh.priors[0].is_sized
    torch.testing.assert_close(fresh(x).log_prob, glow(x).log_prob, rtol=0, atol=0)


def test_dequantize_grid_and_noise():
    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1])
    centre = dequantize(x, training=False)
    torch.testing.assert_close(centre, torch.tensor([0.5, 128.5, 255.5, 255.5, 0.5]) / 256)
    noisy = dequantize(x.expand(1000, 5), training=True)
    bins = torch.tensor([0.0, 128.0, 255.0, 255.0, 0.0]) / 256
    assert ((noisy >= bins) & (noisy < bins + 1 / 256)).all()
    assert noisy.std(0).min() > 0.25 / 256  # uniform over the bin: std = 1/sqrt(12) bin


def test_prior_shrinkage_blends_dimension_and_channel_moments():
    """Hand-computed: with n init samples and pseudo-count k, w = n / (n + k) weighs the per-dimension moments."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 2, 3, 5, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, 15).reshape(
        1, 1, 3, 5
    )
    z = z + torch.arange(15.0, dtype=torch.float64).reshape(1, 1, 3, 5)
    n, k = 4, 12.0
    w = n / (n + k)
    mean_d, std_d = z.mean(0), z.std(0, unbiased=False).clamp_min(0.05)
    flat = z.transpose(0, 1).reshape(2, -1)
    mean_c = flat.mean(1).reshape(2, 1, 1)
    std_c = flat.std(1, unbiased=False).reshape(2, 1, 1)
    expected_mean = w * mean_d + (1 - w) * mean_c
    expected_std = torch.exp(w * std_d.log() + (1 - w) * std_c.log())

    prior = LatentPrior(2, 2, "per_dimension", shrinkage=k).double()
    prior.initialize(z)
    torch.testing.assert_close(prior.log_scale.data, -expected_std.log())
    torch.testing.assert_close(prior.shift.data, -expected_mean / expected_std)

    unshrunk = LatentPrior(2, 2, "per_dimension").double()
    unshrunk.initialize(z)
    torch.testing.assert_close(unshrunk.log_scale.data, -std_d.log())
    # a huge pseudo-count gives the per-channel prior's parameters at every location
    pooled = LatentPrior(2, 2, "per_dimension", shrinkage=1e12).double()
    pooled.initialize(z)
    per_channel = LatentPrior(2, 2, "per_channel").double()
    per_channel.initialize(z)
    torch.testing.assert_close(pooled.log_scale.data, per_channel.log_scale.data.expand(2, 3, 5))
    with pytest.raises(ValueError, match="shrinkage"):
        LatentPrior(2, 2, shrinkage=-1.0)


def test_prior_shrinkage_makes_held_out_samples_more_likely_after_init():
    """Init on 4 samples of a field whose per-location means vary little: the shrunk prior generalises better."""
    g = torch.Generator().manual_seed(1)
    base = 0.2 * torch.randn(1, 2, 6, 6, generator=g)
    train, held_out = (
        base + torch.randn(4, 2, 6, 6, generator=g),
        base + torch.randn(64, 2, 6, 6, generator=g),
    )
    log_probs = {}
    for k in (0.0, 8.0):
        prior = LatentPrior(2, 2, "per_dimension", shrinkage=k)
        prior.initialize(train)
        with torch.no_grad():
            log_probs[k] = float(prior(held_out)[1].mean())
    assert log_probs[8.0] > log_probs[0.0] + 5.0  # nats per sample of 72 dimensions
