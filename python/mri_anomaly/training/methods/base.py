"""The contract between the trainer and a method (Glow, Deep SAD/SVDD, latent-norm autoencoder).

A method is an ``nn.Module`` that owns its networks, so a checkpoint is ``method.state_dict()``.
The :class:`~mri_anomaly.training.Trainer` runs the method's phases in order (for example
``("pretrain", "train")`` for Deep SAD, ``("general", "in")`` for a Glow likelihood ratio); per phase
it calls :meth:`begin_phase` once (data-dependent init, centre, weight copies), then
:meth:`training_loss` on each batch and steps an optimiser over :meth:`phase_parameters`.
Scoring calls :meth:`score`; every score is oriented higher = more anomalous.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

Batch = dict[str, Any]
"""A collated batch from the datasets: ``image`` (N, C, *spatial) float32 in [0, 1], and where known
``label`` (N,), ``semi_target`` (N,) in {-1, 0, 1}, ``mask`` (N, 1, *spatial), ``subject_id`` list."""


@dataclass
class BatchScores:
    """Per-sample scores ``{name: (N,)}`` and optional maps ``{name: (N, 1, *spatial)}`` on the model grid."""

    scores: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


class AnomalyMethod(nn.Module):
    """Base class of every method. Subclasses set ``name``, ``phases`` and implement the hooks.

    Args:
        spatial_dims: 2 (axial slices) or 3 (volumes).
        in_channels: image channels.
    """

    name: ClassVar[str] = "base"
    phases: ClassVar[tuple[str, ...]] = ("train",)
    score_names: ClassVar[tuple[str, ...]] = ()
    map_names: ClassVar[tuple[str, ...]] = ()
    slice_statistic: ClassVar[str] = "top200mm3"
    """The statistic of each voxel map over a slice's scored region (the brain minus the rim the map scores
    leave out) that makes its slice profile ``<map>_slice_<statistic>``: ``"top<V>mm3"``, ``"q<percent>"`` or
    ``"mean"`` (see :func:`mri_anomaly.scoring.brain.slice_brain_statistic`). The mean of the slice's highest
    200 mm³, like the volume's ``<map>_top200mm3``: a lesion fills a small part of a slice, a mean over the slice
    dilutes it (the 3D Glow's ``nll`` map on the demo's test slices: slice AUROC 0.61 as a mean, 0.94 as the 99th
    percentile, raw), and a percentile's rank moves with the slice's brain area (the 99th percentile is about the 3rd
    highest voxel of a slice of 200 brain voxels and the 9th of one of 800), where a fixed volume does not. Against
    ``"q99"`` it lifts the autoencoder's residual and the image on the demo's test slices (0.73 -> 0.80) and moves
    the other maps by -0.003 to +0.009 (``docs/benchmarks/slice_statistic.md``)."""

    def __init__(self, spatial_dims: int, in_channels: int = 1) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels

    @classmethod
    def grid_divisor(cls, model: Mapping[str, Any]) -> tuple[int, str]:
        """What the network needs of the model grid, for the ``model:`` keyword arguments of a config.

        Returns:
            ``(d, reason)``: every spatial size the network sees (2D: the slice's two axes; 3D: all three)
            must be a multiple of ``d``; ``reason`` names the argument that asks for it. Default ``(1, "")``.
        """
        return 1, ""

    @classmethod
    def model_argument(cls, model: Mapping[str, Any], name: str) -> Any:
        """``model[name]``, else the default of ``__init__``'s parameter ``name``."""
        if name in model:
            return model[name]
        return inspect.signature(cls.__init__).parameters[name].default

    @classmethod
    def from_config(
        cls,
        spatial_dims: int,
        in_channels: int,
        params: dict[str, Any],
        model_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        slice_context: int = 0,
    ) -> AnomalyMethod:
        """Build from the ``model`` section of a validated config (keyword arguments of ``__init__``).

        A method whose ``__init__`` takes ``model_spacing`` also gets the model grid's voxel size in mm (the
        config's ``preprocessing.spacing``, like ``spatial_dims`` not a ``model:`` key), to turn sizes in mm into
        voxels. ``slice_context`` (the config's ``slices.context``, 2.5D inputs) goes to a method whose
        ``__init__`` takes it; any other method refuses a non-zero one.

        Raises:
            ValueError: ``slice_context`` > 0 for a method without 2.5D inputs."""
        accepted = inspect.signature(cls.__init__).parameters
        if "model_spacing" in accepted:
            params = {**params, "model_spacing": tuple(float(s) for s in model_spacing)}
        if cls.takes_slice_context():
            params = {**params, "slice_context": int(slice_context)}
        elif slice_context:
            raise ValueError(f"method {cls.name!r} takes no neighbouring slices (slices.context must be 0)")
        return cls(spatial_dims=spatial_dims, in_channels=in_channels, **params)

    @classmethod
    def takes_slice_context(cls) -> bool:
        """Whether the method takes 2.5D inputs (the config's ``slices.context`` > 0)."""
        return "slice_context" in inspect.signature(cls.__init__).parameters

    def check_phase(self, phase: str) -> None:
        """Raise ``ValueError`` naming the method's phases when ``phase`` is not one of them."""
        if phase not in self.phases:
            raise ValueError(f"unknown phase {phase!r} for method {self.name!r}; phases: {self.phases}")

    def begin_phase(self, phase: str, batches: Iterable[Batch]) -> None:
        """Once at the start of ``phase``: data-dependent init etc. ``batches`` iterates training batches."""

    def end_phase(self, phase: str) -> None:
        """Once at the end of ``phase``."""

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates in ``phase`` (default: all that require grad)."""
        return (p for p in self.parameters() if p.requires_grad)

    def training_loss(self, phase: str, batch: Batch, general_batch: Batch | None = None) -> torch.Tensor:
        """The 0-dim loss of one batch in ``phase``. ``general_batch`` comes from the datalist's
        ``general`` section when the method asks for it (:attr:`uses_general_data`)."""
        raise NotImplementedError

    def uses_general_data(self, phase: str) -> bool:
        """Whether ``phase`` trains on (or needs batches from) the ``general`` section."""
        return False

    def phase_data_section(self, phase: str) -> str:
        """The datalist section whose batches ``training_loss`` receives as ``batch`` in ``phase``."""
        return "training"

    def phase_sample_transform(self, phase: str) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """An ``item -> item`` transform of every training item of ``phase`` (its own section's stream; not the
        ``begin_phase`` batches, not the ``general`` stream), or None (default).

        It runs in the DataLoader workers right after the item is loaded, with the torch/NumPy/Python RNGs seeded
        per sample (:class:`~mri_anomaly.training.loaders.SeededSampleDataset`): draw all its randomness from
        them, so batches are the same for any ``num_workers`` and on resume. It must keep the items' keys the
        same for every item (they are collated together), and be picklable for spawned workers.
        """
        return None

    @torch.no_grad()
    def score(self, batch: Batch) -> BatchScores:
        """Scores (and maps, where the method has them) of one batch, higher = more anomalous."""
        raise NotImplementedError


def encoder_grid_divisor(cls: type[AnomalyMethod], model: Mapping[str, Any]) -> tuple[int, str]:
    """``grid_divisor`` of the bias-free encoders (Deep SAD, autoencoders): each level of ``model.channels``
    max-pools every axis by 2, so sizes must be multiples of ``2 ** len(channels)``."""
    channels = cls.model_argument(model, "channels")
    if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= 16:
        raise ValueError(f"model.channels: must list 1 to 16 levels of channels, got {channels!r}")
    return 2 ** len(channels), f"model.channels has {len(channels)} levels (each halves every axis)"


def batch_images(batch: Batch, spatial_dims: int, in_channels: int, device: torch.device) -> torch.Tensor:
    """The batch's ``image`` as a plain float32 tensor (N, C, *spatial) on ``device``.

    Raises:
        KeyError: if the batch has no ``image``.
        ValueError: if its shape does not fit ``spatial_dims`` / ``in_channels``.
    """
    if "image" not in batch:
        raise KeyError(f"batch has no 'image' entry (keys: {sorted(batch)})")
    image = batch["image"]
    if hasattr(image, "as_tensor"):  # MONAI MetaTensor: drop the metadata tracking in the model
        image = image.as_tensor()
    image = torch.as_tensor(image).to(device=device, dtype=torch.float32)
    if image.ndim != spatial_dims + 2 or image.shape[1] != in_channels:
        raise ValueError(
            f"batch['image'] must be (N, {in_channels}, *spatial) with {spatial_dims} spatial dims, "
            f"got shape {tuple(image.shape)}"
        )
    return image


_REGISTRY: dict[str, type[AnomalyMethod]] = {}


def register_method(cls: type[AnomalyMethod]) -> type[AnomalyMethod]:
    """Class decorator: make a method available to configs under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls
