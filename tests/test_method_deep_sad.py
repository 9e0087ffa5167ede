"""The ``deep-sad`` method adapter: phases, encoder copy, fixed centre, γ_l labels, toy separation, save/load.

The toy problem is a stand-in for the demo cohort: 16×16 "slices" with a smooth ellipse (healthy) and the
same with a bright disc inserted (anomalous), small enough to train in well under a second.
"""

from __future__ import annotations

import io

import pytest
import torch
from mri_anomaly.models import deep_sad_loss
from mri_anomaly.training.loaders import collate
from mri_anomaly.training.methods import get_method_class
from mri_anomaly.training.methods.deep_sad import DeepSADMethod, batch_semi_targets
from sklearn.metrics import roc_auc_score

SIZE = 16


# Tiny convolutions gain nothing from intra-op threads (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = dict(rep_dim=8, channels=[4, 8, 8], pooled_size=2)


def healthy_slices(n: int, generator: torch.Generator) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cy = 7.5 + 0.5 * torch.randn(n, 1, 1, generator=generator)
    cx = 7.5 + 0.5 * torch.randn(n, 1, 1, generator=generator)
    inside = 1 - ((yy - cy) / 6) ** 2 - ((xx - cx) / 5) ** 2
    image = 0.6 * torch.sigmoid(8 * inside) + 0.02 * torch.randn(n, SIZE, SIZE, generator=generator)
    return image.clamp(0, 1).unsqueeze(1)


def insert_disc(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One bright disc of radius 2.5 at a random place inside the ellipse of ``image`` (C, H, W)."""
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cy, cx = (4 + 8 * torch.rand(2, generator=generator)).tolist()
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 2.5**2
    out = image.clone()
    out[..., disc] = 1.0
    return out


def disc_lesions(generator: torch.Generator):
    """A ``lesion_transform`` (image -> (image, mask)) inserting :func:`insert_disc`."""

    def insert(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = insert_disc(image, generator)
        return out, (out != image).any(0, keepdim=True).float()

    return insert


def train_batch(method: DeepSADMethod, images: torch.Tensor, semi_target: torch.Tensor | None = None) -> dict:
    """A ``"train"`` batch as the loader makes it: each item through ``method.phase_sample_transform("train")``."""
    items = [
        {"image": x} if semi_target is None else {"image": x, "semi_target": int(s)}
        for x, s in zip(images, semi_target if semi_target is not None else [0] * len(images), strict=True)
    ]
    transform = method.phase_sample_transform("train")
    return collate([transform(item) if transform is not None else item for item in items])


def _train(
    method: DeepSADMethod, generator: torch.Generator, pretrain_steps: int = 60, train_steps: int = 120
) -> None:
    opt = torch.optim.Adam(method.phase_parameters("pretrain"), lr=1e-2)
    for _ in range(pretrain_steps):
        loss = method.training_loss("pretrain", {"image": healthy_slices(32, generator)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    method.begin_phase("train", [{"image": healthy_slices(64, generator)}])
    opt = torch.optim.Adam(method.phase_parameters("train"), lr=1e-3, weight_decay=1e-6)
    for _ in range(train_steps):
        loss = method.training_loss("train", train_batch(method, healthy_slices(32, generator)))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _toy_method(gamma_l: float, seed: int) -> tuple[DeepSADMethod, torch.Generator]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    method = get_method_class("deep-sad").from_config(2, 1, dict(SMALL, gamma_l=gamma_l))
    method.lesion_transform = disc_lesions(generator)
    return method, generator


def _test_scores(method: DeepSADMethod) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    normal = healthy_slices(64, generator)
    anomalous = torch.stack([insert_disc(x, generator) for x in healthy_slices(64, generator)])
    return method.score({"image": normal}).scores["deep_sad_dist"], method.score({"image": anomalous}).scores[
        "deep_sad_dist"
    ]


def test_registered_and_built_from_plain_config() -> None:
    cls = get_method_class("deep-sad")
    assert (
        cls is DeepSADMethod and cls.phases == ("pretrain", "train") and cls.score_names == ("deep_sad_dist",)
    )
    method = cls.from_config(3, 1, {"rep_dim": 4, "channels": [2, 4], "pooled_size": [1, 2, 1], "eta": 2.0})
    assert method.net.rep_dim == 4 and method.eta == 2.0


def test_phase_parameters_and_centre_is_not_a_parameter() -> None:
    method = DeepSADMethod(2, **SMALL)
    pretrain = {id(p) for p in method.phase_parameters("pretrain")}
    train = {id(p) for p in method.phase_parameters("train")}
    assert pretrain == {id(p) for p in method.autoencoder.parameters()}
    assert train == {id(p) for p in method.net.parameters()}
    assert not pretrain & train
    assert "net.center" in dict(method.named_buffers())
    assert all(p is not method.net.center for p in method.parameters())
    with pytest.raises(ValueError, match="unknown phase"):
        list(method.phase_parameters("finetune"))


def test_begin_train_copies_encoder_and_fixes_centre_on_normal_images() -> None:
    method, generator = _toy_method(0.0, seed=0)
    _train(method, generator, pretrain_steps=5, train_steps=0)
    for key, value in method.autoencoder.encoder.state_dict().items():
        assert torch.equal(method.net.encoder.state_dict()[key], value), key
    # Known anomalies (semi_target −1) are left out of the centre.
    normal = healthy_slices(6, generator)
    anomalies = torch.stack([insert_disc(x, generator) for x in healthy_slices(2, generator)])
    batch = {"image": torch.cat([normal, anomalies]), "semi_target": torch.tensor([0, 1, 0, 0, 0, 0, -1, -1])}
    method.begin_phase("train", [batch])
    expected = method.net.center.clone()
    method.net.init_center([normal])
    torch.testing.assert_close(expected, method.net.center)


def test_toy_problem_separates_and_centre_stays_fixed() -> None:
    method, generator = _toy_method(0.0, seed=0)
    with pytest.raises(RuntimeError, match="begin_phase"):
        method.training_loss("train", {"image": healthy_slices(4, generator)})
    _train(method, generator, train_steps=0)
    center = method.net.center.clone()
    assert bool((center.abs() >= 0.1).all())
    opt = torch.optim.Adam(method.phase_parameters("train"), lr=1e-3)
    for _ in range(120):
        loss = method.training_loss("train", train_batch(method, healthy_slices(32, generator)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(method.net.center, center)
    normal, anomalous = _test_scores(method)
    auroc = roc_auc_score([0] * 64 + [1] * 64, torch.cat([normal, anomalous]).numpy())
    assert auroc > 0.9, auroc
    # No hypersphere collapse: healthy scores are spread, not one constant.
    assert normal.std().item() > 1e-3 and normal.unique().numel() == 64


def test_labelled_anomalies_move_known_anomalies_away_from_centre() -> None:
    # Same seed, same pretraining; only the labelled anomalies (γ_l) differ. Measured (labels drawn per sample
    # by phase_sample_transform): mean anomaly distance 2.6 (γ_l = 0) -> 10.5 (γ_l = 0.25) at seed 0; 3.5× at
    # seed 2, but only 1.2× at seed 1 (6.8 -> 8.1: its one-class model already puts the discs far out).
    anomaly_distance = {}
    for gamma_l in (0.0, 0.25):
        method, generator = _toy_method(gamma_l, seed=0)
        _train(method, generator)
        normal, anomalous = _test_scores(method)
        anomaly_distance[gamma_l] = anomalous.mean().item()
        assert anomalous.mean() > 10 * normal.mean()
    assert anomaly_distance[0.25] > 2 * anomaly_distance[0.0], anomaly_distance


def test_gamma_l_inserts_lesions_into_the_expected_fraction() -> None:
    method, generator = _toy_method(0.25, seed=0)
    images = healthy_slices(8, generator)
    semi = torch.tensor([-1, 1, 0, 0, 0, 0, 0, 0])
    counts = torch.zeros(8)
    for _ in range(400):
        batch = train_batch(method, images, semi)
        changed = (batch["image"] != images).flatten(1).any(dim=1)
        new_labels = (batch["semi_target"] == -1) & (semi == 0)
        assert torch.equal(changed, new_labels)  # exactly the newly labelled samples got a lesion
        assert batch["semi_target"][0] == -1 and batch["semi_target"][1] == 1  # datalist labels kept
        counts += new_labels.float()
    # Each unlabelled sample is labelled with probability γ_l: 400 Bernoulli(0.25) draws each (sd ≈ 8.7).
    assert bool(((counts[2:] - 100).abs() < 45).all()) and counts[:2].sum() == 0, counts
    method.gamma_l = 0.0
    assert (
        method.phase_sample_transform("train") is None and method.phase_sample_transform("pretrain") is None
    )
    batch = train_batch(method, images)
    assert torch.equal(batch["image"], images) and not bool(batch_semi_targets(batch, 8, images.device).any())


def test_training_loss_inserts_nothing_in_the_main_process() -> None:
    """The lesions come from the loader (phase_sample_transform); training_loss only reads semi_target."""
    method, generator = _toy_method(0.5, seed=0)

    def refuse(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise AssertionError("lesion inserted in the main process")

    method.lesion_transform = refuse
    images = healthy_slices(8, generator)
    method.begin_phase("train", [{"image": images}])
    batch = {"image": images.clone(), "semi_target": torch.zeros(8, dtype=torch.long)}
    loss = method.training_loss("train", batch)
    assert torch.equal(batch["image"], images)
    with torch.no_grad():
        expected = deep_sad_loss(method.net.distance(images), torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(loss.detach(), expected)


def test_save_and_load_give_identical_scores() -> None:
    method, generator = _toy_method(0.1, seed=3)
    _train(method, generator, pretrain_steps=5, train_steps=5)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    loaded = DeepSADMethod(2, **SMALL, gamma_l=0.1)
    loaded.load_state_dict(state)
    batch = {"image": healthy_slices(8, generator)}
    assert torch.equal(
        method.score(batch).scores["deep_sad_dist"], loaded.score(batch).scores["deep_sad_dist"]
    )
    assert bool(loaded.net.center_initialized) and torch.equal(loaded.net.center, method.net.center)


def test_soft_boundary_radius_after_warmup_and_no_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    method = DeepSADMethod(2, **SMALL, objective="soft-boundary", nu=0.25, radius_warmup_steps=2)
    method.begin_phase("train", [{"image": healthy_slices(16, generator)}])
    for step in range(3):
        batch = {"image": healthy_slices(8, generator)}
        method.training_loss("train", batch)
        assert (method.net.radius.item() == 0.0) == (step < 2)
    with torch.no_grad():
        dist = method.net.distance(batch["image"])  # same train-mode batch statistics as the loss
    assert method.net.radius.item() == pytest.approx(torch.quantile(dist.sqrt(), 0.75).item(), rel=1e-5)
    with pytest.raises(ValueError, match="no labels"):
        method.training_loss(
            "train", {"image": healthy_slices(2, generator), "semi_target": torch.tensor([0, -1])}
        )
    with pytest.raises(ValueError, match="gamma_l"):
        DeepSADMethod(2, objective="soft-boundary", gamma_l=0.1)


def test_volumes_end_to_end() -> None:
    method = DeepSADMethod(3, rep_dim=4, channels=[2, 4, 4])
    batch = {"image": torch.rand(3, 1, 8, 16, 8), "semi_target": torch.tensor([0, -1, 1])}
    method.training_loss("pretrain", batch).backward()
    method.begin_phase("train", [batch])
    loss = method.training_loss("train", batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in method.phase_parameters("train"))
    out = method.score(batch)
    assert out.scores["deep_sad_dist"].shape == (3,) and out.maps == {}


def test_bad_arguments_and_batches() -> None:
    for kwargs, name in [
        ({"eta": 0}, "eta"),
        ({"eps": -1}, "eps"),
        ({"objective": "svdd"}, "objective"),
        ({"nu": 1.5}, "nu"),
        ({"gamma_l": 1.0}, "gamma_l"),
        ({"center_eps": -0.1}, "center_eps"),
        ({"gamma_l": 0.1, "in_channels": 2}, "single-channel"),
    ]:
        with pytest.raises(ValueError, match=name):
            DeepSADMethod(2, **kwargs)
    method = DeepSADMethod(2, **SMALL)
    with pytest.raises(KeyError, match="image"):
        method.training_loss("pretrain", {"img": torch.rand(2, 1, 16, 16)})
    with pytest.raises(ValueError, match="semi_target"):
        batch_semi_targets({"semi_target": torch.tensor([0, 3])}, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"batch\['image'\]"):
        method.training_loss("pretrain", {"image": torch.rand(2, 1, 16, 16, 16)})


def _brain_like_slices(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, 40, 48) ellipses with texture in [0, 1] and a zero background, like preprocessed slices."""
    yy, xx = torch.meshgrid(torch.arange(40).float(), torch.arange(48).float(), indexing="ij")
    inside = (((yy - 19.5) / 17) ** 2 + ((xx - 23.5) / 21) ** 2) < 1
    texture = 0.5 + 0.1 * torch.randn(n, 40, 48, generator=generator)
    return torch.where(inside, texture.clamp(0.05, 1), torch.zeros(())).unsqueeze(1)


def test_default_lesions_are_rand_lesion_sized_in_mm_and_seeded_by_torch() -> None:
    generator = torch.Generator().manual_seed(0)
    images = _brain_like_slices(8, generator)
    changed_voxels = {}
    for voxel_size_mm in (1.0, 4.0):
        method = DeepSADMethod(
            2, **SMALL, gamma_l=0.5, voxel_size_mm=voxel_size_mm, lesion={"kinds": ["focal"]}
        )
        torch.manual_seed(5)
        batch = train_batch(method, images)
        semi_target = batch["semi_target"]
        changed = (batch["image"] != images).flatten(1)
        assert 0 < int((semi_target == -1).sum()) < 8
        assert torch.equal(changed.any(dim=1), semi_target == -1)
        changed_voxels[voxel_size_mm] = changed.sum().item() / int((semi_target == -1).sum())
        torch.manual_seed(5)  # same torch seed -> the same lesions
        again = train_batch(method, images)
        assert torch.equal(again["image"], batch["image"])
        # the lesion mask of an item covers the voxels it changed
        lesioned, mask = method.lesion_transform(images[0])
        assert torch.equal((lesioned != images[0]).any(0), (lesioned != images[0]).any(0) & (mask[0] > 0))
    # Focal lesions of 3-7 mm radius cover ~16× fewer voxels at 4 mm than at 1 mm.
    assert changed_voxels[1.0] > 4 * changed_voxels[4.0] > 0, changed_voxels
    with pytest.raises(ValueError, match="voxel_size_mm"):
        DeepSADMethod(2, voxel_size_mm=[1.0, 2.0, 3.0])
    # An empty (background-only) slice has no room for a lesion: it stays unlabelled and unchanged.
    method = DeepSADMethod(2, **SMALL, gamma_l=0.99)
    empty = torch.zeros(4, 1, 40, 48)
    batch = train_batch(method, empty)
    assert torch.equal(batch["image"], empty) and not bool(batch["semi_target"].any())


def test_shipped_deep_sad_configs_hold_out_the_test_lesion_kinds():
    """The labelled anomalies must not come from the generator of the test anomalies they are scored on: the
    shipped Deep SAD configs label focal lesions only, so MS patterns and tumours stay unseen (reported per kind)."""
    from mri_anomaly.data.lesions import RandLesion
    from mri_anomaly.training import load_config

    for name in ("deep-sad-2d", "deep-sad-3d"):
        config = load_config(name)
        kinds = config["model"]["lesion"]["kinds"]
        assert kinds == ["focal"] and config["model"]["gamma_l"] > 0
        assert RandLesion(kinds=kinds).kinds == ("focal",)


def test_labelled_lesions_reach_their_level_above_the_slice_maximum() -> None:
    """On the median-anchored scale (brain median 0.5, clipped at 1) a FLAIR focal lesion is 1.45-1.85x the median:
    0.72-0.93, above the slice's brightest healthy voxel. Clipping to the slice's own maximum (RandLesion's default)
    made the labelled lesions fainter than the test lesions; the default clip is the preprocessed range [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    image = _brain_like_slices(1, generator)[0].clamp(max=0.6)  # brightest healthy voxel 0.6, median ~0.5
    method = DeepSADMethod(2, **SMALL, gamma_l=0.5, voxel_size_mm=4.0, lesion={"kinds": ["focal"]})
    torch.manual_seed(0)
    lesioned, mask = method.lesion_transform(image)
    inside = lesioned[mask > 0]
    assert inside.numel() > 0
    assert float(inside.max()) > 0.7 and float(lesioned.max()) <= 1.0
    assert 1.3 < float(inside.median()) / float(image[image > 0].median()) < 2.0
    # an explicit clip in the options still wins
    clipped = DeepSADMethod(
        2, **SMALL, gamma_l=0.5, voxel_size_mm=4.0, lesion={"kinds": ["focal"], "clip": "input"}
    )
    torch.manual_seed(0)
    lesioned, mask = clipped.lesion_transform(image)
    assert float(lesioned.max()) <= 0.6 + 1e-6
