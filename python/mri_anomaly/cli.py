"""The ``mri-anomaly`` command (also ``python -m mri_anomaly``, and ``torchrun -m mri_anomaly``).

Subcommands::

    mri-anomaly train --config C --datalist D --out RUN [--resume] [--device cpu|cuda] [--max-steps N] [--set k=v ...]
    mri-anomaly score --run RUN --datalist D [--section test] --out OUT [--device ...] [--no-maps] [--workers N]
                                  (--run-dir RUN: the same, for torchrun, which claims --run)
    mri-anomaly export --run RUN --out model.pt2
    mri-anomaly bundle --run RUN --out DIR
    mri-anomaly info
    (+ demo-data, datalist from mri_anomaly.data.commands; evaluate, demo from mri_anomaly.evaluation.commands)

Each subcommand mirrors one Python call: ``train`` = ``Trainer(load_config(C, overrides), D, RUN).fit()``,
``score`` = ``score_datalist(RUN, D, OUT, sections)``. Errors the user can fix (a bad config, datalist or
file: a :class:`~mri_anomaly.errors.UserInputError`) are printed as one clear message without a traceback
(``MRI_ANOMALY_DEBUG=1`` shows it); any other exception is a bug and keeps its traceback.

Exit status (:data:`EXIT_CODES`): 0 done; 1 the work stopped or the datalist has problems (``train``
interrupted, ``datalist`` found problems); 2 a user error (bad config, datalist, file, option); 3 ``score``
finished but some scans failed (listed in ``OUT/errors.csv``; every other scan was scored); 130 interrupted
(Ctrl-C); an internal error exits 1 with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mri_anomaly.errors import UserInputError

__all__ = ["EXIT_CODES", "EXIT_OK", "EXIT_USER_ERROR", "EXIT_SOME_SCANS_FAILED", "build_parser", "main"]

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_SOME_SCANS_FAILED = 3
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    1: "the work stopped early (train) or the datalist has problems (datalist); an internal error (with traceback)",
    EXIT_USER_ERROR: "a user error: bad config, datalist, file or option (one line on stderr)",
    EXIT_SOME_SCANS_FAILED: "score: some scans failed (OUT/errors.csv); all the others were scored",
    130: "interrupted; what was written is kept",
}

_EPILOG_TRAIN = """\
examples:
  mri-anomaly train --config configs/glow3d.yaml --datalist demo/datalist.json --out runs/glow3d
  mri-anomaly train --config configs/deep-sad-2d.yaml --datalist D --out RUN --max-steps 5 \\
      --set train.batch_size=8 --set model.rep_dim=16
  torchrun --nproc-per-node 2 -m mri_anomaly train --config C --datalist D --out RUN   # DDP
  mri-anomaly train --config C --datalist D --out RUN --resume      # continue an interrupted run

RUN/ receives config.yaml (resolved), checkpoint.pt (weights, optimiser, thresholds, versions; written
atomically), train_log.csv and thresholds.json.

Config keys: method, spatial_dims, in_channels, seed, preprocessing, slices, model (the method's own
arguments), train (batch_size, phases.<phase>.{steps, lr, weight_decay}, grad_clip, num_workers,
log_every, checkpoint_every, max_consecutive_skips, init_batches), score (specificity, batch_size, top_k,
save_maps). Unknown keys, wrong types and impossible values are all reported at once."""

_EPILOG_SCORE = """\
examples:
  mri-anomaly score --run runs/glow3d --datalist demo/datalist.json --out scores/glow3d
  mri-anomaly score --run RUN --datalist D --section validation,test --out OUT
  torchrun --nproc-per-node 2 -m mri_anomaly score --run-dir RUN --datalist D --out OUT   # sharded, merged
  mri-anomaly score --run RUN --datalist D --out OUT --format mood   # + OUT/mood/{sample,pixel}/ (MOOD challenge)

OUT/ receives scores.csv (one row per volume), slice_scores.csv (one row per axial slice),
maps/<section>/*.nii.gz (float32 voxel maps in the input's space and affine), errors.csv (scans that
could not be read: skipped, the rest is scored) and score_meta.json. Running again over the same OUT
skips the volumes already scored and retries the failed ones.

exit status: 0 every scan scored; 3 some scans could not be read (listed in OUT/errors.csv, the others
scored); 2 a user error (run, datalist, section); an internal error stops the run with its traceback."""


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a method from a YAML config on a datalist",
        description="Train one method (Glow, Deep SAD/SVDD, latent-norm autoencoder) from a YAML config. "
        "At the end the healthy 'validation' section is scored and thresholds at score.specificity are stored.",
        epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        required=True,
        help="YAML config file, or the name of a shipped config (glow3d, glow2d-slices, deep-sad-2d, ...; "
        "`mri-anomaly info` lists them)",
    )
    p.add_argument(
        "--datalist",
        required=True,
        help="datalist JSON/CSV with 'training' (healthy) and 'validation' sections",
    )
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to create (or resume)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in RUN from its checkpoint (exactly)"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda (under torchrun each rank takes cuda:LOCAL_RANK); default cpu",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N optimiser steps in total and save (smoke runs; --resume continues)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config value by its dotted key, parsed as YAML (repeatable), "
        "e.g. --set train.phases.train.steps=10 --set model.levels=2",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _add_score(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score datalist sections with a trained run (CSV tables, voxel maps)",
        description="Score every volume of the chosen datalist sections with a trained run: slice-wise for 2D models "
        "(aggregated to volume scores by mean, max and top-k mean), volume-wise for 3D models; flags against the "
        "run's thresholds.",
        epilog=_EPILOG_SCORE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        required=True,
        help="training run directory (holds checkpoint.pt); under torchrun write --run-dir "
        "(torchrun itself takes --run as an abbreviation of its --run-path)",
    )
    p.add_argument("--datalist", required=True, help="datalist JSON/CSV")
    p.add_argument(
        "--section",
        default="test",
        help="section(s) to score, comma separated (default: test), e.g. validation,test",
    )
    p.add_argument("--out", required=True, metavar="OUT", help="output folder (resumed when it exists)")
    p.add_argument("--device", default="cpu", help="cpu or cuda; default cpu")
    p.add_argument("--no-maps", action="store_true", help="do not write voxel maps")
    p.add_argument(
        "--workers", type=int, default=0, metavar="N", help="DataLoader workers that preprocess volumes ahead"
    )
    p.add_argument(
        "--format",
        default="csv",
        choices=("csv", "mood"),
        help="csv: the tables and maps (always written); mood: also the MOOD-challenge layout in OUT/mood "
        "(sample/<input>.txt, pixel/<input> with the input's shape and affine)",
    )
    p.add_argument(
        "--mood-values",
        default="unit",
        choices=("unit", "raw"),
        help="with --format mood: unit maps scores into (0, 1) keeping their order (MOOD clips to [0, 1]; "
        "0.5 = the run's threshold); raw writes them unchanged. Default unit",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run as a torch.export program carrying its preprocessing and thresholds",
        description="Write RUN's scoring (model grid -> scores and maps, fused flow-step ops included) as a "
        "torch.export program; its metadata holds the config (preprocessing, slice rule), score names, "
        "thresholds and versions. Load it with mri_anomaly.load_exported(PATH).",
        epilog="examples:\n  mri-anomaly export --run runs/glow3d --out glow3d.pt2\n  mri-anomaly export --run runs/glow3d --out glow3d.onnx\n"
        "  python -c \"import mri_anomaly; s = mri_anomaly.load_exported('glow3d.pt2'); print(s.predict(['scan.nii.gz']))\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="training run directory (holds checkpoint.pt)")
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="output file: model.pt2 (torch.export), or model.onnx (ONNX: the flow-step ops as their "
        "reference maths; needs onnx and onnxscript; runs with onnxruntime)",
    )
    p.set_defaults(func=_cmd_export)


def _add_bundle(subparsers) -> None:
    p = subparsers.add_parser(
        "bundle",
        help="write a standard MONAI bundle folder for a run",
        description="Write DIR/configs/{metadata.json,inference.yaml}, DIR/models/model.pt (weights only) and "
        "DIR/docs/README.md for RUN; python -m monai.bundle run scores with it.",
        epilog="example:\n  mri-anomaly bundle --run runs/glow3d --out bundles/glow3d\n"
        "  python -m monai.bundle run --bundle_root bundles/glow3d --config_file bundles/glow3d/configs/inference.yaml "
        "--datalist D --output_dir OUT",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="training run directory (holds checkpoint.pt)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to create")
    p.set_defaults(func=_cmd_bundle)


def _add_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="print versions, the ops backend and devices",
        description="Print the package and dependency versions, which flow-step ops backend is in use "
        "(compiled extension or pure-PyTorch reference), how the extension was built (version, torch and "
        "compiler, CUDA archs, OpenMP threads, CPU tile size), the registered methods and the devices.",
    )
    p.set_defaults(func=_cmd_info)


def _add_registered(subparsers, module_name: str) -> None:
    """Subcommands other modules register (data: demo-data, datalist; evaluation: evaluate, demo)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        return
    module.register_commands(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The full ``mri-anomaly`` argument parser."""
    from mri_anomaly._version import __version__

    parser = argparse.ArgumentParser(
        prog="mri-anomaly",
        description="Anomaly detection in MRI volumes: Glow normalizing flows (likelihood, per-scale and likelihood-ratio "
        "scores), Deep SAD / Deep SVDD and the latent-norm autoencoder, slice-wise and volume-wise.",
        epilog="Typical use: demo-data (or datalist) -> train -> score -> evaluate.  'mri-anomaly demo' runs all of them.",
    )
    parser.add_argument("--version", action="version", version=f"mri-anomaly {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(subparsers)
    _add_score(subparsers)
    _add_export(subparsers)
    _add_bundle(subparsers)
    _add_info(subparsers)
    _add_registered(subparsers, "mri_anomaly.data.commands")
    _add_registered(subparsers, "mri_anomaly.evaluation.commands")
    return parser


# ------------------------------------------------------------------------------------------ commands
def _cmd_train(args: argparse.Namespace) -> int:
    from mri_anomaly.training import Trainer, distributed, load_config

    config = load_config(args.config, args.overrides)
    device = distributed.init_distributed(args.device)
    try:
        result = Trainer(
            config,
            args.datalist,
            args.out,
            device=device,
            max_steps=args.max_steps,
            resume=args.resume,
            progress=not args.no_progress,
        ).fit()
    finally:
        distributed.cleanup_distributed()
    return 0 if result is not None else 1


def _cmd_score(args: argparse.Namespace) -> int:
    from mri_anomaly.scoring.runner import score_datalist
    from mri_anomaly.training import distributed

    sections = [s.strip() for s in args.section.split(",") if s.strip()]
    if not sections:
        raise UserInputError("--section needs at least one section name, e.g. test or validation,test")
    if args.format == "mood" and args.no_maps:
        raise UserInputError("--format mood writes a pixel-level map per scan: drop --no-maps")
    device = distributed.init_distributed(args.device)
    main_process = distributed.is_main_process()
    try:
        save_maps = False if args.no_maps else (True if args.format == "mood" else None)
        summary = score_datalist(
            args.run,
            args.datalist,
            args.out,
            sections=sections,
            device=device,
            save_maps=save_maps,
            num_workers=args.workers,
            progress=not args.no_progress,
        )
        if args.format == "mood" and main_process:
            from mri_anomaly.scoring.mood import write_mood_outputs

            print(f"MOOD layout -> {write_mood_outputs(args.out, values=args.mood_values)}")
    finally:
        distributed.cleanup_distributed()
    if summary.errors:
        if main_process:
            total = summary.scored + summary.skipped_existing + summary.errors
            print(
                f"mri-anomaly score: {summary.errors} of {total} scan(s) failed, listed in {summary.out_dir / 'errors.csv'} "
                f"({summary.scored} scored now, {summary.skipped_existing} already done); exit status "
                f"{EXIT_SOME_SCANS_FAILED}",
                file=sys.stderr,
            )
        return EXIT_SOME_SCANS_FAILED
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from mri_anomaly.export import export_run

    print(f"exported {args.run} -> {export_run(args.run, args.out)}")
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from mri_anomaly.bundle import write_bundle_folder

    print(f"MONAI bundle of {args.run} -> {write_bundle_folder(args.run, args.out)}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from mri_anomaly import get_config
    from mri_anomaly.training.config import configs_dir, shipped_configs
    from mri_anomaly.training.methods import available_methods

    shipped = shipped_configs()
    where = str(configs_dir()) if shipped else "none found (set MRI_ANOMALY_CONFIGS)"
    info = {
        **get_config(),
        "methods": ", ".join(available_methods()),
        "configs": where,
        "shipped configs": ", ".join(shipped) or "none",
    }
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}} : {value}")
    return 0


# Errors a user can act on: printed as one message, no traceback. Everything else (a ValueError or KeyError
# from inside the package included) is a bug and keeps its traceback. PermissionError: an --out the user
# cannot write to (its message names the path).
_USER_ERRORS: tuple[type[BaseException], ...] = (UserInputError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mri-anomaly`` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except _USER_ERRORS as err:
        if os.environ.get("MRI_ANOMALY_DEBUG"):
            raise
        print(f"mri-anomaly {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            f"mri-anomaly {args.command}: interrupted; what was written so far is kept (rerun to resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
