"""``benchmarks/unet_inpaint.py``: the checkerboard cells, a reconstruction that never sees the voxel it predicts,
the loss over the masked brain voxels only, and the map and score against the latent-norm method's formulas."""

from __future__ import annotations

import pytest
import torch
from mri_anomaly.pipeline import configs_dir
from mri_anomaly.scoring.brain import brain_mask
from mri_anomaly.training import load_config
from mri_anomaly.training.methods import get_method_class
from mri_anomaly.training.methods.latent_norm import signed_residual


@pytest.fixture(scope="module")
def unet_inpaint(load_benchmark):
    return load_benchmark("unet_inpaint")


def _method(unet_inpaint, *overrides: str):
    config = load_config(configs_dir() / "latent-norm-ae-2d.yaml", ["method=unet-inpaint", *overrides])
    cls = get_method_class(config["method"])
    assert cls.__name__ == "InpaintingUNetMethod"
    spacing = tuple(float(s) for s in config["preprocessing"]["spacing"])
    return cls.from_config(2, 1, config["model"], model_spacing=spacing)


def _slices() -> torch.Tensor:
    x = torch.rand(2, 1, 40, 48) * 0.8 + 0.1
    x[:, :, :6] = 0  # background above the brain
    return x


def test_the_four_phases_cover_every_voxel_once_and_a_masked_cells_neighbours_are_never_masked_with_it(
    unet_inpaint,
):
    shift = torch.tensor([[0, 0], [3, 5]])
    masks = [unet_inpaint.checkerboard_cells((2, 1, 40, 48), 4, torch.full((2,), p), shift) for p in range(4)]
    assert torch.equal(sum(masks), torch.ones(2, 1, 40, 48))
    # phase 0 without shift: the cells whose row and column index are both even, 4 voxels square
    expected = torch.zeros(40, 48)
    for row in range(0, 10, 2):
        for col in range(0, 12, 2):
            expected[4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = 1
    assert torch.equal(masks[0][0, 0], expected)
    # a shift moves the grid: voxel (h, w) lies in the cell of (h + 3, w + 5)
    assert torch.equal(masks[0][1, 0, :37, :43], masks[0][0, 0, 3:, 5:])
    # on the unshifted grid of scoring, the 8 cells around a masked cell are never masked with it
    for phase in range(4):
        cells = unet_inpaint.checkerboard_cells((1, 1, 40, 48), 4, torch.tensor([phase]))[:, :, ::4, ::4]
        masked_around = (
            torch.nn.functional.avg_pool2d(cells, 3, stride=1, padding=1, count_include_pad=True) * 9
        )
        assert torch.equal(masked_around[cells > 0], torch.ones(int(cells.sum())))


def test_the_cell_size_is_the_configs_mm_on_the_model_grid_and_the_peer_refuses_what_it_cannot_do(
    unet_inpaint,
):
    method = _method(unet_inpaint)
    assert method.cell == 4  # 16 mm on the demo's 4 mm grid
    assert _method(unet_inpaint, "model.inpaint_cell_mm=8").cell == 2
    assert method.residual_tolerance == (2, 2) and method.residual == "positive"
    assert method.net.unet.model[0].conv.unit0.conv.in_channels == 2  # the image and its mask
    with pytest.raises(ValueError, match="input_noise_std must be 0"):
        _method(unet_inpaint, "model.input_noise_std=0.2")
    cls = get_method_class("unet-inpaint")
    with pytest.raises(ValueError, match="2D slices"):
        cls(spatial_dims=3)
    with pytest.raises(ValueError, match="inpaint_cell_mm"):
        cls(spatial_dims=2, inpaint_cell_mm=0)


def test_a_voxels_reconstruction_does_not_depend_on_its_own_cell(unet_inpaint):
    torch.manual_seed(0)
    method = _method(unet_inpaint).eval()
    x = _slices()
    changed = x.clone()
    changed[:, :, 16:20, 24:28] += 0.5  # one whole 4-voxel cell (row 4, column 6)
    with torch.no_grad():
        before, after = method.reconstruct(x)[0], method.reconstruct(changed)[0]
    assert torch.equal(before[:, :, 16:20, 24:28], after[:, :, 16:20, 24:28])
    # the cell is context for the cells around it, so their reconstruction moves
    assert (before[:, :, 12:24, 20:32] - after[:, :, 12:24, 20:32]).abs().max() > 1e-4


def test_the_loss_is_the_mse_over_the_masked_brain_voxels_of_a_random_phase_and_shift(unet_inpaint):
    method = _method(unet_inpaint)
    x = _slices()
    torch.manual_seed(3)
    loss = method.training_loss("train", {"image": x})
    torch.manual_seed(3)
    phases, shift = torch.randint(0, 4, (2,)), torch.randint(0, 8, (2, 2))
    mask = unet_inpaint.checkerboard_cells(x.shape, 4, phases, shift)
    x_hat = method.net(method.masked_input(x, mask))[0]
    weight = mask * brain_mask(x).to(x.dtype)
    expected = ((x_hat - x) ** 2 * weight).sum() / weight.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # about a quarter of the brain is masked per slice, and only that part is compared
    assert 0.15 < weight.sum() / brain_mask(x).sum() < 0.35


def test_map_and_score_are_the_latent_norm_formulas_on_the_inpainted_slice(unet_inpaint):
    torch.manual_seed(0)
    method = _method(unet_inpaint).eval()
    x = _slices()
    out = method.score({"image": x})
    with torch.no_grad():
        x_hat, code = method.reconstruct(x)
    assert code.shape == (2, 0)
    assert torch.allclose(out.maps["residual"], signed_residual(x, x_hat, "positive", (2, 2)))
    brain = brain_mask(x).to(x.dtype)
    assert torch.allclose(out.scores["latent_norm"], ((x - x_hat) * brain).flatten(1).norm(dim=1), rtol=1e-5)
