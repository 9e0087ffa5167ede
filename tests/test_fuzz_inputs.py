"""Property-based tests (hypothesis) of the parsers users feed: datalists (JSON, CSV), configs and ``--set``
values, NIfTI files (random shapes, dtypes, affines, scl_slope, truncated bytes).

The property everywhere: an input ends in a correct result or in a clear error of the package's user-error
type (:class:`~mri_anomaly.errors.UserInputError`) whose message names the file (or the option) and the problem;
never another exception, a hang or a silent default. Example counts are small and derandomised so the whole
module runs in well under a minute and the same examples run every time.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import string
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mri_anomaly.data import TINY_PREPROCESSING, VolumeDataset, load_datalist, load_volume  # noqa: E402
from mri_anomaly.data.datalist import DatalistError  # noqa: E402
from mri_anomaly.data.io import InputFileError  # noqa: E402
from mri_anomaly.errors import UserInputError  # noqa: E402
from mri_anomaly.training.config import ConfigError, load_config, parse_override  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW_FUZZ = settings(FUZZ, max_examples=60)

# ------------------------------------------------------------------------------------------ value strategies
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_item_key = st.sampled_from(
    ["image", "label", "mask", "brain_mask", "semi_target", "site", "subject_id", "other"]
)
_any_item = st.dictionaries(
    _item_key, _scalars | st.sampled_from(["a.nii.gz", "s01.nii.gz", "", "\x00bad", "../x.nii"]), max_size=5
)
_plausible_item = st.fixed_dictionaries(
    {"image": st.sampled_from(["a.nii.gz", "sub/b.nii", "/abs/c.nii.gz", "~/d.nii.gz", "", "\x00bad.nii"])},
    optional={
        "label": st.sampled_from([0, 1, 0.0, 1.0, 2, -1, 0.5, "1", None, True, float("nan")]),
        "semi_target": st.sampled_from([-1, 0, 1, 1.0, 2, "x", None]),
        "subject_id": st.text(max_size=6) | st.integers() | st.lists(st.integers(), max_size=2) | st.none(),
        "mask": st.sampled_from(["m.nii.gz", 3, None]),
        "site": st.text(max_size=4) | st.integers(),
    },
)
_item = _plausible_item | _plausible_item | _any_item
_section = st.sampled_from(["training", "validation", "test", "general", "typo"])
_datalist = st.dictionaries(_section, st.lists(_item, max_size=4) | _json, max_size=4) | _json


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz_"))


# ------------------------------------------------------------------------------------------ datalists
@FUZZ
@given(content=_datalist, check_files=st.booleans())
def test_any_json_datalist_loads_or_names_the_file_and_its_problems(content, check_files):
    path = _scratch() / "datalist.json"
    path.write_text(json.dumps(content))
    try:
        out = load_datalist(path, check_files=check_files, check_headers=False)
    except DatalistError as err:
        assert str(err).startswith(f"{path}: ") and err.problems
        event("refused")
        return
    event("loaded")
    assert set(out) <= {"training", "validation", "test", "general"} and any(out.values())
    for items in out.values():
        for it in items:
            assert isinstance(it["image"], str) and Path(it["image"]).is_absolute()
            assert it.get("label", 0) in (0, 1) and it.get("semi_target", 0) in (-1, 0, 1)
            assert isinstance(it["subject_id"], str) or "subject_id" in it


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_json_datalist_are_a_clear_error(raw):
    path = _scratch() / "datalist.json"
    path.write_bytes(raw)
    try:
        load_datalist(path, check_files=False)
    except DatalistError as err:
        assert str(err).startswith(f"{path}: ")


_csv_cell = st.text(alphabet=string.printable + "é\x00", max_size=10)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["section", "image", "label", "mask", "semi_target", "site", "subject_id", "x", ""]),
        max_size=6,
    ),
    rows=st.lists(st.lists(_csv_cell, max_size=7), max_size=5),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_any_csv_datalist_loads_or_names_the_file_and_its_problems(header, rows, encoding):
    path = _scratch() / "datalist.csv"
    text = "\n".join(",".join(r) for r in [header, *rows])
    path.write_bytes(text.encode(encoding, errors="replace"))
    try:
        out = load_datalist(path, check_files=False)
    except DatalistError as err:
        assert str(err).startswith(f"{path}: ") and err.problems
        return
    for items in out.values():
        for it in items:
            assert isinstance(it["image"], str) and it.get("label", 0) in (0, 1)


# ------------------------------------------------------------------------------------------ configs and --set
def _base_config() -> dict:
    return yaml.safe_load((CONFIGS / "glow3d.yaml").read_text())


_config_key = st.sampled_from([
    "method", "spatial_dims", "in_channels", "seed", "model.levels", "model.steps", "model.hidden_channels",
    "model.coupling", "preprocessing.spacing", "preprocessing.spatial_size", "preprocessing.divisible_by",
    "preprocessing.intensity.lower", "preprocessing.crop_margin", "preprocessing.orientation",
    "train.batch_size", "train.phases.train.steps", "train.phases.train.lr", "train.grad_clip",
    "score.specificity", "score.top_k", "slices.min_brain_fraction", "preprocessing", "model", "train.phases", "nope.x",
])  # fmt: skip
_yaml_value = st.sampled_from([
    "1", "0", "-1", "3", "2.5", "1e-3", "1e400", ".nan", ".inf", "-.inf", "true", "null", "''", "abc", "[1, 2]",
    "[40, 48, 40]", "[8, 8, 8]", "[0, 8, 8]", "[1e12, 8, 8]", "{a: 1}", "[", "!!binary aGk=", "RAS", "XYZ",
    "99999999999999999999999", "2001-12-14", "glow", "deep-sad", "64", "1000000000",
])  # fmt: skip


@FUZZ
@given(overrides=st.lists(st.tuples(_config_key, _yaml_value), max_size=4))
def test_any_set_overrides_give_a_valid_config_or_list_the_problems(overrides):
    texts = [f"{k}={v}" for k, v in overrides]
    try:
        config = load_config(CONFIGS / "glow3d.yaml", texts)
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        event("refused")
        return
    event("valid")
    # a config that validates must fit together (no failure deferred to the first forward pass)
    levels = config["model"]["levels"]
    size = config["preprocessing"].get("spatial_size") or [config["preprocessing"]["divisible_by"]] * 3
    assert isinstance(levels, int) and levels >= 1 and all(s % 2**levels == 0 for s in size)
    assert 0 <= config["seed"] < 2**32 and config["in_channels"] == 1


@FUZZ
@given(text=st.text(max_size=40))
def test_parse_override_never_crashes(text):
    try:
        parts, _ = parse_override(text)
    except ConfigError as err:
        assert "--set" in str(err)
        return
    assert parts and all(parts)


@FUZZ
@given(content=_json, raw=st.binary(max_size=60))
def test_any_yaml_file_as_a_config_names_the_file(content, raw):
    folder = _scratch()
    for path, data in ((folder / "a.yaml", yaml.safe_dump(content).encode()), (folder / "b.yaml", raw)):
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as err:
            assert str(path) in str(err), str(err)


# ------------------------------------------------------------------------------------------ NIfTI files
_dtypes = st.sampled_from(
    [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64, np.complex64]
)


@st.composite
def _nifti(draw):
    """Mostly plausible scans (3D, a few voxels per axis, a sane affine) and every kind of breakage."""
    ndim = draw(st.sampled_from([3, 3, 3, 3, 4, 1, 2, 5]))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    dtype = draw(_dtypes)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = (rng.normal(size=shape) * 50 + 50).astype(dtype)
    affine = np.eye(4)
    kind = draw(st.sampled_from(["eye", "eye", "scaled", "rotated", "singular", "nan", "huge", "tiny"]))
    if kind == "scaled":
        affine[:3, :3] = np.diag(rng.uniform(0.5, 8.0, 3) * rng.choice([-1, 1], 3))
        affine[:3, 3] = rng.normal(size=3) * 50
    elif kind == "rotated":
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        affine[:3, :3] = q * rng.uniform(1.0, 4.0, 3)
    elif kind == "singular":
        affine[:3, :3] = 0.0
    elif kind == "nan":
        affine[0, 0] = np.nan
    elif kind == "huge":
        affine[:3, :3] *= 1e30
    elif kind == "tiny":
        affine[:3, :3] *= 1e-6
    slope = draw(st.sampled_from([None, None, None, 0.0, 1.0, 2.0, -2.0, 1e-30, 1e38, np.nan, np.inf]))
    inter = draw(st.sampled_from([None, 0.0, 5.0, np.nan]))
    cut = draw(st.sampled_from([None, None, None, 0.0, 0.1, 0.5, 0.9, 0.999]))
    gz = draw(st.booleans())
    return data, affine, slope, inter, cut, gz


def _write_nifti(folder: Path, spec) -> Path:
    """Write the file as a broken writer would: the header fields are patched in the bytes (nibabel refuses to
    set a NaN affine or slope itself). NIfTI-1 offsets: scl_slope 112, scl_inter 116, qform_code 252,
    sform_code 254, srow_x/y/z 280/296/312."""
    data, affine, slope, inter, cut, gz = spec
    img = nib.Nifti1Image(data, np.eye(4), dtype=data.dtype)
    buffer = io.BytesIO()
    img.to_file_map(nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer}))
    raw = bytearray(buffer.getvalue())
    raw[252:256] = np.array([0, 1], "<i2").tobytes()  # qform_code 0, sform_code 1: the affine is the srows
    raw[280:328] = affine[:3, :4].astype("<f4").tobytes()
    if slope is not None:
        raw[112:120] = np.array([slope, 0.0 if inter is None else inter], "<f4").tobytes()
    if cut is not None:
        raw = raw[: int(len(raw) * cut)]
    path = folder / ("scan.nii.gz" if gz else "scan.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


@SLOW_FUZZ
@given(spec=_nifti())
def test_any_nifti_loads_as_a_finite_3d_volume_or_names_the_file(spec):
    path = _write_nifti(_scratch(), spec)
    try:
        arr, affine = load_volume(path)
    except InputFileError as err:
        assert str(err).startswith(f"{path}: ") and err.problem
        event(f"refused: {err.problem.split('(')[0][:40]}")
        return
    event("loaded")
    assert arr.ndim == 3 and min(arr.shape) >= 2 and np.isfinite(arr).all() and arr.dtype == np.float32
    assert np.isfinite(affine).all() and abs(np.linalg.det(affine[:3, :3])) > 0
    data, _, slope, inter, cut, _ = spec
    assert cut is None  # a truncated file never loads
    assert not np.iscomplexobj(data), "complex voxels must be refused, not silently cast"
    scaled = slope is not None and slope != 0 and math.isfinite(slope)  # nibabel ignores slope 0 / NaN / inf
    expected = data.astype(np.float64) * (slope if scaled else 1.0) + (inter if scaled and inter else 0.0)
    np.testing.assert_allclose(arr, expected.reshape(arr.shape).astype(np.float32), rtol=1e-5, atol=1e-3)


@SLOW_FUZZ
@given(spec=_nifti())
def test_any_nifti_through_the_preprocessing_is_an_item_or_an_error_item_naming_it(spec):
    """What ``score`` does per scan: only an :class:`InputFileError` may stop one scan; nothing else escapes."""
    path = _write_nifti(_scratch(), spec)
    dataset = VolumeDataset([{"image": str(path)}], TINY_PREPROCESSING, cache="none", on_error="return")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item = dataset[0]
    if "error" in item:
        assert item["error"].startswith(f"{path}: ")
        event(f"refused: {item['error'][len(str(path)) + 2 :].split('(')[0][:40]}")
        return
    event("preprocessed")
    assert not np.iscomplexobj(spec[0]), "complex voxels must be refused, not silently cast"
    image = item["image"]
    assert tuple(image.shape) == (1, *TINY_PREPROCESSING["spatial_size"])
    assert np.isfinite(image.numpy()).all() and float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_user_errors_of_the_parsers_are_user_input_errors():
    assert issubclass(DatalistError, UserInputError) and issubclass(ConfigError, UserInputError)
    assert issubclass(InputFileError, UserInputError)


# ------------------------------------------------------------------------------------------ what the fuzzing found
def _nifti_file(folder: Path, data: np.ndarray, affine: np.ndarray, name: str = "scan.nii.gz") -> Path:
    return _write_nifti(folder, (data, affine, None, None, None, name.endswith(".gz")))


@pytest.mark.parametrize("kind", ["singular", "nan", "huge"])
def test_an_unusable_affine_is_refused_with_the_file_not_passed_to_monai(kind, tmp_path):
    affine = np.eye(4)
    if kind == "singular":
        affine[2, :3] = 0.0  # a lost third axis
    elif kind == "nan":
        affine[1, 1] = np.nan
    else:
        affine[:3, :3] *= 1e30
    path = _nifti_file(tmp_path, np.random.default_rng(0).normal(size=(6, 6, 6)).astype(np.float32), affine)
    with pytest.raises(InputFileError, match="affine|field of view") as info:
        load_volume(path)
    assert str(info.value).startswith(f"{path}: ")
    item = VolumeDataset([{"image": str(path)}], TINY_PREPROCESSING, cache="none", on_error="return")[0]
    assert item["error"] == str(info.value)


def test_complex_voxels_are_refused_not_cast_to_their_real_part(tmp_path):
    data = (np.random.default_rng(0).normal(size=(6, 6, 6)) + 1j).astype(np.complex64)
    path = _nifti_file(tmp_path, data, np.eye(4))
    item = VolumeDataset([{"image": str(path)}], TINY_PREPROCESSING, cache="none", on_error="return")[0]
    assert item["error"].startswith(f"{path}: voxel type complex64 is not a real number per voxel")


def test_text_that_is_not_utf8_is_a_clear_datalist_or_config_error(tmp_path):
    csv_path, yaml_path = tmp_path / "d.csv", tmp_path / "c.yaml"
    csv_path.write_bytes("image,label\nä.nii.gz,1\n".encode("utf-16"))
    with pytest.raises(DatalistError, match="not UTF-8 text") as info:
        load_datalist(csv_path, check_files=False)
    assert str(info.value).startswith(f"{csv_path}: ")
    yaml_path.write_bytes(b"method: glow\x80\n")
    with pytest.raises(ConfigError, match=f"in {yaml_path}:\n  - not UTF-8 text"):
        load_config(yaml_path)


def test_subject_ids_must_be_text_or_integers(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps(
            {"training": [{"image": "a.nii.gz", "subject_id": []}, {"image": "b.nii.gz", "subject_id": 7}]}
        )
    )
    with pytest.raises(
        DatalistError, match=r"training\[0\] \(\[\]\): subject_id \[\] must be text or an integer"
    ):
        load_datalist(path, check_files=False)
    path.write_text(json.dumps({"training": [{"image": "b.nii.gz", "subject_id": 7}]}))
    assert load_datalist(path, check_files=False)["training"][0]["subject_id"] == "7"


@pytest.mark.parametrize("override, problem", [
    ("model.levels=1000000000", "model.levels: must be an integer from 1 to 16, got 1000000000"),
    ("model.levels=0", "model.levels: must be an integer from 1 to 16, got 0"),
    ("seed=99999999999999999999", "seed: must be < 2**32 (NumPy's limit), got 99999999999999999999"),
    ("preprocessing.spatial_size=[1000000000000, 8, 8]",
     "preprocessing.spatial_size: expected null or 3 integers from 1 to 2048, got [1000000000000, 8, 8]"),
    ("preprocessing.spacing=[1e-9, 1, 1]", "preprocessing.spacing: expected null or 3 numbers from 0.1 to 100 (mm), got [1e-09, 1, 1]"),
])  # fmt: skip
def test_config_values_that_crashed_hung_or_failed_late_are_reported_on_load(override, problem):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "glow3d.yaml", [override])
    assert problem in info.value.problems


def test_a_model_value_the_constructor_refuses_is_a_config_error():
    from mri_anomaly.training import build_method

    config = load_config(CONFIGS / "glow3d.yaml", ["model.steps=0"])
    with pytest.raises(
        ConfigError, match="model: method 'glow' refused its arguments: steps must be a positive"
    ):
        build_method(config)


@FUZZ
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["s01", "s02", "", " s03 ", "s01"]),
            st.sampled_from(["", "0", "1", "1.0", "0.5", "1.7", "nan", "inf", "-1", "x", "1e400"]),
            st.sampled_from(["", "A", "b"]),
        ),
        max_size=5,
    ),
    header=st.sampled_from(["subject_id,label,site", "subject,label,site", "subject_id,semi_target,site"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
)
def test_any_labels_csv_reads_exactly_or_names_the_file_and_line(rows, header, encoding):
    from mri_anomaly.data.commands import _read_labels

    path = _scratch() / "labels.csv"
    path.write_bytes("\n".join([header, *(",".join(r) for r in rows)]).encode(encoding))
    try:
        out = _read_labels(str(path))
    except UserInputError as err:
        assert str(err).startswith(f"{path}: ")
        event("refused")
        return
    event("read")
    column = header.split(",")[1]
    assert len(out) == len(rows)
    for subject, value, site in rows:
        entry = out[subject.strip()]
        assert entry.get(column) == (int(float(value)) if value else None)
        assert float(value or 0).is_integer() and entry.get("site") == (site or None)
