"""``deep-sad``: Deep SAD (Ruff et al., ICLR 2020), and Deep SVDD (ICML 2018) when there are no labels.

Phases:

* ``"pretrain"``: a bias-free autoencoder (the Deep SAD encoder + a mirrored decoder) is trained with the
  mean squared error on the training images as they come (labelled ones included, as in the reference;
  no synthetic lesions).
* ``"train"``: :meth:`DeepSADMethod.begin_phase` copies the pretrained encoder into φ (strictly, every
  tensor) and sets the centre c to the mean embedding (eval mode) of the training images that are not
  known anomalies, ``|c_k| < center_eps`` pushed to ``±center_eps``; c then stays fixed. Each batch is
  trained with :func:`~mri_anomaly.models.deep_sad_loss` (or the soft-boundary loss).

Labelled samples come from two places:

* the batch's ``semi_target`` (the datalist's ``semi_target``: +1 known normal, −1 known anomaly, 0 or
  absent = unlabelled);
* synthetic anomalies, when ``gamma_l > 0``: every unlabelled training item of the ``"train"`` phase, with
  probability ``gamma_l`` (independently), gets a synthetic lesion (``mri_anomaly.data.lesions.RandLesion``)
  and ``semi_target = −1`` (and ``label = 1``, its mask united with the lesion's). So, on unlabelled
  training data, **γ_l is the expected fraction of every training batch that is a labelled (synthetic)
  anomaly** — the paper's ``γ_l = m / (n + m)`` (the count per batch is binomial). Unlike the paper, whose m
  labelled anomalies are a fixed set, the lesions are new at every step (random place, size, kind). The
  insertion is :meth:`DeepSADMethod.phase_sample_transform`: it runs in the DataLoader workers on each item,
  seeded per sample (:mod:`mri_anomaly.training.loaders`), so the batches are the same for any
  ``num_workers`` and on resume; ``training_loss`` only reads the batch's ``semi_target``.

The score is ``deep_sad_dist``, the squared distance ``‖φ(x) − c‖²`` (higher = more anomalous).

``deep-sad-patch`` (:class:`PatchDeepSADMethod`) is the same method with one embedding per cell of the
encoder's last grid and one centre (:class:`~mri_anomaly.models.DeepSAD` with ``patch``): the loss is the mean
of the per-cell terms weighted by each cell's brain fraction, a synthetic lesion labels only the cells it
touches (the others of that image stay unlabelled) and those cells together weigh as much as their image
(:func:`labelled_cell_weights`: a labelled anomaly is one sample, as in the paper), and scoring adds the voxel
map ``patch_dist`` (the cell distances interpolated to the image grid); ``deep_sad_dist`` is their brain-weighted
mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from mri_anomaly.data import plain_tensor
from mri_anomaly.models import DeepSAD, deep_sad_loss, soft_boundary_loss, soft_boundary_radius
from mri_anomaly.training.methods.base import (
    AnomalyMethod,
    Batch,
    BatchScores,
    batch_images,
    encoder_grid_divisor,
    register_method,
)

__all__ = [
    "DeepSADMethod",
    "PatchDeepSADMethod",
    "SyntheticAnomalies",
    "batch_semi_targets",
    "labelled_cell_weights",
]

_OBJECTIVES = ("one-class", "soft-boundary")

_LESION_MASK_KEY = "lesion_mask"

LesionTransform = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``image (1, *spatial) -> (lesioned image, lesion mask (1, *spatial))``."""


def batch_semi_targets(batch: Batch, n: int, device: torch.device) -> torch.Tensor:
    """The batch's ``semi_target`` as an int64 (N,) tensor, zeros (all unlabelled) when absent.

    Raises:
        ValueError: if it has the wrong length or values outside {−1, 0, 1}.
    """
    if batch.get("semi_target") is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    semi_target = torch.as_tensor(batch["semi_target"]).reshape(-1).to(device=device, dtype=torch.long)
    if semi_target.numel() != n:
        raise ValueError(
            f"batch['semi_target'] must have {n} values (one per image), got {semi_target.numel()}"
        )
    if not bool(((semi_target >= -1) & (semi_target <= 1)).all()):
        raise ValueError(
            f"batch['semi_target'] values must be -1, 0 or 1, got {semi_target.unique().tolist()}"
        )
    return semi_target


class _RandLesionInsert:
    """One ``RandLesion`` insertion into an image (C=1, *spatial) of the given voxel size: ``image -> (image, mask)``.

    A class rather than a closure, so that spawned DataLoader workers can unpickle it.
    """

    def __init__(self, options: dict[str, Any], voxel_size_mm: tuple[float, ...]) -> None:
        from mri_anomaly.data.lesions import RandLesion

        # Real MS lesion patterns need masks on the image grid, which a training item does not have. Clipped to
        # the preprocessed range [0, 1], not to the slice's own maximum: with the median at 0.5 a slice's brightest
        # healthy voxel is ~0.63, and a lesion at 1.45-1.85x the median clipped there would be fainter than the
        # test lesions (inserted before preprocessing) by about a quarter (~1.26x against 1.45-1.85x the median).
        self.lesion = RandLesion(prob=1.0, **{"kinds": ("focal", "tumour"), "clip": (0.0, 1.0), **options})
        # RandLesion sizes lesions in mm from the image's affine; slices carry plain tensors.
        self.affine = torch.diag(torch.tensor([*voxel_size_mm, 1.0], dtype=torch.float64))

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.data import MetaTensor

        # Seeded from torch's generator, which the loader seeds per sample: any worker, and a resumed run, draws
        # the same lesion for the same sample (MONAI's own RandomState would not be seeded by anyone).
        self.lesion.set_random_state(int(torch.randint(0, 2**31 - 1, ()).item()))
        plain = plain_tensor(image)
        lesioned, mask = self.lesion(MetaTensor(plain.detach().cpu(), affine=self.affine))
        return plain_tensor(lesioned).to(plain), plain_tensor(mask)


class SyntheticAnomalies:
    """Deep SAD's labelled synthetic anomalies, an ``item -> item`` transform of the ``"train"`` items.

    An unlabelled item (``semi_target`` 0 or absent) becomes, with probability ``gamma_l``, a labelled anomaly:
    ``image`` gets a lesion from ``lesion_transform``, ``semi_target = -1``, and where the item has them
    ``label = 1``, ``mask`` united with the lesion's mask, ``has_mask = 1``, ``slice_label = 1``. An item with
    no room for a lesion (``ValueError`` "... empty ...", e.g. an empty slice) stays unlabelled. Every item
    leaves with a ``semi_target`` (items of a batch must have the same keys). Randomness: torch's global RNG
    only (seeded per sample by the loader).

    Args:
        gamma_l: probability, in (0, 1).
        lesion_transform: ``image (1, *spatial) -> (image, mask (1, *spatial))``.
        lesion_mask_key: when set, every item leaves with this key: the inserted lesion's mask (1, *spatial)
            float, zeros for an item without one (the patch variant labels the cells a lesion touches).
    """

    def __init__(
        self, gamma_l: float, lesion_transform: LesionTransform, lesion_mask_key: str | None = None
    ) -> None:
        self.gamma_l = float(gamma_l)
        self.lesion_transform = lesion_transform
        self.lesion_mask_key = lesion_mask_key

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        d = dict(item)
        semi_target = int(d.get("semi_target") or 0)
        d["semi_target"] = semi_target
        if self.lesion_mask_key is not None:
            d[self.lesion_mask_key] = torch.zeros(
                (1, *plain_tensor(d["image"]).shape[1:]), dtype=torch.float32
            )
        if semi_target != 0 or float(torch.rand(())) >= self.gamma_l:
            return d
        image = d["image"]
        try:
            lesioned, lesion_mask = self.lesion_transform(image)
        except ValueError as err:
            if "empty" not in str(err):  # RandLesion: "the brain region is empty, cannot place a lesion"
                raise
            return d  # no brain to put a lesion in (an edge slice): the item stays unlabelled
        # keep the item's tensor types (a volume's MetaTensor keeps its metadata)
        d["image"] = image.clone().copy_(plain_tensor(lesioned).reshape(image.shape))
        d["semi_target"] = -1
        if self.lesion_mask_key is not None:
            d[self.lesion_mask_key] = plain_tensor(lesion_mask).float().reshape(d[self.lesion_mask_key].shape)
        if isinstance(d.get("mask"), torch.Tensor):
            mask = d["mask"]
            union = torch.maximum(
                plain_tensor(mask).float(), plain_tensor(lesion_mask).reshape(mask.shape).float()
            )
            d["mask"] = mask.clone().copy_(union)
        for key in ("label", "has_mask", "slice_label"):
            if key in d:
                d[key] = 1
        return d


@register_method
class DeepSADMethod(AnomalyMethod):
    """Deep SAD / Deep SVDD as an :class:`AnomalyMethod` (see the module docstring for phases and labels).

    Args:
        spatial_dims: 2 (slices (N, C, H, W)) or 3 (volumes (N, C, H, W, D)); sizes divisible by
            ``2 ** len(channels)``.
        in_channels: image channels.
        rep_dim: embedding size of φ.
        channels: encoder channels per level (each level halves the size).
        kernel_size: odd convolution kernel size.
        pooled_size: adaptive-pool grid before the linear layer (int or one per spatial dim).
        negative_slope: LeakyReLU slope.
        eta: weight η of the labelled terms (> 0).
        eps: ε inside ``(dist + ε)^(±1)`` (> 0).
        center_eps: centre coordinates with smaller magnitude are pushed to ``±center_eps``.
        objective: ``"one-class"`` (Deep SVDD / Deep SAD) or ``"soft-boundary"`` (Deep SVDD with radius R;
            takes no labels).
        nu: ν of the soft-boundary objective, in (0, 1].
        radius_warmup_steps: soft-boundary: R stays 0 for this many ``"train"`` steps, then is set on every
            batch to the (1 − ν)-quantile of the batch's distances (as in Deep SVDD's warm-up epochs).
        gamma_l: probability that an unlabelled ``"train"`` item becomes a synthetic labelled anomaly, in [0, 1)
            (on unlabelled data: the expected fraction of each ``"train"`` batch that is one).
        lesion: keyword arguments of ``mri_anomaly.data.lesions.RandLesion`` for the synthetic anomalies
            (default kinds ``["focal", "tumour"]``; e.g. ``{"contrast": "t1"}`` for hypointense lesions).
        voxel_size_mm: voxel size of the model grid (one value or one per spatial dim), so that synthetic
            lesions have their sizes in mm (the demo preprocessing resamples to 4 mm).

    Raises:
        ValueError: for an argument out of range, naming it.
    """

    name = "deep-sad"
    phases = ("pretrain", "train")
    score_names = ("deep_sad_dist",)
    map_names = ()
    patch: ClassVar[bool] = False
    """One embedding per cell of the encoder's grid (:class:`PatchDeepSADMethod`)."""

    grid_divisor = classmethod(encoder_grid_divisor)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        rep_dim: int = 32,
        channels: list[int] | tuple[int, ...] = (16, 32, 64),
        kernel_size: int = 3,
        pooled_size: int | list[int] = 4,
        negative_slope: float = 0.01,
        eta: float = 1.0,
        eps: float = 1e-6,
        center_eps: float = 0.1,
        objective: str = "one-class",
        nu: float = 0.1,
        radius_warmup_steps: int = 100,
        gamma_l: float = 0.0,
        lesion: dict[str, Any] | None = None,
        voxel_size_mm: float | list[float] = 4.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        if eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if center_eps < 0:
            raise ValueError(f"center_eps must be >= 0, got {center_eps}")
        if objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
        if not 0 < nu <= 1:
            raise ValueError(f"nu must be in (0, 1], got {nu}")
        if not 0 <= gamma_l < 1:
            raise ValueError(f"gamma_l must be in [0, 1), got {gamma_l}")
        if gamma_l > 0 and in_channels != 1:
            raise ValueError(
                f"gamma_l > 0 inserts synthetic lesions into single-channel images; in_channels is {in_channels}"
            )
        if objective == "soft-boundary" and gamma_l > 0:
            raise ValueError(
                "objective 'soft-boundary' is one-class Deep SVDD and takes no labels: set gamma_l = 0"
            )
        self.eta = float(eta)
        self.eps = float(eps)
        self.center_eps = float(center_eps)
        self.objective = objective
        self.nu = float(nu)
        self.radius_warmup_steps = int(radius_warmup_steps)
        self.gamma_l = float(gamma_l)
        self.lesion_options = dict(lesion or {})
        sizes = (
            [float(voxel_size_mm)] * spatial_dims
            if isinstance(voxel_size_mm, (int, float))
            else voxel_size_mm
        )
        if len(sizes) != spatial_dims or any(float(v) <= 0 for v in sizes):
            raise ValueError(
                f"voxel_size_mm must be a positive number or {spatial_dims} of them, got {voxel_size_mm}"
            )
        self.voxel_size_mm = tuple(float(v) for v in sizes)
        self.net = DeepSAD(
            spatial_dims,
            in_channels,
            rep_dim,
            channels=tuple(channels),
            kernel_size=kernel_size,
            pooled_size=pooled_size,
            negative_slope=negative_slope,
            patch=self.patch,
        )
        self.autoencoder: nn.Module = self.net.autoencoder()
        self.register_buffer("train_steps", torch.tensor(0, dtype=torch.long))
        self._lesion_transform: LesionTransform | None = None

    @property
    def device(self) -> torch.device:
        return self.net.center.device

    @property
    def lesion_transform(self) -> LesionTransform:
        """Inserts one synthetic lesion into one image (1, *spatial) and returns ``(image, mask (1, *spatial))``;
        ``RandLesion(**lesion)`` (sized with ``voxel_size_mm``, seeded from torch's RNG) unless set.

        It may raise ``ValueError`` (with "empty" in the message) for an image with no room for a lesion (e.g.
        an empty slice): that sample then stays unlabelled. It runs in the DataLoader workers: draw randomness
        from the global torch/NumPy RNGs only (seeded per sample), and make it picklable for spawned workers.
        """
        if self._lesion_transform is None:
            self._lesion_transform = _RandLesionInsert(self.lesion_options, self.voxel_size_mm)
        return self._lesion_transform

    @lesion_transform.setter
    def lesion_transform(self, transform: LesionTransform) -> None:
        self._lesion_transform = transform

    def phase_sample_transform(self, phase: str) -> SyntheticAnomalies | None:
        """``"train"`` with ``gamma_l > 0``: :class:`SyntheticAnomalies` (each unlabelled item becomes a labelled
        synthetic anomaly with probability γ_l, in the DataLoader workers); otherwise None."""
        self.check_phase(phase)
        if phase != "train" or self.gamma_l == 0:
            return None
        return SyntheticAnomalies(
            self.gamma_l, self.lesion_transform, _LESION_MASK_KEY if self.patch else None
        )

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        """``"pretrain"``: the autoencoder's parameters; ``"train"``: those of φ."""
        self.check_phase(phase)
        module = self.autoencoder if phase == "pretrain" else self.net
        return (p for p in module.parameters() if p.requires_grad)

    def begin_phase(self, phase: str, batches: Iterable[Batch]) -> None:
        """``"train"``: copy the pretrained encoder into φ and fix the centre on ``batches``."""
        self.check_phase(phase)
        if phase == "pretrain":
            return
        self.net.load_pretrained_encoder(self.autoencoder)

        def normal_images() -> Iterator[torch.Tensor]:
            for batch in batches:
                x = batch_images(batch, self.spatial_dims, self.in_channels, self.device)
                keep = batch_semi_targets(batch, x.shape[0], self.device) != -1
                if bool(keep.any()):
                    yield x[keep]

        self.net.init_center(normal_images(), eps=self.center_eps)

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """``"pretrain"``: autoencoder MSE; ``"train"``: Deep SAD (or soft-boundary Deep SVDD) loss."""
        self.check_phase(phase)
        if phase == "pretrain":
            x = batch_images(batch, self.spatial_dims, self.in_channels, self.device)
            x_hat, _ = self.autoencoder(x)
            return F.mse_loss(x_hat, x)
        if not bool(self.net.center_initialized):
            raise RuntimeError("the centre is not initialised: begin_phase('train', batches) must run first")
        # Synthetic labelled anomalies (γ_l) were inserted in the loader (phase_sample_transform).
        x = batch_images(batch, self.spatial_dims, self.in_channels, self.device)
        semi_target = batch_semi_targets(batch, x.shape[0], self.device)
        self.train_steps += 1
        if self.patch and self.objective == "one-class":
            return self._patch_loss(x, semi_target, batch.get(_LESION_MASK_KEY))
        dist = self.net.distance(x)
        if self.objective == "one-class":
            return deep_sad_loss(dist, semi_target, eta=self.eta, eps=self.eps)
        if bool((semi_target != 0).any()):
            raise ValueError(
                "objective 'soft-boundary' takes no labels, but the batch has non-zero semi_target"
            )
        loss = soft_boundary_loss(dist, self.net.radius, self.nu)
        if int(self.train_steps) > self.radius_warmup_steps:
            self.net.radius.copy_(soft_boundary_radius(dist, self.nu))
        return loss

    def _patch_loss(
        self, x: torch.Tensor, semi_target: torch.Tensor, lesion_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Deep SAD loss over cells, weighted by brain fraction: an image's label reaches all its cells, except
        a synthetic lesion's (``lesion_mask`` given, non-empty), which labels only the cells it touches, weighted
        by :func:`labelled_cell_weights`."""
        dist = self.net.distance_map(x)  # (N, *grid)
        weight = self.net.cell_weights(x)
        cell_target = semi_target.view(-1, *([1] * self.spatial_dims)).expand_as(dist).clone()
        if lesion_mask is not None:
            lesion = plain_tensor(lesion_mask).to(device=x.device, dtype=x.dtype)
            touched = self.net.cell_weights(lesion) > 0  # (N, *grid): the lesion's cells
            has_lesion = touched.flatten(1).any(dim=1).view(-1, *([1] * self.spatial_dims))
            cell_target = torch.where(has_lesion & ~touched, torch.zeros_like(cell_target), cell_target)
            weight = labelled_cell_weights(weight, touched, 1.0 / self.net.encoder.size_divisor)
        return deep_sad_loss(
            dist.flatten(), cell_target.flatten(), eta=self.eta, eps=self.eps, weight=weight.flatten()
        )

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        """``deep_sad_dist`` (N,): squared distance of φ(x) to c (patch: brain-weighted mean over cells, and the
        map ``patch_dist`` (N, 1, *spatial), the cell distances interpolated to the image grid)."""
        x = batch_images(batch, self.spatial_dims, self.in_channels, self.device)
        if not self.patch:
            return BatchScores(scores={"deep_sad_dist": self.net.score(x)})
        was_training = self.net.training
        self.net.eval()
        try:
            dist_map = self.net.distance_map(x)
            dist = self.net.cell_mean(dist_map, x)  # = net.distance(x), without running φ twice
        finally:
            self.net.train(was_training)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        voxel_map = F.interpolate(dist_map.unsqueeze(1), size=x.shape[2:], mode=mode, align_corners=False)
        return BatchScores(scores={"deep_sad_dist": dist}, maps={"patch_dist": voxel_map})


def labelled_cell_weights(weight: torch.Tensor, touched: torch.Tensor, floor: float) -> torch.Tensor:
    """The patch loss's cell weights (N, *grid) with synthetic lesions: a lesion's cells (``touched``, bool like
    ``weight``) together weigh as much as their whole image (its cells' brain fractions, lesion cells counted at
    least ``floor`` even where the lesion spills out of the brain mask); other cells keep their brain fraction.

    So a labelled anomaly counts as one sample, as in Ruff et al.: with γ_l = 0.05 about 5 % of the loss's weight
    is labelled. Weighted by brain fraction alone, the few cells a lesion touches carried 0.5 % of it, and Deep SAD
    trained nearly the same model as Deep SVDD (``docs/benchmarks/deep_sad_patch.md``)."""
    weight = torch.where(touched, weight.clamp_min(floor), weight)
    dims = tuple(range(1, weight.ndim))
    image_total = weight.sum(dim=dims, keepdim=True)
    lesion_total = (weight * touched).sum(dim=dims, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return torch.where(touched, weight * image_total / lesion_total, weight)


@register_method
class PatchDeepSADMethod(DeepSADMethod):
    """``deep-sad-patch``: Deep SAD / Deep SVDD with one embedding per cell of the encoder's last grid and one
    centre (module docstring); same arguments as :class:`DeepSADMethod`. Scores ``deep_sad_dist`` and the map
    ``patch_dist``. ``pooled_size`` is unused; the soft-boundary objective uses the per-image mean distance."""

    name = "deep-sad-patch"
    map_names = ("patch_dist",)
    patch = True
