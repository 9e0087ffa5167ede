"""The ``evaluate`` and ``demo`` subcommands; :func:`register_commands` adds them to ``mri-anomaly``.

Each mirrors one Python call: ``evaluate`` = :func:`mri_anomaly.evaluation.evaluate.evaluate`,
``demo`` = :func:`mri_anomaly.pipeline.run_demo`.
"""

from __future__ import annotations

import argparse

from mri_anomaly.errors import UserInputError

__all__ = ["register_commands"]

_EPILOG_EVALUATE = """\
examples:
  mri-anomaly evaluate --scores scores/glow3d --datalist demo/datalist.json --out scores/glow3d
  mri-anomaly evaluate --scores scores/glow3d --run runs/glow3d --datalist D --out eval/glow3d   # store thresholds
  mri-anomaly evaluate --scores scores/glow2d --scores scores/deep-sad --datalist D --out eval/compare

OUT/ receives metrics.json ({"volume": {column: {"auroc", "auroc_ci", "ap", "ap_ci", "fpr_at_95tpr",
"sens_at_90spec", "sens_at_95spec", "sens_at_99spec", ...}}, "slice": {...}, "voxel": {...},
"thresholds": {...}, "per_site": {...}}), report.html and figures/*.png. Thresholds are calibrated on the
healthy validation scans in the score tables (score them with --section validation,test); with --run they
are written to RUN/thresholds.json, which `mri-anomaly score` uses to flag scans."""

_EPILOG_DEMO = """\
The demo builds the synthetic cohort, trains 2D and 3D Glow (likelihood ratio, NLL, final-scale scores),
Deep SVDD, Deep SAD and the latent-norm autoencoder at demo size, scores, evaluates and writes one report
comparing them (about 15 minutes on 2 CPU cores). Re-running skips the finished stages."""


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="metrics with CIs, thresholds and an HTML report from score directories",
        description="Volume-, slice- and voxel-level AUROC, AP, FPR at 95% TPR and sensitivity at 90/95/99% specificity "
        "with bootstrap 95% CIs; thresholds calibrated on healthy validation scans; per-site tables; report.html. "
        "Several --scores give a method comparison.",
        epilog=_EPILOG_EVALUATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scores",
        action="append",
        required=True,
        metavar="OUT",
        help="score directory from `mri-anomaly score` (repeat to compare runs)",
    )
    p.add_argument(
        "--datalist", default=None, help="the datalist the scores came from (labels, masks, sites)"
    )
    p.add_argument("--out", required=True, help="output folder for metrics.json, report.html, figures/")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN",
        help="run directory to store the calibrated thresholds in (one per --scores, same order)",
    )
    p.add_argument(
        "--name", action="append", default=None, metavar="NAME", help="label of each --scores in the report"
    )
    p.add_argument("--section", default="test", help="section evaluated (default: test)")
    p.add_argument(
        "--calibration-section",
        default="validation",
        help="healthy section the thresholds are calibrated on (default: validation)",
    )
    p.add_argument(
        "--specificity", type=float, default=0.95, help="target specificity of the thresholds (default 0.95)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of the CIs (0: none)"
    )
    p.add_argument(
        "--voxel-bootstrap", type=int, default=100, metavar="N", help="bootstrap resamples of voxel-level CIs"
    )
    p.add_argument(
        "--max-voxels",
        type=int,
        default=100_000,
        metavar="N",
        help="voxels per scan kept for voxel metrics (deterministic subsample; 0: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the voxel subsample")
    p.add_argument(
        "--allow-few-calibration-scans",
        action="store_true",
        help="store thresholds even from fewer healthy scans than the specificity needs (20 for 0.95)",
    )
    p.add_argument("--no-report", action="store_true", help="write metrics.json only")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes that evaluate the runs and draw the figures (same metrics.json for any N); default 1",
    )
    p.set_defaults(func=_cmd_evaluate)


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the synthetic demo cohort, ending in one comparison report",
        description="demo-data -> train (each method) -> score -> evaluate, resumable.",
        epilog=_EPILOG_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="demo folder (created; an existing one is resumed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo cohort")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of the demo runs (default: all): "
        "glow2d-ratio,glow3d-ratio,deep-svdd-2d,deep-sad-2d,latent-norm-ae-2d",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of the report's CIs"
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check (numbers mean nothing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--lanes",
        type=int,
        default=None,
        metavar="N",
        help="runs trained side by side, each in its own process on its share of the cores (default: 2 on a "
        "CPU with 2+ cores; 1: one after the other, with per-step progress bars)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mri_anomaly.evaluation.evaluate import evaluate

    evaluate(
        args.scores, args.datalist, args.out, runs=args.run, names=args.name, section=args.section,
        calibration_section=args.calibration_section, specificity=args.specificity, n_bootstrap=args.bootstrap,
        n_bootstrap_voxel=args.voxel_bootstrap, max_voxels=args.max_voxels or None, seed=args.seed,
        report=not args.no_report, allow_few_calibration_scans=args.allow_few_calibration_scans,
        workers=args.workers,
    )  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mri_anomaly.pipeline import DEMO_RUNS, run_demo

    runs = DEMO_RUNS
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        known = {r.name: r for r in DEMO_RUNS}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise UserInputError(
                f"unknown demo method(s) {', '.join(unknown)}; choose from {', '.join(known)}"
            )
        runs = tuple(known[m] for m in wanted)
    report = run_demo(args.out, runs=runs, seed=args.seed, device=args.device, smoke=args.smoke,
                      n_bootstrap=args.bootstrap, progress=not args.no_progress, lanes=args.lanes)  # fmt: skip
    print(f"Report: {report.resolve()}")
    return 0


def register_commands(subparsers) -> None:
    """Add ``evaluate`` and ``demo`` to the ``mri-anomaly`` subparsers (each ``set_defaults(func=handler)``)."""
    _add_evaluate(subparsers)
    _add_demo(subparsers)
