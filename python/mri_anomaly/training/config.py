"""Experiment configs: plain YAML, validated on load, overridable from the command line.

A config says everything a run needs besides the datalist, so a run is reproducible from its config
and seed::

    method: glow                  # a registered method (mri_anomaly.training.methods)
    spatial_dims: 3               # 2 = axial slices, 3 = volumes
    in_channels: 1
    seed: 0
    preprocessing: {...}          # mri_anomaly.data preprocessing keys (validated by the data module)
    slices:
      min_brain_fraction: 0.05    # axial slices with this much brain: 2D trains on and aggregates over them;
                                  # both mark them counted=1 in slice_scores.csv
      context: 0                  # 2D: neighbouring slices on each side stacked as input channels (2.5D; methods
                                  # whose __init__ takes slice_context, latent-norm-ae); maps are the centre's
    model: {...}                  # keyword arguments of the method class's __init__
    train:
      batch_size: 4
      phases: {<phase>: {steps: 100, lr: 1.0e-3, weight_decay: 0.0, warmup_steps: 0}}   # exactly the method's
                                  # phases; the lr rises linearly over the first warmup_steps steps
      grad_clip: 50.0             # max global gradient norm (null: no clipping)
      num_workers: 0
      log_every: 10
      checkpoint_every: 50
      max_consecutive_skips: 20   # abort when this many steps in a row have a non-finite loss/gradient
      init_batches: 4             # batches begin_phase sees for data-dependent init
      augment: null               # true, or {prob, rotate_deg, scale, translate_voxels, bias_field, gamma,
                                  # intensity_scale}: mri_anomaly.data.augmentation (null/false: none)
    score:
      specificity: 0.95           # thresholds flag at most 5 % of healthy validation scans
      batch_size: 32              # slices (2D) or volumes (3D) per forward pass when scoring
      top_k: 5                    # 2D: volume score = also the mean of the k highest slice scores
      save_maps: true
      allow_few_calibration_scans: false   # store thresholds from fewer healthy validation scans than the
                                           # specificity needs (20 for 0.95); otherwise none are stored
      map_erosion_mm: 0.0         # voxel maps count inside the brain minus a rim this thick: the maps written
                                  # and their volume scores <map>_q999, <map>_top200mm3 (mri_anomaly.scoring.maps)

Every problem (unknown key, wrong type, impossible value) is collected and reported in one
:class:`ConfigError`. When every part is valid on its own, the parts are checked against each other: the
model grid (``preprocessing.spatial_size``, or ``divisible_by`` when it is null) must be a multiple of what
the network needs (``2**levels`` for Glow, ``2**len(channels)`` for the encoders), and ``in_channels`` must
be the channels the preprocessing gives (one, or one per contrast of ``preprocessing.contrasts``). ``--set a.b.c=value`` overrides any key by its dotted path; values are parsed
as YAML scalars (``5``, ``1e-3``, ``true``, ``null``, ``[1, 2]``).
"""

from __future__ import annotations

import copy
import inspect
import os
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mri_anomaly.config_checks import ConfigChecker, is_int, is_number, type_name
from mri_anomaly.data.augmentation import augment_config_problems
from mri_anomaly.errors import UserInputError

__all__ = [
    "ConfigError",
    "TRAIN_DEFAULTS",
    "SCORE_DEFAULTS",
    "SLICES_DEFAULTS",
    "slice_context",
    "load_config",
    "apply_overrides",
    "parse_override",
    "validate_config",
    "config_to_yaml",
    "config_from_yaml",
    "config_differences",
    "configs_dir",
    "shipped_configs",
    "resolve_config_path",
]

TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 4,
    "phases": {},
    "grad_clip": 50.0,
    "num_workers": 0,
    "log_every": 10,
    "checkpoint_every": 50,
    "max_consecutive_skips": 20,
    "init_batches": 4,
    "augment": None,
}
PHASE_DEFAULTS: dict[str, Any] = {"steps": 100, "lr": 1.0e-3, "weight_decay": 0.0, "warmup_steps": 0}
SCORE_DEFAULTS: dict[str, Any] = {
    "specificity": 0.95,
    "batch_size": 32,
    "top_k": 5,
    "save_maps": True,
    "allow_few_calibration_scans": False,
    "map_erosion_mm": 0.0,
}
SLICES_DEFAULTS: dict[str, Any] = {"min_brain_fraction": 0.05, "context": 0}
TOP_LEVEL_DEFAULTS: dict[str, Any] = {"in_channels": 1, "seed": 0}


class ConfigError(UserInputError):
    """A config with problems; ``problems`` lists each one, the message lists them all."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


# ------------------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-4`` is a float (YAML 1.2) instead of the string YAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    __import__("re").compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        __import__("re").X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# --------------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.phases.train.steps=5"`` -> ``(["train", "phases", "train", "steps"], 5)``.

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected key=value (for example train.batch_size=2)"])
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError([f"--set {text!r}: the key must be a dotted path such as model.levels"])
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError([f"--set {text!r}: the value is not valid YAML ({err})"]) from None
    return parts, value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``config`` with each ``key=value`` override applied (intermediate dicts created).

    Unknown keys are set as given; :func:`validate_config` then reports them, so a typo never passes silently.
    """
    result = copy.deepcopy(config)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    [f"--set {text!r}: {'.'.join(parts[: i + 1])} is a {type(child).__name__}, not a section"]
                )
            node = child
        node[parts[-1]] = value
    return result


# -------------------------------------------------------------------------------------------- validation
def _check_model_kwargs(chk: ConfigChecker, method_cls: type, model: dict[str, Any]) -> None:
    """Check ``model:`` against the method's ``__init__``: unknown names, missing required ones, simple types."""
    sig = inspect.signature(method_cls.__init__)
    params = {
        n: p
        for n, p in sig.parameters.items()
        if n not in ("self", "spatial_dims", "in_channels", "model_spacing")
    }
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {
        n: p
        for n, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    try:
        hints = typing.get_type_hints(method_cls.__init__)
    except Exception:  # unresolvable forward references: skip type checks, names are still checked
        hints = {}
    for key, value in model.items():
        if key not in named:
            if not accepts_kwargs:
                chk.add(
                    f"model.{key}: unknown argument of method {method_cls.name!r} (allowed: {', '.join(sorted(named)) or 'none'})"
                )
            continue
        hint = hints.get(key)
        if hint is not None and not _matches_hint(value, hint):
            chk.add(f"model.{key}: expected {_hint_name(hint)}, got {type_name(value)} {value!r}")
    for name, p in named.items():
        if p.default is inspect.Parameter.empty and name not in model:
            chk.add(f"model.{name}: required by method {method_cls.name!r} but missing")


def _matches_hint(value: Any, hint: Any) -> bool:
    """Best-effort check of a YAML value against a simple annotation; unknown annotations pass."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_matches_hint(value, a) for a in args)
    try:
        import types

        if isinstance(hint, types.UnionType):
            return any(_matches_hint(value, a) for a in typing.get_args(hint))
    except AttributeError:  # pragma: no cover (python < 3.10)
        pass
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    if (
        origin in (tuple, list)
        or hint in (tuple, list)
        or origin is typing.Sequence
        or str(origin) == "<class 'collections.abc.Sequence'>"
    ):
        if not isinstance(value, (list, tuple)):
            return False
        if args and not (len(args) == 2 and args[1] is Ellipsis) and origin is tuple:
            return len(args) == len(value) and all(_matches_hint(v, a) for v, a in zip(value, args))
        elem = args[0] if args else Any
        return all(_matches_hint(v, elem) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _preprocessing_problems(preprocessing: dict[str, Any]) -> list[str]:
    """Problems the data module reports for the ``preprocessing`` section (its own validator)."""
    from mri_anomaly.data import validate_preprocessing_config

    try:
        result = validate_preprocessing_config(preprocessing)
    except ValueError as err:  # a validator that raises: one message, possibly listing several problems
        problems = getattr(err, "problems", None)
        lines = (
            list(problems)
            if problems
            else [line.strip(" -") for line in str(err).splitlines() if line.strip()]
        )
        return [p if p.startswith("preprocessing") else f"preprocessing: {p}" for p in lines]
    if isinstance(result, (list, tuple)):  # a validator that returns its problems
        return [p if str(p).startswith("preprocessing") else f"preprocessing: {p}" for p in result]
    return []


def slice_context(config: Mapping[str, Any]) -> int:
    """Neighbouring slices on each side that a 2D model's input stacks as channels (``slices.context``, 2.5D);
    0 for 3D configs and configs without it."""
    if config.get("spatial_dims") != 2:
        return 0
    return int((config.get("slices") or {}).get("context", 0))


def validate_config(config: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """Check a config and return it with defaults filled in.

    Args:
        config: the parsed YAML mapping.
        source: where it came from (a file name), for the message.

    Returns:
        a new dict with ``in_channels``, ``seed``, ``train``/``score``/``slices`` defaults filled and one
        entry per method phase in ``train.phases``.

    Raises:
        ConfigError: listing every problem found.
    """
    chk = ConfigChecker()
    if not isinstance(config, Mapping):
        raise ConfigError([f"the config must be a mapping, got {type_name(config)}"], source)
    cfg: dict[str, Any] = {**TOP_LEVEL_DEFAULTS, **copy.deepcopy(dict(config))}
    chk.unknown(
        cfg,
        (
            "method",
            "spatial_dims",
            "in_channels",
            "seed",
            "preprocessing",
            "slices",
            "model",
            "train",
            "score",
        ),
        "",
    )

    method_cls = None
    if "method" not in cfg:
        from mri_anomaly.training.methods import available_methods

        chk.add(f"method: missing (one of: {', '.join(available_methods())})")
    elif not isinstance(cfg["method"], str):
        chk.add(f"method: expected a method name, got {type_name(cfg['method'])}")
    else:
        from mri_anomaly.training.methods import get_method_class

        try:
            method_cls = get_method_class(cfg["method"])
        except KeyError as err:
            chk.add(f"method: {err.args[0]}")

    if "spatial_dims" not in cfg:
        chk.add("spatial_dims: missing (2 for axial slices, 3 for volumes)")
    elif cfg["spatial_dims"] not in (2, 3) or isinstance(cfg["spatial_dims"], bool):
        chk.add(f"spatial_dims: must be 2 or 3, got {cfg['spatial_dims']!r}")
    chk.int_(cfg, "in_channels", "", minimum=1)
    chk.int_(cfg, "seed", "", minimum=0)
    if is_int(cfg.get("seed")) and cfg["seed"] >= 2**32:
        chk.add(f"seed: must be < 2**32 (NumPy's limit), got {cfg['seed']}")

    # preprocessing: the data module owns its keys
    pre = chk.section(cfg, "preprocessing", "")
    if pre is not None:
        chk.problems.extend(_preprocessing_problems(pre))
        cfg["preprocessing"] = pre

    # slices: 2D trains on and aggregates over these slices; for both, they are the "counted" slices of slice tables
    slices = chk.section(cfg, "slices", "")
    if slices is not None:
        chk.unknown(slices, SLICES_DEFAULTS, "slices.")
        chk.number(slices, "min_brain_fraction", "slices.", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
        chk.int_(slices, "context", "slices.", minimum=0)
        if is_int(slices.get("context")) and slices["context"] > 0:
            if cfg.get("spatial_dims") == 3:
                chk.add(
                    "slices.context: neighbouring slices are for 2D models (spatial_dims: 2); use 0 for volumes"
                )
            elif method_cls is not None and not method_cls.takes_slice_context():
                chk.add(
                    f"slices.context: method {cfg['method']!r} takes no neighbouring slices (2.5D inputs); use 0"
                )
        cfg["slices"] = {**SLICES_DEFAULTS, **slices}

    model = chk.section(cfg, "model", "")
    if model is not None:
        cfg["model"] = model
        if method_cls is not None:
            _check_model_kwargs(chk, method_cls, model)

    train = chk.section(cfg, "train", "")
    if train is not None:
        chk.unknown(train, TRAIN_DEFAULTS, "train.")
        chk.int_(train, "batch_size", "train.", minimum=1)
        chk.int_(train, "num_workers", "train.", minimum=0)
        chk.int_(train, "log_every", "train.", minimum=1)
        chk.int_(train, "checkpoint_every", "train.", minimum=1)
        chk.int_(train, "max_consecutive_skips", "train.", minimum=1)
        chk.int_(train, "init_batches", "train.", minimum=1)
        chk.problems.extend(augment_config_problems(train.get("augment")))
        chk.number(
            train,
            "grad_clip",
            "train.",
            lambda v: v > 0,
            "must be > 0 (or null for no clipping)",
            nullable=True,
        )
        phases = train.get("phases", {})
        filled_phases: dict[str, Any] = {}
        if not isinstance(phases, dict):
            chk.add(
                f"train.phases: expected a mapping phase -> {{steps, lr, weight_decay}}, got {type_name(phases)}"
            )
        else:
            expected = tuple(method_cls.phases) if method_cls is not None else tuple(phases)
            for name in phases:
                if name not in expected:
                    chk.add(
                        f"train.phases.{name}: method {cfg.get('method')!r} has no phase {name!r} (its phases: {', '.join(expected)})"
                    )
            for name in expected:
                phase = phases.get(name) or {}
                where = f"train.phases.{name}."
                if not isinstance(phase, dict):
                    chk.add(f"train.phases.{name}: expected a mapping, got {type_name(phase)}")
                    continue
                chk.unknown(phase, PHASE_DEFAULTS, where)
                chk.int_(phase, "steps", where, minimum=0)
                chk.number(phase, "lr", where, lambda v: v > 0, "must be > 0")
                chk.number(phase, "weight_decay", where, lambda v: v >= 0, "must be >= 0")
                chk.int_(phase, "warmup_steps", where, minimum=0)
                filled_phases[name] = {**PHASE_DEFAULTS, **phase}
        cfg["train"] = {**TRAIN_DEFAULTS, **train, "phases": filled_phases}

    score = chk.section(cfg, "score", "")
    if score is not None:
        chk.unknown(score, SCORE_DEFAULTS, "score.")
        chk.number(score, "specificity", "score.", lambda v: 0.0 < v < 1.0, "must be in (0, 1)")
        chk.int_(score, "batch_size", "score.", minimum=1)
        chk.int_(score, "top_k", "score.", minimum=1)
        chk.bool_(score, "save_maps", "score.")
        chk.bool_(score, "allow_few_calibration_scans", "score.")
        chk.number(score, "map_erosion_mm", "score.", lambda v: 0.0 <= v <= 50.0, "must be in [0, 50]")
        cfg["score"] = {**SCORE_DEFAULTS, **score}

    chk.problems.extend(_model_fit_problems(method_cls, cfg, chk.problems))
    if chk.problems:
        raise ConfigError(chk.problems, source)
    return cfg


def _model_fit_problems(method_cls: type | None, cfg: Mapping[str, Any], found: list[str]) -> list[str]:
    """Whether the network fits the data: the model grid against the depth of the model (Glow ``levels``,
    encoder ``channels``) and ``in_channels`` against the channels the preprocessing gives. Without this a
    mismatch fails only at the first forward pass, after the data are loaded. Each check runs when the keys
    it reads have no problem of their own (``found``), so every problem is still reported at once."""
    from mri_anomaly.data.preprocessing import model_grid_problems, preprocessed_channels

    def valid(*prefixes: str) -> bool:
        return not any(p.startswith(prefixes) for p in found)

    problems = []
    if not valid("preprocessing", "the config"):
        return problems
    channels = preprocessed_channels(cfg.get("preprocessing"))
    if valid("in_channels") and cfg["in_channels"] != channels:
        contrasts = (cfg.get("preprocessing") or {}).get("contrasts")
        source = (
            f"preprocessing.contrasts {list(contrasts)}: one channel per contrast"
            if contrasts
            else "one image file per datalist item"
        )
        problems.append(
            f"in_channels: {cfg['in_channels']}, but the preprocessing gives {channels}-channel images "
            f"({source}); set in_channels: {channels}"
        )
    if method_cls is not None and valid("spatial_dims", "model", "method"):
        try:
            divisor, reason = method_cls.grid_divisor(cfg.get("model") or {})
        except ValueError as err:  # a depth out of range
            return [*problems, str(err)]
        problems += model_grid_problems(cfg.get("preprocessing"), cfg["spatial_dims"], divisor, reason)
    return problems


# ------------------------------------------------------------------------------------------ shipped configs
def configs_dir() -> Path:
    """The folder of the shipped YAML configs (and ``bundle/``), first that exists of:

    ``$MRI_ANOMALY_CONFIGS``; ``mri_anomaly/configs/`` inside an installed package (package data, copied from
    the repository's ``configs/`` when the wheel is built); ``configs/`` of the source checkout (beside
    ``python/``); ``./configs``.

    Raises:
        MissingInputError: none of them exists.
    """
    from mri_anomaly.errors import MissingInputError

    package = Path(__file__).resolve().parents[1]  # .../mri_anomaly
    candidates = []
    if os.environ.get("MRI_ANOMALY_CONFIGS"):
        candidates.append(Path(os.environ["MRI_ANOMALY_CONFIGS"]))
    candidates += [package / "configs", package.parents[1] / "configs", Path.cwd() / "configs"]
    for c in candidates:
        if c.is_dir():
            return c
    raise MissingInputError(
        f"no configs folder found (looked in {', '.join(map(str, candidates))}); set MRI_ANOMALY_CONFIGS to the repository's configs/"
    )


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of every ``*.yaml`` in :func:`configs_dir` (``{}`` when there is none)."""
    try:
        folder = configs_dir()
    except FileNotFoundError:
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """An existing config file as given, else the shipped config of that name (``glow3d`` or ``glow3d.yaml``).

    Raises:
        ConfigError: neither exists (the message lists the shipped names).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if os.sep not in text and "/" not in text:
        shipped = shipped_configs()
        stem = text[: -len(".yaml")] if text.endswith(".yaml") else text
        if stem in shipped:
            return shipped[stem]
        names = ", ".join(shipped) or "none found"
        raise ConfigError(
            [f"config file not found: {path}, and no shipped config of that name (shipped: {names})"]
        )
    raise ConfigError([f"config file not found: {path}"])


# ------------------------------------------------------------------------------------------------ I/O
def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML config (a file, or the name of a shipped config such as ``glow3d``), apply ``--set``
    overrides, validate, fill defaults.

    Raises:
        ConfigError: the file is missing or not YAML, or the config has problems (all listed).
    """
    path = resolve_config_path(path)
    try:
        raw = _yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError([f"not UTF-8 text ({err})"], str(path)) from None
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError([f"not valid YAML: {err}"], str(path)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the config must be a mapping, got {type_name(raw)}"], str(path))
    return validate_config(apply_overrides(raw, overrides), source=str(path))


def config_to_yaml(config: Mapping[str, Any]) -> str:
    """The resolved config as YAML text (stored in checkpoints and as ``RUN/config.yaml``)."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def config_differences(
    a: Any, b: Any, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any, Any]]:
    """The leaves where two nested configs differ: ``[(key path, value in a, value in b)]``, keys sorted."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[tuple[tuple[str, ...], Any, Any]] = []
        for key in sorted(set(a) | set(b), key=str):
            out += config_differences(a.get(key), b.get(key), prefix + (str(key),))
        return out
    return [] if a == b else [(prefix, a, b)]


def config_from_yaml(text: str) -> dict[str, Any]:
    """Inverse of :func:`config_to_yaml` (re-validated so an old checkpoint with a bad config is reported)."""
    return validate_config(_yaml_load(text), source="checkpoint config")
