"""The training engine: one loop for every method, on one process or under ``torchrun``.

The :class:`Trainer` runs the method's phases in order (``AnomalyMethod.phases``). Per phase it

0. with ``preprocessing.intensity.standardize: histogram`` and no landmarks in the config, fits the standard
   intensity landmarks on the healthy ``training`` scans (:mod:`mri_anomaly.data.histogram`) and keeps them in
   the run's config (a resumed run reuses the stored ones);
1. builds the phase's training data (``method.phase_data_section(phase)``, plus the ``general`` section
   when ``method.uses_general_data(phase)``) with the config's preprocessing; the DataLoader workers apply
   ``method.phase_sample_transform(phase)`` (if any) to each item of the phase's own section, seeded per sample;
2. calls ``method.begin_phase(phase, batches)`` once with ``train.init_batches`` batches — *before* any
   DistributedDataParallel wrapping. Under ``torchrun`` every rank receives the same init batches of the
   global batch size, so data-dependent initialisation (actnorm statistics, the Deep SAD centre) is
   identical on all ranks whether or not the method all-reduces; the trainer then checks that every rank
   holds identical weights and buffers (and stops with a clear error if not);
3. steps Adam over ``method.phase_parameters(phase)`` on ``method.training_loss(...)`` for
   ``train.phases.<phase>.steps`` steps, with global-norm gradient clipping; a step whose loss or
   gradient norm is non-finite is skipped on every rank (counted in the log and the checkpoint; too many
   in a row abort the run);
4. calls ``method.end_phase(phase)`` and writes a checkpoint.

Rank 0 writes ``RUN/train_log.csv`` (appended and flushed every ``log_every`` steps), ``RUN/config.yaml``
and ``RUN/checkpoint.pt`` (atomically, every ``checkpoint_every`` steps, at phase ends and at the end).
``resume=True`` continues from the checkpoint exactly: weights, optimiser, RNG states and the position in
the data order are restored (see :mod:`mri_anomaly.training.loaders`), so the final weights equal those
of an uninterrupted run. At the end, the healthy ``validation`` section is scored and thresholds at
``score.specificity`` are stored per score column in the checkpoint and in ``RUN/thresholds.json``.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mri_anomaly.data.datasets import PreprocessedCache
from mri_anomaly.data.histogram import healthy_items, needs_landmarks, reuse_landmarks, with_landmarks
from mri_anomaly.data.histogram_fit import fit_standard_landmarks
from mri_anomaly.errors import OutputExistsError, UserInputError
from mri_anomaly.evaluation.calibration import calibrate_run
from mri_anomaly.files import atomic_write
from mri_anomaly.runs import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, build_method
from mri_anomaly.training import distributed
from mri_anomaly.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from mri_anomaly.training.config import config_differences, config_from_yaml, config_to_yaml
from mri_anomaly.training.loaders import ResumableBatches
from mri_anomaly.training.methods import AnomalyMethod, Batch

__all__ = ["Trainer", "TrainResult", "move_batch"]

CACHE_DIR = "cache"
LOG_COLUMNS = ("global_step", "phase", "phase_step", "loss", "grad_norm", "lr", "skipped_steps", "seconds")

# Keys that may change between an interrupted run and its resumption without changing the result.
_RESUME_MUTABLE = {("train", "num_workers"), ("train", "log_every"), ("train", "checkpoint_every")}


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    run_dir: Path
    checkpoint: Path
    global_step: int
    completed: bool
    skipped_steps: int
    last_loss: float | None
    thresholds: dict[str, float] = field(default_factory=dict)


def _phase_lr(phase_cfg: dict[str, Any], phase_step: int) -> float:
    """The learning rate of step ``phase_step`` (0-based): linear warm-up over ``warmup_steps``, then ``lr``.

    A function of the step only, so a resumed run follows the same schedule (the optimiser's saved ``lr`` is
    overwritten before every step)."""
    warmup = int(phase_cfg.get("warmup_steps", 0))
    if warmup <= 0 or phase_step >= warmup:
        return float(phase_cfg["lr"])
    return float(phase_cfg["lr"]) * (phase_step + 1) / warmup


def move_batch(batch: Batch, device: torch.device) -> Batch:
    """Tensors of a collated batch to ``device`` (other entries untouched)."""
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


class _LossModule(nn.Module):
    """Routes ``forward`` to ``training_loss`` so DistributedDataParallel sees a forward call per step."""

    def __init__(self, method: AnomalyMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, phase: str, batch: Batch, general_batch: Batch | None) -> torch.Tensor:
        return self.method.training_loss(phase, batch, general_batch)


class _InitBatches:
    """Re-iterable: the first ``count`` batches of a dedicated seed stream (same on every call and on resume).

    Under ``torchrun`` every rank gets the *same* batches, of the global batch size (``batch_size`` x ranks):
    a data-dependent initialisation (actnorm statistics, the Deep SAD centre) is then identical on every
    rank by construction, and equal to that of one process training with the global batch size. (A method
    that all-reduces its statistics, as ``ActNormInvConv`` does, sums identical moments: same result.)
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int,
        phase_index: int,
        num_workers: int,
        count: int,
        device: torch.device,
        name: str,
    ) -> None:
        self.stream_args = dict(
            dataset=dataset,
            batch_size=batch_size * distributed.world_size(),
            seed=seed,
            phase_index=phase_index,
            stream=2,
            num_workers=num_workers,
            rank=0,
            world_size=1,
            name=name,
        )
        self.count = min(count, ResumableBatches(**self.stream_args).batches_per_epoch)
        self.device = device

    def __iter__(self) -> Iterator[Batch]:
        for i, batch in enumerate(ResumableBatches(**self.stream_args)):
            if i >= self.count:
                return
            yield move_batch(batch, self.device)

    def __len__(self) -> int:
        return self.count


def _config_differences(a: Any, b: Any) -> list[str]:
    """What a resumed run may not change: every difference but the resume-mutable keys and phase steps."""
    return [
        f"{'.'.join(path)}: {stored!r} in the checkpoint, {now!r} now"
        for path, now, stored in config_differences(a, b)
        if path[:2] not in _RESUME_MUTABLE
        and not (len(path) == 4 and path[:2] == ("train", "phases") and path[3] == "steps")
    ]


class Trainer:
    """Trains one method from a validated config on a datalist, into a run directory.

    Args:
        config: a validated config (:func:`~mri_anomaly.training.config.load_config`).
        datalist: path of a MONAI-style datalist JSON, or an already loaded ``{section: [items]}``.
        run_dir: the run directory (created).
        device: ``"cpu"``, ``"cuda"`` or a ``torch.device`` (under torchrun: this rank's device).
        max_steps: stop after this many optimiser steps in total (all phases) and save — for smoke runs;
            a later ``resume=True`` run continues.
        resume: continue from ``run_dir/checkpoint.pt`` (a run directory without one starts fresh).
        progress: show a tqdm progress bar (rank 0 only).
        preprocessed_cache: kept across runs on the same scans (the demo's): the training sections and the
            calibration's validation scans are preprocessed once per preprocessing config
            (:class:`~mri_anomaly.data.PreprocessedCache`).

    Raises:
        FileExistsError: ``run_dir`` already holds a checkpoint and ``resume`` is false (nothing is overwritten).
        ValueError: the resumed checkpoint's config differs from ``config`` in anything but steps/logging.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        datalist: str | os.PathLike | Mapping[str, list[dict[str, Any]]],
        run_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        max_steps: int | None = None,
        resume: bool = False,
        progress: bool = True,
        preprocessed_cache: PreprocessedCache | None = None,
    ) -> None:
        self.config = dict(config)
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.max_steps = max_steps
        self.progress = progress
        self.preprocessed_cache = preprocessed_cache
        self.datalist_source = datalist
        self.datalist = self._load_datalist(datalist)
        self._check_contrasts()
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self._datasets: dict[str, Any] = {}
        self.resume_state: dict[str, Any] | None = None
        if self.checkpoint_path.exists():
            if not resume:
                raise OutputExistsError(
                    f"{self.run_dir} already holds a training run ({CHECKPOINT_NAME}); pass --resume to continue it "
                    "or choose a new --out"
                )
            self.resume_state = load_checkpoint(self.checkpoint_path, map_location="cpu")
            stored = config_from_yaml(self.resume_state["config"])
            # histogram landmarks were fitted when the run began: reuse them, never refit
            self.config = reuse_landmarks(self.config, stored)
            problems = _config_differences(self.config, stored)
            # steps may grow for the phase in progress and later ones, never change for a finished phase
            done = self.resume_state["progress"]
            for index, phase in enumerate(stored["train"]["phases"]):
                was, now = (
                    stored["train"]["phases"][phase]["steps"],
                    self.config["train"]["phases"][phase]["steps"],
                )
                if index < done["phase_index"] and now != was:
                    problems.append(
                        f"train.phases.{phase}.steps: phase {phase!r} already finished after {was} steps ({now} now)"
                    )
                elif index == done["phase_index"] and now < done["phase_step"]:
                    problems.append(
                        f"train.phases.{phase}.steps: {now} is fewer than the {done['phase_step']} steps already done"
                    )
            if problems:
                raise UserInputError(
                    f"cannot resume {self.checkpoint_path}: the config differs from the checkpoint's:\n  - "
                    + "\n  - ".join(problems)
                )

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _load_datalist(datalist: Any) -> dict[str, list[dict[str, Any]]]:
        """The datalist's structure (keys, labels) is checked now; its files only for the sections trained on
        (:meth:`_check_training_files`): a bad test scan must not stop training."""
        if isinstance(datalist, Mapping):
            return {k: list(v) for k, v in datalist.items()}
        from mri_anomaly.data import load_datalist

        return load_datalist(datalist, check_files=False, check_headers=False)

    def _check_contrasts(self) -> None:
        """Every item lists as many image files (contrasts) as the config's ``preprocessing.contrasts``."""
        from mri_anomaly.data.datalist import check_contrast_counts
        from mri_anomaly.data.preprocessing import preprocessed_channels

        source = None if isinstance(self.datalist_source, Mapping) else self.datalist_source
        check_contrast_counts(self.datalist, preprocessed_channels(self.config.get("preprocessing")), source)

    def _check_training_files(self, method: AnomalyMethod) -> None:
        """Every file of the sections the method trains on exists and is a readable 3D NIfTI (all problems
        listed at once, before any work). Validation scans are checked as they are scored (bad ones skipped)."""
        from mri_anomaly.data.datalist import DatalistError, validate_datalist

        sections = set()
        for phase in type(method).phases:
            sections.add(method.phase_data_section(phase))
            if method.uses_general_data(phase):
                sections.add("general")
        missing = [s for s in sorted(sections) if not self.datalist.get(s)]
        problems = [
            f"section {s!r} is missing or empty, but method {self.config['method']!r} trains on it"
            for s in missing
        ]
        problems += validate_datalist({s: self.datalist[s] for s in sorted(sections) if self.datalist.get(s)})
        if problems:
            source = None if isinstance(self.datalist_source, Mapping) else self.datalist_source
            raise DatalistError(source, problems)

    def _section_items(self, section: str) -> list[dict[str, Any]]:
        items = self.datalist.get(section) or []
        if not items:
            raise UserInputError(
                f"the datalist has no items in section {section!r}, which this method trains on"
            )
        return items

    def _dataset(self, section: str):
        """The section's training dataset, built once per run (every phase and stream reuses it); a disk cache,
        when the volumes do not fit in memory, lives in ``RUN/cache/`` and is reused on resume."""
        from mri_anomaly.training.loaders import build_dataset

        if section not in self._datasets:
            self._datasets[section] = build_dataset(
                self.config,
                self._section_items(section),
                train=True,
                cache_dir=self.run_dir / CACHE_DIR,
                shared_cache=self.preprocessed_cache,
            )
        return self._datasets[section]

    def _init_batches(self, dataset, phase_index: int, name: str) -> _InitBatches:
        """``train.init_batches`` batches for ``begin_phase`` (their own seed stream; identical on resume)."""
        return _InitBatches(
            dataset,
            self.config["train"]["batch_size"],
            self.config["seed"],
            phase_index,
            self.config["train"]["num_workers"],
            self.config["train"]["init_batches"],
            self.device,
            name,
        )

    def _write_log_rows(self, rows: list[dict[str, Any]]) -> None:
        if not rows or not distributed.is_main_process():
            return
        path = self.run_dir / LOG_NAME
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    def _truncate_log(self, global_step: int) -> None:
        """Drop log rows past the checkpoint (logged by the interrupted run after its last save)."""
        path = self.run_dir / LOG_NAME
        if not distributed.is_main_process() or not path.exists():
            return
        with open(path, newline="") as f:
            rows = [
                r
                for r in csv.DictReader(f)
                if r.get("global_step", "").isdigit() and int(r["global_step"]) <= global_step
            ]
        with atomic_write(path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def _save(
        self,
        method: AnomalyMethod,
        optimizer: torch.optim.Optimizer | None,
        progress: dict[str, Any],
        rng: list[dict[str, Any]],
        thresholds: dict[str, Any] | None = None,
    ) -> None:
        if distributed.is_main_process():
            save_checkpoint(
                {
                    "method": self.config["method"],
                    "config": config_to_yaml(self.config),
                    "state_dict": {k: v.detach().cpu() for k, v in method.state_dict().items()},
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "progress": dict(progress),
                    "rng": rng,
                    "thresholds": dict((thresholds or {}).get("thresholds", {})),
                    "threshold_info": {k: v for k, v in (thresholds or {}).items() if k != "thresholds"},
                },
                self.checkpoint_path,
            )
        distributed.barrier()

    def _fit_intensity_landmarks(self) -> dict[str, Any]:
        """With ``preprocessing.intensity.standardize: histogram`` and no landmarks yet: fit the standard
        landmarks on the healthy scans of the ``training`` section (one pass, before any dataset is built) and
        keep them in ``self.config``, which the run's ``config.yaml`` and checkpoint store. Returns the config."""
        if needs_landmarks(self.config):
            items = healthy_items(self.datalist.get("training") or [])
            if not items:
                raise UserInputError(
                    "preprocessing.intensity.standardize: histogram needs healthy scans (label 0 or no label) in "
                    "the datalist's 'training' section to fit the intensity landmarks on"
                )
            landmarks = fit_standard_landmarks(
                items,
                self.config.get("preprocessing"),
                progress=self.progress and distributed.is_main_process(),
            )
            self.config = with_landmarks(self.config, landmarks)
        return self.config

    # ---------------------------------------------------------------------------------------------- fit
    def fit(self) -> TrainResult:
        """Train every phase (or up to ``max_steps``), score ``validation`` for thresholds, save.

        Returns:
            a :class:`TrainResult` with the final step, skipped steps and thresholds.
        """
        cfg = self.config
        train_cfg = cfg["train"]
        main = distributed.is_main_process()
        seed = cfg["seed"]
        torch.manual_seed(seed)
        import random

        import numpy as np

        np.random.seed(seed % (2**32))
        random.seed(seed)
        method = build_method(cfg).to(self.device)
        self._check_training_files(method)  # before anything is written
        cfg = self._fit_intensity_landmarks()
        train_cfg = cfg["train"]
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_NAME).write_text(config_to_yaml(cfg))
        distributed.barrier()

        phases = list(type(method).phases)
        # begun_phase_index: the last phase whose begin_phase ran (scoring needs the last phase begun)
        progress = {
            "phase_index": 0,
            "phase_step": 0,
            "global_step": 0,
            "completed": False,
            "skipped_steps": 0,
            "begun_phase_index": -1,
        }
        resume = self.resume_state
        if resume is not None:
            progress.update(resume["progress"])
            progress["completed"] = False
            method.load_state_dict(resume["state_dict"])
            self._truncate_log(progress["global_step"])
            if main:
                print(
                    f"resuming {self.checkpoint_path} at step {progress['global_step']} "
                    f"(phase {phases[min(progress['phase_index'], len(phases) - 1)]!r}, step {progress['phase_step']})"
                )

        total_steps = sum(train_cfg["phases"][p]["steps"] for p in phases)
        budget = total_steps if self.max_steps is None else min(total_steps, self.max_steps)
        bar = None
        if main and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=budget,
                initial=min(progress["global_step"], budget),
                desc=f"train {cfg['method']}",
                unit="step",
                dynamic_ncols=True,
            )
        last_loss: float | None = None
        optimizer: torch.optim.Optimizer | None = None
        stopped_early = False
        start_time = time.time()

        for phase_index in range(progress["phase_index"], len(phases)):
            phase = phases[phase_index]
            phase_cfg = train_cfg["phases"][phase]
            resuming_here = resume is not None and phase_index == resume["progress"]["phase_index"]
            mid_phase = resuming_here and resume["progress"]["phase_step"] > 0
            if resuming_here and not mid_phase:
                self._restore_rng(resume["rng"])
            start_step = progress["phase_step"] if resuming_here else 0
            if progress["global_step"] >= budget and start_step < phase_cfg["steps"]:
                stopped_early = True  # --max-steps reached: stop before beginning a phase that has steps left
                break

            section = method.phase_data_section(phase)
            dataset = self._dataset(section)
            method.train()
            method.begin_phase(phase, self._init_batches(dataset, phase_index, section))
            progress["begun_phase_index"] = phase_index
            phase_params = list(method.phase_parameters(phase))
            if not phase_params and phase_cfg["steps"] > 0:
                raise ValueError(
                    f"method {cfg['method']!r} has nothing to train in phase {phase!r} (its statistics come "
                    f"from begin_phase): set train.phases.{phase}.steps to 0"
                )
            # A fit-only phase (the baselines) has no parameters and no optimiser.
            optimizer = (
                torch.optim.Adam(phase_params, lr=phase_cfg["lr"], weight_decay=phase_cfg["weight_decay"])
                if phase_params
                else None
            )
            if mid_phase:
                # begin_phase re-ran for its non-persistent set-up; the checkpoint overrides everything it computed.
                method.load_state_dict(resume["state_dict"])
                if resume.get("optimizer") is not None and optimizer is not None:
                    optimizer.load_state_dict(resume["optimizer"])
                self._restore_rng(resume["rng"])
            distributed.check_replicas_identical(method, f"begin_phase({phase!r})", device=self.device)

            # Only the phase's parameters take gradients (the others are frozen for the phase and restored after):
            # no wasted backward work, and DDP reduces exactly the parameters the optimiser steps.
            in_phase = {id(p) for p in phase_params}
            frozen = [p for p in method.parameters() if p.requires_grad and id(p) not in in_phase]
            for p in frozen:
                p.requires_grad_(False)
            model: nn.Module = _LossModule(method)
            if distributed.is_distributed() and phase_params:
                from torch.nn.parallel import DistributedDataParallel

                model = DistributedDataParallel(
                    model,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                )
            batches = iter(
                ResumableBatches(
                    dataset,
                    train_cfg["batch_size"],
                    seed,
                    phase_index,
                    stream=0,
                    num_workers=train_cfg["num_workers"],
                    start_step=start_step,
                    name=section,
                    sample_transform=method.phase_sample_transform(phase),
                )
            )
            general = None
            if method.uses_general_data(phase):
                general = iter(
                    ResumableBatches(
                        self._dataset("general"),
                        train_cfg["batch_size"],
                        seed,
                        phase_index,
                        stream=1,
                        num_workers=train_cfg["num_workers"],
                        start_step=start_step,
                        name="general",
                    )
                )
            params = phase_params
            consecutive_skips = 0
            loss_sum, loss_count, grad_norm_last = 0.0, 0, float("nan")
            log_rows: list[dict[str, Any]] = []

            progress["phase_step"] = start_step
            for phase_step in range(start_step, phase_cfg["steps"]):
                if progress["global_step"] >= budget:
                    break
                batch = move_batch(next(batches), self.device)
                general_batch = move_batch(next(general), self.device) if general is not None else None
                optimizer.zero_grad(set_to_none=True)
                lr = _phase_lr(phase_cfg, phase_step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = model(phase, batch, general_batch)
                skip = distributed.all_reduce_any(not bool(torch.isfinite(loss.detach()).all()), self.device)
                if not skip:
                    loss.backward()
                    if train_cfg["grad_clip"] is not None:
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, train_cfg["grad_clip"])
                    else:
                        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
                        grad_norm = torch.stack(grads).norm() if grads else torch.zeros(())
                    grad_norm_last = float(grad_norm)
                    skip = not math.isfinite(
                        grad_norm_last
                    )  # identical on all ranks: gradients are all-reduced
                if skip:
                    optimizer.zero_grad(set_to_none=True)
                    progress["skipped_steps"] += 1
                    consecutive_skips += 1
                    if consecutive_skips >= train_cfg["max_consecutive_skips"]:
                        self._save(method, optimizer, progress, self._gather_rng())
                        raise RuntimeError(
                            f"{consecutive_skips} steps in a row had a non-finite loss or gradient (phase {phase!r}, step "
                            f"{progress['global_step']}); the last good state is in {self.checkpoint_path}. Lower the "
                            "learning rate or check the data."
                        )
                else:
                    optimizer.step()
                    consecutive_skips = 0
                    loss_sum += float(loss.detach())
                    loss_count += 1
                progress["phase_step"] = phase_step + 1
                progress["global_step"] += 1
                if bar is not None:
                    bar.update(1)
                is_last = phase_step + 1 == phase_cfg["steps"] or progress["global_step"] >= budget
                if progress["global_step"] % train_cfg["log_every"] == 0 or is_last:
                    mean_loss = self._mean_across_ranks(loss_sum, loss_count)
                    last_loss = mean_loss if math.isfinite(mean_loss) else last_loss
                    log_rows.append(
                        {
                            "global_step": progress["global_step"],
                            "phase": phase,
                            "phase_step": progress["phase_step"],
                            "loss": f"{mean_loss:.6g}",
                            "grad_norm": f"{grad_norm_last:.6g}",
                            "lr": f"{_phase_lr(phase_cfg, phase_step):.6g}",
                            "skipped_steps": progress["skipped_steps"],
                            "seconds": f"{time.time() - start_time:.2f}",
                        }
                    )
                    if bar is not None:
                        bar.set_postfix(
                            phase=phase, loss=f"{mean_loss:.4g}", skipped=progress["skipped_steps"]
                        )
                    self._write_log_rows(log_rows)
                    log_rows = []
                    loss_sum, loss_count = 0.0, 0
                if progress["global_step"] % train_cfg["checkpoint_every"] == 0 and not is_last:
                    self._save(method, optimizer, progress, self._gather_rng())
            for p in frozen:
                p.requires_grad_(True)
            distributed.broadcast_buffers(method)  # rank 0's BatchNorm statistics etc. everywhere (as saved)
            if progress["phase_step"] < phase_cfg["steps"]:
                stopped_early = True
                break
            method.end_phase(phase)
            progress["phase_index"] = phase_index + 1
            progress["phase_step"] = 0
            self._save(method, None, progress, self._gather_rng())
            optimizer = None

        if bar is not None:
            bar.close()
        progress["completed"] = not stopped_early and progress["phase_index"] >= len(phases)
        rng = self._gather_rng()
        self._save(method, optimizer, progress, rng)
        thresholds = None
        if progress["begun_phase_index"] == len(phases) - 1:
            thresholds = calibrate_run(
                method,
                self.config,
                self.datalist.get("validation") or [],
                device=self.device,
                progress=self.progress,
                preprocessed_cache=self.preprocessed_cache,
            )
        elif main:
            print(
                f"note: stopped before phase {phases[-1]!r} began: the model cannot score yet, no thresholds stored"
            )
        self._save(method, optimizer, progress, rng, thresholds)
        if main and thresholds is not None:
            from mri_anomaly.evaluation.thresholds import save_thresholds

            save_thresholds(self.run_dir, thresholds)
        if main:
            state = (
                "finished"
                if progress["completed"]
                else f"stopped at step {progress['global_step']} of {total_steps} (resume with --resume)"
            )
            print(
                f"training {state}; {progress['skipped_steps']} non-finite step(s) skipped; checkpoint: {self.checkpoint_path}"
            )
        return TrainResult(
            run_dir=self.run_dir,
            checkpoint=self.checkpoint_path,
            global_step=progress["global_step"],
            completed=progress["completed"],
            skipped_steps=progress["skipped_steps"],
            last_loss=last_loss,
            thresholds=dict((thresholds or {}).get("thresholds", {})),
        )

    # --------------------------------------------------------------------------------------- internals
    def _mean_across_ranks(self, total: float, count: int) -> float:
        if distributed.is_distributed():
            t = torch.tensor([total, float(count)], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            total, count = float(t[0]), int(t[1])
        return total / count if count else float("nan")

    def _gather_rng(self) -> list[dict[str, Any]]:
        return distributed.all_gather_objects(capture_rng_state())

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        r = distributed.rank()
        if len(states) != distributed.world_size() and distributed.is_main_process():
            print(
                f"note: the checkpoint was written by {len(states)} process(es), this run has {distributed.world_size()}: "
                "random streams continue from rank 0's (the result is not bit-identical to an uninterrupted run)"
            )
        restore_rng_state(states[r] if r < len(states) else states[0])
