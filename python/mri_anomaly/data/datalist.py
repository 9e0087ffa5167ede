"""Datalists: MONAI/Decathlon JSON (and CSV), validated, with every problem named at once.

Layout (the Decathlon ``dataset.json`` shape that ``monai.data.load_decathlon_datalist`` reads)::

    {
      "name": "...", "description": "...",            # optional metadata (any scalar/dict keys)
      "training":   [{"image": "imgs/s01.nii.gz", "label": 0, "subject_id": "s01"}, ...],   # healthy
      "validation": [...],                              # healthy, for thresholds
      "test":       [{"image": "...", "label": 1, "mask": "masks/s40.nii.gz", "semi_target": -1}, ...],
      "general":    [...]                               # optional: broader distribution (likelihood ratios)
    }

Item keys (:data:`ITEM_KEYS`): ``image`` (required: a path, or a list of paths, one per contrast), ``label`` (0 healthy / 1 anomalous, for
evaluation; absent = unknown), ``mask`` (voxel ground truth, path, same grid as the image),
``brain_mask`` (path, same grid; used when the preprocessing config names it), ``semi_target``
(+1 known normal / -1 known anomaly / 0 unlabelled, for Deep SAD), ``site``, ``subject_id``.
Relative paths are resolved against the datalist's folder; :func:`load_datalist` returns absolute
paths and a ``subject_id`` on every item (from the file name when absent). A test item given as a bare
string (Decathlon style) becomes ``{"image": path}``.

CSV datalists have one row per item with columns ``section`` (empty: ``test``) plus the item keys;
empty cells are absent.

Multi-contrast items (several sequences of one subject, e.g. FLAIR + T1): ``image`` is a list of paths,
``"image": ["flair/s01.nii.gz", "t1/s01.nii.gz"]``; in CSV, further image columns named ``image_<anything>``
(``image``, ``image_t1``, ``image_t2``...) give the further contrasts, in column order. The first contrast is
the reference: the others are resampled onto its grid and stacked as channels, masks must match its grid, and
maps come back in its space (:func:`image_paths`, :func:`first_image`). Every item of a datalist must name
the same number of contrasts.

:func:`validate_datalist` returns every problem (missing files, unknown keys or sections, a mask
whose shape or affine differs from its image, labels outside {0, 1}, semi_target outside
{-1, 0, 1}, duplicate subject ids in a section, a non-3D image); :func:`load_datalist` raises one
:class:`DatalistError` listing them all.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mri_anomaly.data.io import InputFileError, read_header
from mri_anomaly.errors import UserInputError

__all__ = [
    "SECTIONS",
    "ITEM_KEYS",
    "PATH_KEYS",
    "DatalistError",
    "validate_datalist",
    "load_datalist",
    "write_datalist",
    "subject_id_from_path",
    "subject_id_of",
    "image_paths",
    "first_image",
    "contrast_count",
    "check_contrast_counts",
    "ImagesLike",
    "is_datalist_path",
    "items_from_images",
    "build_datalist",
    "find_images",
    "classify_folder",
]

SECTIONS: tuple[str, ...] = ("training", "validation", "test", "general")
ITEM_KEYS: tuple[str, ...] = ("image", "label", "mask", "brain_mask", "semi_target", "site", "subject_id")
PATH_KEYS: tuple[str, ...] = ("image", "mask", "brain_mask")
CSV_IMAGE_PREFIX = "image_"
"""CSV columns ``image_<anything>`` (``image_t1``, ``image_2``...) hold an item's further contrasts, in column order."""
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


class DatalistError(UserInputError):
    """A datalist with problems. ``.problems`` lists them all; ``.path`` is the datalist file."""

    def __init__(self, path: str | os.PathLike | None, problems: Sequence[str]) -> None:
        self.path = str(path) if path is not None else "<datalist>"
        self.problems = list(problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s):\n  " + "\n  ".join(self.problems))


def subject_id_from_path(path: str | os.PathLike) -> str:
    """The file name without ``.nii``/``.nii.gz`` (``/x/sub-01_T1w.nii.gz`` -> ``sub-01_T1w``)."""
    return _NIFTI_RE.sub("", Path(path).name) or Path(path).name


def subject_id_of(item: Mapping[str, Any]) -> str:
    """A datalist item's subject: its ``subject_id``, else its (first) image file name without ``.nii``/``.nii.gz``."""
    subject = item.get("subject_id")
    if subject not in (None, ""):
        return str(subject)
    image = first_image(item)
    return subject_id_from_path(image) if isinstance(image, (str, os.PathLike)) and str(image) else ""


def _is_path_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in v)


def image_paths(item: Mapping[str, Any]) -> list[str]:
    """The image file(s) of an item, one per contrast in order (empty for an in-memory tensor)."""
    image = item.get("image")
    if isinstance(image, (str, os.PathLike)):
        return [os.fspath(image)]
    if _is_path_list(image):
        return [os.fspath(p) for p in image]
    return []


def first_image(item: Mapping[str, Any]) -> Any:
    """The item's reference image: ``image``, or its first contrast when it lists several.

    Maps, masks and score tables refer to it: its grid and affine are those of the preprocessed input.
    """
    image = item.get("image")
    if isinstance(image, (list, tuple)) and image:
        return os.fspath(image[0]) if isinstance(image[0], os.PathLike) else image[0]
    return image


def contrast_count(item: Mapping[str, Any]) -> int:
    """Contrasts (image files) of an item: the length of a list ``image``, else 1."""
    image = item.get("image")
    return len(image) if isinstance(image, (list, tuple)) else 1


def check_contrast_counts(
    datalist: Mapping[str, Sequence[Mapping[str, Any]]],
    expected: int,
    source: str | os.PathLike | None = None,
) -> None:
    """Raise a :class:`DatalistError` naming the items whose number of contrasts is not ``expected``.

    Args:
        datalist: ``{section: [item, ...]}``.
        expected: contrasts per item the config asks for (``len(preprocessing.contrasts)``; 1 without it).
        source: the datalist file, for the message (None: ``<datalist>``).
    """
    bad = [
        f"{sec}[{i}] ({subject_id_of(it) or '?'}): {contrast_count(it)} image file(s)"
        for sec, items in datalist.items()
        if isinstance(items, Sequence) and not isinstance(items, str)
        for i, it in enumerate(items)
        if isinstance(it, Mapping) and contrast_count(it) != expected
    ]
    if bad:
        what = "one image file" if expected == 1 else f"{expected} image files (preprocessing.contrasts)"
        shown = bad[:5] + ([f"... and {len(bad) - 5} more"] if len(bad) > 5 else [])
        hint = (
            "set preprocessing.contrasts (and in_channels) to the contrasts the datalist lists"
            if expected == 1
            else "list that many contrasts in every item's image, or change preprocessing.contrasts and in_channels"
        )
        raise DatalistError(
            source, [f"the config expects {what} per item, but {len(bad)} item(s) differ ({hint}):", *shown]
        )


def _resolve(p: Any, base: Path | None) -> str:
    s = os.path.expanduser(str(p))
    if base is not None and not os.path.isabs(s):
        s = str(base / s)
    return os.path.normpath(s)


def _normalise(datalist: Mapping[str, Any], base_dir: Path | None) -> tuple[dict[str, list[dict]], list[str]]:
    problems: list[str] = []
    out: dict[str, list[dict]] = {}
    for sec, entries in datalist.items():
        if sec not in SECTIONS:
            if isinstance(entries, list):
                problems.append(f"unknown section {sec!r} (known: {', '.join(SECTIONS)})")
            continue
        if not isinstance(entries, list):
            problems.append(f"section {sec!r}: expected a list of items, got {type(entries).__name__}")
            continue
        items: list[dict] = []
        for i, it in enumerate(entries):
            if isinstance(it, (str, os.PathLike)):
                it = {"image": str(it)}
            if not isinstance(it, Mapping):
                problems.append(f"{sec}[{i}]: expected an object with 'image', got {type(it).__name__}")
                continue
            it = dict(it)
            for k in PATH_KEYS:
                if k in it and isinstance(it[k], (str, os.PathLike)):
                    it[k] = _resolve(it[k], base_dir)
            if _is_path_list(it.get("image")):
                it["image"] = [_resolve(p, base_dir) for p in it["image"]]
                if len(it["image"]) == 1:
                    it["image"] = it["image"][0]  # a list of one is a plain single-contrast item
            if isinstance(it.get("subject_id"), (int, np.integer)) and not isinstance(it["subject_id"], bool):
                it["subject_id"] = str(it["subject_id"])  # 101 and "101" are the same subject
            if "subject_id" not in it and isinstance(first_image(it), str):
                it["subject_id"] = subject_id_from_path(first_image(it))
            items.append(it)
        out[sec] = items
    return out, problems


def validate_datalist(
    datalist: Mapping[str, Any],
    base_dir: str | os.PathLike | None = None,
    check_files: bool = True,
    check_headers: bool = True,
) -> list[str]:
    """Every problem of a datalist, one message each (empty: valid).

    Args:
        datalist: the parsed JSON (sections of items).
        base_dir: folder relative paths are resolved against (None: as given).
        check_files: check that image/mask/brain_mask files exist.
        check_headers: read NIfTI headers: the image is 3D, masks match their image's shape and affine.

    Returns:
        messages like ``"test[3] (s40): mask shape (91, 109, 91) differs from image shape (40, 48, 40)"``.
    """
    if not isinstance(datalist, Mapping):
        return [f"expected a JSON object with sections {', '.join(SECTIONS)}, got {type(datalist).__name__}"]
    norm, problems = _normalise(datalist, Path(base_dir) if base_dir is not None else None)
    if not any(norm.get(s) for s in SECTIONS):
        problems.append(f"no items: none of the sections {', '.join(SECTIONS)} has any")
    first_count: tuple[str, int] | None = None  # (where, contrasts) of the first item: every item must agree
    for sec, items in norm.items():
        seen: dict[str, int] = {}
        for i, it in enumerate(items):
            where = f"{sec}[{i}]" + (f" ({it['subject_id']})" if "subject_id" in it else "")
            if "image" in it and (isinstance(it["image"], str) or _is_path_list(it["image"])):
                n = contrast_count(it)
                if first_count is None:
                    first_count = (where, n)
                elif n != first_count[1]:
                    problems.append(
                        f"{where}: {n} image(s) (contrasts), but {first_count[0]} has {first_count[1]}; every "
                        "item must list the same contrasts in the same order"
                    )
            unknown = [k for k in it if k not in ITEM_KEYS]
            if unknown:
                problems.append(
                    f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(ITEM_KEYS)})"
                )
            if "image" not in it:
                problems.append(f"{where}: missing 'image'")
            for k in PATH_KEYS:
                if k == "image" and _is_path_list(it.get(k)) and it[k]:
                    continue  # several contrasts
                if k in it and not isinstance(it[k], str):
                    what = (
                        "a file path or a list of file paths (one per contrast)"
                        if k == "image"
                        else "a file path"
                    )
                    problems.append(f"{where}: {k!r} must be {what}, got {it[k]!r}")
            if "label" in it and not (_is_int_like(it["label"]) and int(it["label"]) in (0, 1)):
                problems.append(f"{where}: label {it['label']!r} is not 0 (healthy) or 1 (anomalous)")
            if "semi_target" in it and not (
                _is_int_like(it["semi_target"]) and int(it["semi_target"]) in (-1, 0, 1)
            ):
                problems.append(f"{where}: semi_target {it['semi_target']!r} is not -1, 0 or 1")
            sid = it.get("subject_id")
            if sid is not None and not isinstance(sid, str):
                problems.append(f"{where}: subject_id {sid!r} must be text or an integer")
            elif sid is not None:
                if sid in seen:
                    problems.append(f"{where}: duplicate subject_id {sid!r} (also {sec}[{seen[sid]}])")
                seen.setdefault(sid, i)
            if not check_files:
                continue
            headers: dict[str, tuple] = {}
            files = [("image", p) for p in image_paths(it)]
            files += [(k, it[k]) for k in PATH_KEYS if k != "image" and isinstance(it.get(k), str)]
            for j, (k, path) in enumerate(files):
                name = f"image[{j}]" if k == "image" and contrast_count(it) > 1 else k
                if not os.path.isfile(path):
                    problems.append(f"{where}: {name} file not found: {path}")
                    continue
                if check_headers:
                    try:
                        header = read_header(path)
                    except InputFileError as e:
                        problems.append(f"{where}: {name}: {e}")
                        continue
                    if k == "image" and len(header[0]) != 3:
                        problems.append(f"{where}: {name} is not 3D (shape {header[0]}): {path}")
                    headers.setdefault(k, header)  # the first contrast is the reference grid
            for k in ("mask", "brain_mask"):
                if k in headers and "image" in headers:
                    (ishape, iaff), (mshape, maff) = headers["image"], headers[k]
                    whose = "image" if contrast_count(it) == 1 else "first image (contrast)"
                    if tuple(mshape) != tuple(ishape):
                        problems.append(
                            f"{where}: {k} shape {tuple(mshape)} differs from {whose} shape "
                            f"{tuple(ishape)} ({it[k]})"
                        )
                    elif not np.allclose(iaff, maff, atol=1e-3):
                        problems.append(
                            f"{where}: {k} affine differs from the {whose}'s (max difference "
                            f"{float(np.abs(iaff - maff).max()):.3g}) ({it[k]})"
                        )
    return problems


def _is_int_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and float(v).is_integer()


def _read_csv(path: Path) -> dict[str, list[dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatalistError(path, [f"not UTF-8 text ({e}); save the CSV as UTF-8"]) from None
    try:
        return _parse_csv(path, text)
    except csv.Error as e:
        raise DatalistError(path, [f"not a valid CSV ({e})"]) from None


def _parse_csv(path: Path, text: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise DatalistError(
                path, [f"CSV datalist needs a header with an 'image' column, got {reader.fieldnames}"]
            )
        extra_images = [c for c in reader.fieldnames if c.startswith(CSV_IMAGE_PREFIX)]
        for row in reader:
            sec = (row.pop("section", None) or "test").strip()
            item: dict[str, Any] = {}
            contrasts = [row.pop(c, None) for c in extra_images]
            for k, v in row.items():
                if k is None or v is None or str(v).strip() == "":
                    continue
                v = str(v).strip()
                if k in ("label", "semi_target"):
                    try:
                        f_ = float(v)
                        item[k] = int(f_) if f_.is_integer() else f_
                    except ValueError:
                        item[k] = v
                else:
                    item[k] = v
            contrasts = [str(v).strip() for v in contrasts if v is not None and str(v).strip()]
            if contrasts:  # image_<x> columns: further contrasts of the item, in column order
                item["image"] = [item["image"], *contrasts] if "image" in item else contrasts
            out.setdefault(sec, []).append(item)
    return out


def load_datalist(
    path: str | os.PathLike, check_files: bool = True, check_headers: bool = True
) -> dict[str, list[dict]]:
    """Load and validate a JSON or CSV datalist.

    Args:
        path: ``.json`` (Decathlon layout) or ``.csv`` (``section`` column plus item keys; ``image_<x>`` columns
            for further contrasts).
        check_files: check that the files exist.
        check_headers: read NIfTI headers (3D image; mask shape and affine equal to the image's).

    Returns:
        ``{section: [item, ...]}`` for the sections present (among :data:`SECTIONS`), paths absolute,
        ``subject_id`` filled in from the (first) image's file name where absent, ``label``/``semi_target`` as
        int; a multi-contrast item's ``image`` is a list of paths.

    Raises:
        DatalistError: unreadable file or any problem (all listed in ``.problems``), including items with
            different numbers of contrasts.
    """
    p = Path(path)
    if not p.is_file():
        raise DatalistError(p, ["datalist file not found"])
    if p.suffix.lower() == ".csv":
        raw: Any = _read_csv(p)
    else:
        try:
            raw = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatalistError(p, [f"not valid JSON: {e}"]) from e
    base = p.resolve().parent
    problems = validate_datalist(raw, base_dir=base, check_files=check_files, check_headers=check_headers)
    if problems:
        raise DatalistError(p, problems)
    norm, _ = _normalise(raw, base)
    for items in norm.values():
        for it in items:
            for k in ("label", "semi_target"):
                if k in it:
                    it[k] = int(it[k])
    return norm


def write_datalist(
    datalist: Mapping[str, Any],
    path: str | os.PathLike,
    relative: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a datalist as JSON (or CSV if ``path`` ends in ``.csv``).

    Args:
        datalist: ``{section: [item, ...]}``.
        path: output file (parent folders are made).
        relative: store paths under the output's folder relative to it (the folder stays movable).
        metadata: extra top-level JSON keys (``name``, ``description``, ...); ignored for CSV.

    Returns:
        the written path.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    base = p.resolve().parent
    out: dict[str, Any] = dict(metadata or {})
    for sec in SECTIONS:
        if sec not in datalist:
            continue
        items = []
        for it in datalist[sec]:
            it = dict(it)
            for k in PATH_KEYS:
                if k in it and relative:
                    if k == "image" and _is_path_list(it[k]):
                        it[k] = [_relative(q, base) for q in it[k]]
                    else:
                        it[k] = _relative(it[k], base)
            items.append(it)
        out[sec] = items
    if p.suffix.lower() == ".csv":
        n = max(
            (contrast_count(it) for its in out.values() if isinstance(its, list) for it in its), default=1
        )
        extra = [f"{CSV_IMAGE_PREFIX}{j + 1}" for j in range(1, n)]
        cols = ["section", "image", *extra, *ITEM_KEYS[1:]]
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for sec in SECTIONS:
                for it in out.get(sec, []):
                    row = {"section": sec, **{k: it.get(k, "") for k in ITEM_KEYS}}
                    paths = it["image"] if isinstance(it.get("image"), list) else [it.get("image", "")]
                    row.update({"image": paths[0], **dict(zip(extra, paths[1:]))})
                    w.writerow(row)
    else:
        p.write_text(json.dumps(out, indent=2) + "\n")
    return p


def _relative(path: Any, base: Path) -> str:
    ap = Path(os.path.abspath(str(path)))
    try:
        return ap.relative_to(base).as_posix()
    except ValueError:
        return str(ap)


_MASK_RE = re.compile(r"(mask|msk|seg|label|lesion|consensus|otmulticlass|roi)", re.IGNORECASE)
_BRAIN_MASK_RE = re.compile(r"brain[_\-]?mask", re.IGNORECASE)
_STRIP_TOKENS = re.compile(
    r"((^|[_\-.])(brain[_\-]?mask|mask|msk|seg|label|labels|lesion|lesion_consensus|consensus|roi|"
    r"t1w?|t2w?|flair|dwi|adc|"
    r"pd|t1c|t1post|image|img|subtrmeandivstd|multiclass|ot))+$",
    re.IGNORECASE,
)


def _key_of(path: str, regex: re.Pattern | None) -> str:
    name = subject_id_from_path(path)
    if regex is not None:
        m = regex.search(Path(path).as_posix())
        if m is None:
            raise UserInputError(f"--subject-regex {regex.pattern!r} does not match {path}")
        return m.group("id") if "id" in regex.groupindex else m.group(1 if regex.groups else 0)
    return _STRIP_TOKENS.sub("", name) or Path(path).parent.name or name


def _subject_keys(paths: Sequence[str], regex: re.Pattern | None) -> list[str]:
    keys = [_key_of(p, regex) for p in paths]
    if regex is None and len(set(keys)) < len(keys):  # e.g. BRATS: same file name in every subject folder
        keys = [f"{Path(p).parent.name}" if keys.count(k) > 1 else k for p, k in zip(paths, keys)]
    return keys


def find_images(patterns: Iterable[str]) -> list[str]:
    """Sorted absolute paths matching the glob patterns (``**`` recursive); NIfTI files only."""
    out: set[str] = set()
    for pat in patterns:
        for f in glob.glob(os.path.expanduser(pat), recursive=True):
            if os.path.isfile(f) and _NIFTI_RE.search(f):
                out.add(os.path.abspath(f))
    return sorted(out)


def build_datalist(
    images: Sequence[str],
    masks: Sequence[str] = (),
    brain_masks: Sequence[str] = (),
    labels: Mapping[str, Mapping[str, Any]] | None = None,
    section: str = "auto",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    subject_regex: str | None = None,
) -> dict[str, list[dict]]:
    """A datalist from lists of files, masks matched to images by subject id.

    The subject id of a file is its name without ``.nii(.gz)`` and without trailing contrast or mask
    tokens (``_T1w``, ``_FLAIR``, ``_mask``, ``_seg``, ``_lesion_consensus`` ...), or the group ``id``
    (else group 1) of ``subject_regex`` searched in the path; when file names repeat across subject
    folders (BRATS), the parent folder's name.

    Args:
        images: image files.
        masks: voxel ground-truth masks (matched by subject id; a mask implies ``label`` 1 unless given).
        brain_masks: brain masks (matched by subject id).
        labels: ``{subject_id: {"label": 0|1, "semi_target": ..., "site": ...}}`` (e.g. from a CSV).
        section: ``auto`` (labelled/masked anomalous -> ``test``; the rest, taken as healthy (label 0), split
            into ``training``/``validation``/``test``), or one section for all.
        val_fraction: fraction of healthy subjects for ``validation`` (auto; at least one when there are 2+).
        test_fraction: fraction of healthy subjects for ``test`` (auto; at least one when there are 3+), so that
            ``evaluate`` on ``test`` has both classes. ``training`` always keeps at least one.
        seed: seed of the split.
        subject_regex: regular expression for the subject id.

    Returns:
        ``{section: [item, ...]}`` with absolute paths.

    Raises:
        ValueError: duplicate subject ids among images, or a mask that matches no image.
    """
    if section != "auto" and section not in SECTIONS:
        raise UserInputError(f"section must be 'auto' or one of {SECTIONS}, got {section!r}")
    regex = re.compile(subject_regex) if subject_regex else None
    images = [os.path.abspath(p) for p in images]
    ids = _subject_keys(images, regex)
    dup = sorted({k for k in ids if ids.count(k) > 1})
    if dup:
        raise UserInputError(
            f"several images share a subject id: {dup}; narrow the image pattern or give --subject-regex"
        )
    by_id = {k: {"image": p, "subject_id": k} for k, p in zip(ids, images)}
    for key, files in (("mask", masks), ("brain_mask", brain_masks)):
        files = [os.path.abspath(p) for p in files]
        unmatched = []
        for k, p in zip(_subject_keys(files, regex), files):
            if k in by_id:
                by_id[k][key] = p
            else:
                unmatched.append(p)
        if unmatched:
            raise UserInputError(
                f"{len(unmatched)} {key} file(s) match no image by subject id: {unmatched[:5]}"
            )
    labels = labels or {}
    for k, it in by_id.items():
        extra = dict(labels.get(k, {}))
        it.update({kk: v for kk, v in extra.items() if kk in ("label", "semi_target", "site")})
        if "label" not in it and "mask" in it:
            it["label"] = 1
    items = [by_id[k] for k in sorted(by_id)]
    if section != "auto":
        return {section: items}
    anomalous = [it for it in items if it.get("label") == 1]
    healthy = [it for it in items if it.get("label") != 1]
    rng = random.Random(seed)
    rng.shuffle(healthy)
    n_val = int(round(val_fraction * len(healthy)))
    n_test = int(round(test_fraction * len(healthy)))
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1 and val_fraction + test_fraction < 1):
        raise UserInputError(
            f"need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1, got "
            f"{val_fraction} and {test_fraction}"
        )
    if len(healthy) >= 2 and val_fraction > 0:
        n_val = max(n_val, 1)
    if len(healthy) >= 3 and test_fraction > 0:
        n_test = max(n_test, 1)
    while healthy and n_val + n_test >= len(healthy):  # training keeps at least one healthy scan
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    val, test_h, train = healthy[:n_val], healthy[n_val : n_val + n_test], healthy[n_val + n_test :]
    for it in train + val + test_h:
        it.setdefault("label", 0)
    out: dict[str, list[dict]] = {}
    for sec, its in (("training", train), ("validation", val), ("test", test_h + anomalous)):
        if its:
            out[sec] = sorted(its, key=lambda x: x["subject_id"])
    return out


def classify_folder(
    folder: str | os.PathLike, image_pattern: str = "*"
) -> tuple[list[str], list[str], list[str]]:
    """Split the NIfTI files under ``folder`` (recursively) into (images, masks, brain_masks) by name.

    Brain masks match ``brain_mask``/``brainmask``; masks match mask/msk/seg/label/lesion/consensus/roi;
    images are the rest that match the glob ``image_pattern`` (on the file name, case-insensitive).
    """
    files = find_images([os.path.join(str(folder), "**", "*")])
    images, masks, brains = [], [], []
    for f in files:
        name = Path(f).name
        if _BRAIN_MASK_RE.search(name):
            brains.append(f)
        elif _MASK_RE.search(name):
            masks.append(f)
        elif fnmatch.fnmatch(name.lower(), image_pattern.lower()):
            images.append(f)
    return images, masks, brains


ImagesLike = str | os.PathLike | Sequence[str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, Any]]
"""NIfTI paths (a list of paths: one subject's contrasts; or datalist items ``{"image": path, ...}``), or the
path of a datalist (``.json``/``.csv``)."""


def is_datalist_path(images: Any) -> bool:
    """A path ending in ``.json`` or ``.csv`` (a datalist, not an image)."""
    return isinstance(images, (str, os.PathLike)) and Path(images).suffix.lower() in (".json", ".csv")


def items_from_images(images: ImagesLike, section: str, what: str) -> list[dict[str, Any]]:
    """Datalist items from paths, items or a datalist file (its ``section``)."""
    if is_datalist_path(images):
        data = load_datalist(images, check_files=False, check_headers=False)
        if section not in data:
            raise UserInputError(
                f"{images}: the datalist has no {section!r} section (it has: {', '.join(sorted(data))})"
            )
        return [dict(it) for it in data[section]]
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    items = []
    for i, image in enumerate(images):
        if isinstance(image, Mapping):
            items.append(dict(image))
        elif isinstance(image, (str, os.PathLike)):
            items.append({"image": os.path.abspath(os.fspath(image))})
        elif _is_path_list(image) and len(image) > 0:  # one subject's contrasts
            items.append({"image": [os.path.abspath(os.fspath(p)) for p in image]})
        else:
            raise TypeError(
                f"{what}[{i}]: expected a NIfTI path, a list of paths (one per contrast) or a datalist item, "
                f"got {type(image).__name__}"
            )
    if not items:
        raise UserInputError(f"{what}: no images given")
    return items
