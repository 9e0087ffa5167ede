"""One way to validate a config section: collect every problem as ``where.key: what is wrong, got value``, so a
user sees all of them at once (:class:`~mri_anomaly.training.config.ConfigError` lists them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["ConfigChecker", "is_int", "is_number", "type_name"]


def type_name(value: Any) -> str:
    """``null`` for None, else the value's type name (the YAML reader's view of a value)."""
    return "null" if value is None else type(value).__name__


def is_int(v: Any) -> bool:
    """An integer that is not a bool (YAML ``true`` is not a count)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class ConfigChecker:
    """Collects problems while walking a config."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def section(self, cfg: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
        value = cfg.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(f"{where}{key}: expected a mapping, got {type_name(value)}")
            return None
        return value

    def unknown(self, cfg: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
        allowed = set(allowed)
        for key in cfg:
            if key not in allowed:
                self.add(f"{where}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")

    def int_(self, cfg: Mapping[str, Any], key: str, where: str, minimum: int | None = None) -> None:
        if key not in cfg:
            return
        v = cfg[key]
        if not is_int(v):
            self.add(f"{where}{key}: expected an integer, got {type_name(v)} {v!r}")
        elif minimum is not None and v < minimum:
            self.add(f"{where}{key}: must be >= {minimum}, got {v}")

    def number(
        self,
        cfg: Mapping[str, Any],
        key: str,
        where: str,
        check: Callable[[float], bool] | None = None,
        rule: str = "",
        nullable: bool = False,
    ) -> None:
        if key not in cfg:
            return
        v = cfg[key]
        if v is None and nullable:
            return
        if not is_number(v):
            self.add(
                f"{where}{key}: expected a number{' or null' if nullable else ''}, got {type_name(v)} {v!r}"
            )
        elif check is not None and not check(float(v)):
            self.add(f"{where}{key}: {rule}, got {v}")

    def bool_(self, cfg: Mapping[str, Any], key: str, where: str) -> None:
        if key in cfg and not isinstance(cfg[key], bool):
            self.add(f"{where}{key}: expected true or false, got {type_name(cfg[key])} {cfg[key]!r}")
