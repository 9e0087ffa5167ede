"""The ``demo-data`` and ``datalist`` subcommands; :func:`register_commands` adds them to ``mri-anomaly``.

``mri-anomaly demo-data --out DIR [--seed S] [--healthy N] [--anomalous N] [--general N] [--spacing MM]
[--contrast t1|t2|flair[,...]] [--smooth-anatomy] [--full-contrast-lesions] [--skull-strip-fraction F]
[--workers N] [--montage PNG]`` writes the synthetic cohort (:func:`make_demo_cohort`).

``mri-anomaly datalist (--images GLOB [GLOB ...] | --folder DIR) [--masks GLOB ...] [--brain-masks GLOB ...]
[--labels CSV] [--section auto|training|validation|test|general] [--val-fraction F] [--test-fraction F]
[--seed S] [--subject-regex RE] [--image-pattern GLOB] --out datalist.json|.csv`` builds a datalist,
matching masks to images by subject id, validates it (every problem listed) and writes it.
``--check DATALIST`` only validates an existing datalist. The labels CSV has a ``subject_id`` column and
any of ``label``, ``semi_target``, ``site``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from pathlib import Path
from typing import Any

from mri_anomaly.errors import MissingInputError, UserInputError

__all__ = ["register_commands", "demo_data_command", "datalist_command"]


def demo_data_command(args: argparse.Namespace) -> int:
    """Handler of ``demo-data``; returns the exit code."""
    import time

    from mri_anomaly.data.demo import default_workers, make_demo_cohort

    t = time.time()
    try:
        path = make_demo_cohort(
            args.out,
            seed=args.seed,
            healthy=args.healthy,
            anomalous=args.anomalous,
            general=args.general,
            spacing=args.spacing,
            contrast=args.contrast,
            progress=not args.quiet,
            smooth_anatomy=args.smooth_anatomy,
            partial_volume_lesions=not args.full_contrast_lesions,
            skull_strip_fraction=args.skull_strip_fraction,
            workers=args.workers if args.workers is not None else default_workers(),
        )
    except UserInputError as e:
        print(f"mri-anomaly demo-data: error: {e}", file=sys.stderr)
        return 2
    print(f"demo cohort written in {time.time() - t:.1f} s: {path}")
    if args.montage:
        from mri_anomaly.data.montage import make_montage

        shown = args.contrast if isinstance(args.contrast, str) else "+".join(args.contrast)
        title = f"demo cohort ({shown}, {args.spacing:g} mm)"
        print(f"montage: {make_montage(path, args.montage, title=title)}")
    return 0


def _contrast_list(text: str) -> str | tuple[str, ...]:
    """``flair`` -> ``"flair"``; ``flair,t1`` -> ``("flair", "t1")`` (argparse type of ``--contrast``)."""
    from mri_anomaly.data.demo import CONTRASTS

    names = tuple(c.strip().lower() for c in text.split(",") if c.strip())
    bad = [c for c in names if c not in CONTRASTS]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(CONTRASTS)} or several distinct ones separated by commas, got {text!r}"
        )
    return names[0] if len(names) == 1 else names


def _read_labels(path: str) -> dict[str, dict[str, Any]]:
    """``{subject_id: {"label"?, "semi_target"?, "site"?}}`` from a labels CSV (UTF-8, a ``subject_id`` column).

    Raises:
        MissingInputError: no such file. UserInputError: naming the file and the row for anything else
        (not UTF-8, malformed CSV, no ``subject_id`` column, an empty or repeated id, a non-integer label).
    """
    if not os.path.isfile(path):
        raise MissingInputError(f"{path}: labels CSV not found")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: labels CSV is not UTF-8 text ({e})") from None
    out: dict[str, dict[str, Any]] = {}
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or "subject_id" not in reader.fieldnames:
            raise UserInputError(f"{path}: labels CSV needs a 'subject_id' column, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            subject = (row.get("subject_id") or "").strip()
            if not subject:
                raise UserInputError(f"{path}: line {line}: empty subject_id")
            if subject in out:
                raise UserInputError(f"{path}: line {line}: subject_id {subject!r} appears twice")
            entry: dict[str, Any] = {}
            for k in ("label", "semi_target"):
                value = (row.get(k) or "").strip()
                if value:
                    try:
                        number = float(value)
                    except ValueError:
                        number = math.nan
                    if not number.is_integer():  # "x", "nan", "inf", "0.5": never rounded silently
                        raise UserInputError(
                            f"{path}: line {line}: {k} {value!r} of {subject} is not an integer"
                        )
                    entry[k] = int(number)
            if (row.get("site") or "").strip():
                entry["site"] = row["site"].strip()
            out[subject] = entry
    except csv.Error as e:
        raise UserInputError(f"{path}: labels CSV is not valid CSV ({e})") from None
    return out


def datalist_command(args: argparse.Namespace) -> int:
    """Handler of ``datalist``; returns the exit code (1: the datalist has problems, 2: usage error)."""
    from mri_anomaly.data.datalist import (
        DatalistError,
        build_datalist,
        classify_folder,
        find_images,
        load_datalist,
        validate_datalist,
        write_datalist,
    )

    if args.check:
        try:
            dl = load_datalist(args.check)
        except DatalistError as e:
            print(str(e), file=sys.stderr)
            return 1
        print(f"{args.check}: valid (" + ", ".join(f"{k}: {len(v)}" for k, v in dl.items()) + ")")
        return 0
    if not args.out or not (args.images or args.folder):
        print(
            "mri-anomaly datalist: error: give --out and --images or --folder (or --check DATALIST)",
            file=sys.stderr,
        )
        return 2
    try:
        images: list[str] = []
        masks = find_images(args.masks or [])
        brains = find_images(args.brain_masks or [])
        if args.folder:
            fi, fm, fb = classify_folder(args.folder, image_pattern=args.image_pattern)
            images += fi
            masks = masks or fm
            brains = brains or fb
        if args.images:
            images += find_images(args.images)
        images = sorted(set(images) - set(masks) - set(brains))
        if not images:
            print("mri-anomaly datalist: error: no NIfTI images matched", file=sys.stderr)
            return 2
        labels = _read_labels(args.labels) if args.labels else None
        dl = build_datalist(
            images,
            masks,
            brains,
            labels=labels,
            section=args.section,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            subject_regex=args.subject_regex,
        )
    except UserInputError as e:
        print(f"mri-anomaly datalist: error: {e}", file=sys.stderr)
        return 2
    problems = validate_datalist(dl, check_headers=not args.no_header_check)
    path = write_datalist(dl, args.out)
    counts = ", ".join(f"{k}: {len(v)}" for k, v in dl.items())
    if problems:
        print(
            f"{path}: written with {len(problems)} problem(s):\n  " + "\n  ".join(problems), file=sys.stderr
        )
        return 1
    print(f"{path}: {counts}")
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``demo-data`` and ``datalist`` to an ``argparse`` subparsers object (``set_defaults(func=...)``)."""
    from mri_anomaly.data.demo import CONTRASTS, DEMO_DEFAULTS

    p = subparsers.add_parser(
        "demo-data",
        help="write the synthetic demo cohort (MNI152 anatomy, lesions) and its datalist.json",
        description="Synthetic cohort from the MNI ICBM152 2009 template shipped with nilearn: healthy subjects, "
        "anomalous subjects (MS lesion patterns, tumours, focal lesions) with voxel masks, and a broader "
        "'general' set. Same seed, same arrays.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=DEMO_DEFAULTS["seed"])
    p.add_argument(
        "--healthy",
        type=int,
        default=DEMO_DEFAULTS["healthy"],
        help="healthy subjects (20%% validation, 20%% test, rest training; default %(default)s)",
    )
    p.add_argument(
        "--anomalous", type=int, default=DEMO_DEFAULTS["anomalous"], help="anomalous test subjects"
    )
    p.add_argument(
        "--general", type=int, default=DEMO_DEFAULTS["general"], help="subjects of the 'general' section"
    )
    p.add_argument(
        "--smooth-anatomy",
        action="store_true",
        help="no individual tissue texture or periventricular FLAIR/T2 signal (the template's smooth anatomy)",
    )
    p.add_argument(
        "--full-contrast-lesions",
        action="store_true",
        help="full lesion contrast in every mask voxel (the cohort before 2026-12-02) instead of partial volume "
        "(a voxel changes by the fraction of it the lesion fills); same subjects and masks",
    )
    p.add_argument(
        "--skull-strip-fraction",
        type=float,
        default=DEMO_DEFAULTS["skull_strip_fraction"],
        help="voxels less than this fraction brain are 0 (default %(default)s: the edge a real skull-stripped scan "
        "has after preprocessing; 0.05: the cohort before 2026-12-03, whose edge faded out)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        default=DEMO_DEFAULTS["spacing"],
        help="voxel size in mm (4: CPU demo; 1: full resolution)",
    )
    p.add_argument(
        "--contrast",
        type=_contrast_list,
        default=DEMO_DEFAULTS["contrast"],
        help=f"in-distribution contrast ({'|'.join(CONTRASTS)}), or several separated by commas (flair,t1): "
        "a multi-contrast cohort, each datalist item listing one image per contrast",
    )
    p.add_argument("--montage", default=None, help="also write a PNG montage of examples here")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that make the subjects (default: the CPUs, at most 8; the files are the same for any number)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=demo_data_command)

    q = subparsers.add_parser(
        "datalist",
        help="build (or --check) a MONAI/Decathlon datalist from file globs or a folder",
        description="Build a datalist from images (globs or a folder), masks matched by subject id, and labels; "
        "validate it and write JSON (or CSV by extension).",
    )
    q.add_argument("--images", nargs="+", default=None, help="glob(s) of images (quote them; ** recurses)")
    q.add_argument(
        "--folder", default=None, help="folder scanned recursively; masks/brain masks recognised by name"
    )
    q.add_argument(
        "--image-pattern", default="*", help="with --folder: glob on image file names, e.g. '*flair*'"
    )
    q.add_argument("--masks", nargs="+", default=None, help="glob(s) of voxel ground-truth masks")
    q.add_argument("--brain-masks", nargs="+", default=None, help="glob(s) of brain masks")
    q.add_argument("--labels", default=None, help="CSV with subject_id and label/semi_target/site")
    q.add_argument(
        "--section",
        default="auto",
        choices=["auto", "training", "validation", "test", "general"],
        help="auto: anomalous (label 1 or a mask) -> test, the others (label 0) split "
        "training/validation/test by --val-fraction and --test-fraction",
    )
    q.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="auto: healthy fraction for validation (thresholds; default %(default)s)",
    )
    q.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="auto: healthy fraction put in test beside the anomalous scans, so evaluate has both classes "
        "(default %(default)s; 0: test holds only anomalous scans)",
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the split")
    q.add_argument(
        "--subject-regex", default=None, help="regex for the subject id (group 'id' or 1) in the path"
    )
    q.add_argument("--no-header-check", action="store_true", help="do not read NIfTI headers when validating")
    q.add_argument("--out", default=None, help="output datalist (.json or .csv)")
    q.add_argument("--check", default=None, metavar="DATALIST", help="only validate this datalist")
    q.set_defaults(func=datalist_command)
