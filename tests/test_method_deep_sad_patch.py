"""``deep-sad-patch``: one embedding per cell of the encoder's grid, one centre, brain-weighted cell losses, a map.

The toy slices are those of ``test_method_deep_sad.py`` (16×16 ellipses, a bright disc as the anomaly); with two
encoder levels a cell is 4×4 pixels.
"""

from __future__ import annotations

import io

import pytest
import torch
from mri_anomaly.models import DeepSAD, deep_sad_loss
from mri_anomaly.models.bias_free import BiasFreeAutoEncoder, BiasFreeEncoder
from mri_anomaly.training.methods import get_method_class
from mri_anomaly.training.methods.deep_sad import (
    DeepSADMethod,
    PatchDeepSADMethod,
    SyntheticAnomalies,
    labelled_cell_weights,
)
from sklearn.metrics import roc_auc_score
from test_method_deep_sad import _train, disc_lesions, healthy_slices, insert_disc

pytestmark = pytest.mark.usefixtures("single_thread")

PATCH = dict(rep_dim=8, channels=[4, 8])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patch_encoder_gives_one_embedding_per_cell_and_far_cells_ignore_a_change(spatial_dims: int) -> None:
    torch.manual_seed(0)
    encoder = BiasFreeEncoder(spatial_dims, 1, 5, channels=(3, 4), patch=True).eval()
    size = (32,) * spatial_dims
    x = torch.rand(2, 1, *size)
    z = encoder(x)
    assert z.shape == (2, 5, *(8,) * spatial_dims)
    # Change a 4-voxel corner: the receptive field of two 3x3 levels with pooling reaches ~10 voxels, so the
    # cells in the opposite half do not move at all (eval mode: BatchNorm uses its running statistics).
    changed = x.clone()
    changed[(..., *(slice(0, 4),) * spatial_dims)] += 1.0
    dz = (encoder(changed) - z).abs().sum(dim=1)
    near = (slice(None), *(slice(0, 1),) * spatial_dims)
    far = (slice(None), *(slice(4, None),) * spatial_dims)
    assert bool((dz[near] > 0).all())
    assert torch.equal(dz[far], torch.zeros_like(dz[far]))


def test_patch_autoencoder_reconstructs_the_input_shape_and_checks_the_code_grid() -> None:
    ae = BiasFreeAutoEncoder(2, 1, 6, channels=(4, 8), patch=True)
    x = torch.rand(3, 1, 16, 24)
    x_hat, z = ae(x)
    assert x_hat.shape == x.shape and z.shape == (3, 6, 4, 6)
    with pytest.raises(ValueError, match="grid"):
        ae.decoder(z, (16, 16))
    # A patch autoencoder's encoder is exactly DeepSAD's patch encoder (the pretrained weights copy strictly).
    net = DeepSAD(2, 1, 6, channels=(4, 8), patch=True)
    net.load_pretrained_encoder(ae)


def test_cell_weights_distance_and_centre_are_the_brain_weighted_means() -> None:
    torch.manual_seed(0)
    net = DeepSAD(2, 1, 4, channels=(2, 3), patch=True).eval()
    x = torch.rand(2, 1, 8, 8) + 0.1
    x[0, :, :, :5] = 0  # image 0: the left 5 columns are background
    x[1, :, :6, :] = 0  # image 1: only the bottom two rows are brain
    weight = net.cell_weights(x)
    torch.testing.assert_close(weight[0], torch.tensor([[0.0, 0.75], [0.0, 0.75]]))
    torch.testing.assert_close(weight[1], torch.tensor([[0.0, 0.0], [0.5, 0.5]]))
    net.init_center([x], eps=0.0)
    z = net(x)  # (2, 4, 2, 2)
    expected_center = (z * weight.unsqueeze(1)).sum(dim=(0, 2, 3)) / weight.sum()
    torch.testing.assert_close(net.center, expected_center)
    dist_map = net.distance_map(x)
    torch.testing.assert_close(dist_map, ((z - expected_center.view(1, -1, 1, 1)) ** 2).sum(dim=1))
    expected = (dist_map * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2))
    torch.testing.assert_close(net.distance(x), expected)
    # An image without brain: the plain mean over its cells (not 0 / 0).
    empty = torch.zeros(1, 1, 8, 8)
    torch.testing.assert_close(net.distance(empty), net.distance_map(empty).mean(dim=(1, 2)))
    with pytest.raises(RuntimeError, match="patch"):
        DeepSAD(2, 1, 4, channels=(2, 3)).distance_map(x)


def test_weighted_deep_sad_loss_hand_computed() -> None:
    dist = torch.tensor([1.0, 2.0, 4.0])
    semi = torch.tensor([0, 1, -1])
    weight = torch.tensor([1.0, 0.5, 0.0])
    eta, eps = 2.0, 1e-6
    expected = (1.0 * 1.0 + 0.5 * eta * (2.0 + eps)) / 1.5
    torch.testing.assert_close(
        deep_sad_loss(dist, semi, eta=eta, eps=eps, weight=weight), torch.tensor(expected)
    )
    with pytest.raises(ValueError, match="weight"):
        deep_sad_loss(dist, semi, weight=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weight"):
        deep_sad_loss(dist, semi, weight=torch.ones(2))


def test_a_synthetic_lesion_labels_only_the_cells_it_touches() -> None:
    torch.manual_seed(0)
    method = PatchDeepSADMethod(2, **PATCH, gamma_l=0.5)
    x = healthy_slices(4, torch.Generator().manual_seed(0))
    method.begin_phase("train", [{"image": x}])
    lesion = torch.zeros(4, 1, 16, 16)
    lesion[1, :, 5:7, 9:11] = 1.0  # image 1: a lesion inside the one cell (1, 2) (rows 4-7, columns 8-11)
    semi = torch.tensor([0, -1, 1, -1])  # image 3: a known anomaly with no lesion mask: all its cells
    loss = method.training_loss("train", {"image": x, "semi_target": semi, "lesion_mask": lesion})
    dist = method.net.distance_map(x)
    weight = method.net.cell_weights(x)
    target = torch.zeros(4, 4, 4, dtype=torch.long)
    target[1, 1, 2] = -1
    target[2] = 1
    target[3] = -1
    # the lesion's one cell weighs as much as its whole slice (a labelled anomaly is one sample)
    weight[1, 1, 2] = weight[1].sum()
    expected = deep_sad_loss(dist.flatten(), target.flatten(), weight=weight.flatten())
    torch.testing.assert_close(loss, expected)


def test_a_lesions_cells_together_weigh_as_much_as_their_image() -> None:
    weight = torch.tensor([[[0.0, 0.5], [1.0, 1.0]], [[1.0, 1.0], [1.0, 0.25]]])
    touched = torch.tensor([[[True, False], [True, False]], [[False, False], [False, False]]])
    out = labelled_cell_weights(weight, touched, floor=0.25)
    # image 0: the lesion's cells (brain fractions 0 -> floor 0.25, and 1.0) share the image's total 2.75 pro rata
    torch.testing.assert_close(out[0], torch.tensor([[0.55, 0.5], [2.2, 1.0]]))
    torch.testing.assert_close(out[1], weight[1])  # no lesion: brain fractions


def test_synthetic_anomalies_carry_the_lesion_mask_for_every_item() -> None:
    generator = torch.Generator().manual_seed(0)
    transform = SyntheticAnomalies(0.5, disc_lesions(generator), lesion_mask_key="lesion_mask")
    torch.manual_seed(0)
    items = [transform({"image": x}) for x in healthy_slices(40, generator)]
    lesioned = [d for d in items if d["semi_target"] == -1]
    assert 5 < len(lesioned) < 35
    for d in items:
        assert d["lesion_mask"].shape == (1, 16, 16) and d["lesion_mask"].dtype == torch.float32
        assert bool(d["lesion_mask"].any()) == (d["semi_target"] == -1)
    # Without the key the items are as before (the image-level method).
    plain = SyntheticAnomalies(0.5, disc_lesions(generator))({"image": healthy_slices(1, generator)[0]})
    assert "lesion_mask" not in plain


def _trained_patch_method(seed: int = 0, gamma_l: float = 0.0) -> PatchDeepSADMethod:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    method = get_method_class("deep-sad-patch").from_config(2, 1, dict(PATCH, gamma_l=gamma_l))
    method.lesion_transform = disc_lesions(generator)
    _train(method, generator)
    return method


def test_toy_problem_separates_and_the_map_points_at_the_disc() -> None:
    method = _trained_patch_method()
    assert isinstance(method, DeepSADMethod) and method.map_names == ("patch_dist",)
    generator = torch.Generator().manual_seed(1234)
    normal = healthy_slices(64, generator)
    healthy = healthy_slices(64, generator)
    anomalous = torch.stack([insert_disc(x, generator) for x in healthy])
    scored_normal = method.score({"image": normal})
    scored = method.score({"image": anomalous})
    assert scored.maps["patch_dist"].shape == anomalous.shape
    auroc = roc_auc_score(
        [0] * 64 + [1] * 64,
        torch.cat([scored_normal.scores["deep_sad_dist"], scored.scores["deep_sad_dist"]]).numpy(),
    )
    assert auroc > 0.9, auroc
    # The map is highest where the disc is: inside the disc above the rest of the same image, in most images.
    disc = (anomalous != healthy).any(dim=1)
    voxel_map = scored.maps["patch_dist"][:, 0]
    inside = torch.stack([m[d].mean() for m, d in zip(voxel_map, disc, strict=True)])
    outside = torch.stack(
        [m[~d & (x[0] > 0.1)].mean() for m, d, x in zip(voxel_map, disc, anomalous, strict=True)]
    )
    assert (inside > 2 * outside).float().mean() > 0.9, inside / outside


def test_patch_method_save_and_load_give_identical_scores_and_maps() -> None:
    method = _trained_patch_method(seed=1, gamma_l=0.25)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = PatchDeepSADMethod(2, **PATCH, gamma_l=0.25)
    restored.load_state_dict(torch.load(buffer))
    x = healthy_slices(8, torch.Generator().manual_seed(5))
    a, b = method.score({"image": x}), restored.score({"image": x})
    assert torch.equal(a.scores["deep_sad_dist"], b.scores["deep_sad_dist"])
    assert torch.equal(a.maps["patch_dist"], b.maps["patch_dist"])
