"""Layered configuration: dataclass defaults < YAML/JSON file < command line.

Every command's options are a dataclass. ``load_config(cls, file, overrides)`` builds it from
the defaults, then the file's keys, then the non-``None`` command-line values; unknown keys in
a file are an error that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}:{where} invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of option: value")
    return data


def load_config(cls: type[T], file: str | Path | None = None, overrides: dict[str, Any] | None = None, section: str | None = None) -> T:
    """Build ``cls`` from defaults < ``file`` (optionally one ``section`` of it) < ``overrides``."""
    values: dict[str, Any] = {}
    if file is not None:
        data = read_config_file(file)
        if section is not None:
            data = data.get(section, {}) or {}
        values.update(_check_keys(cls, data, where=str(file)))
    if overrides:
        values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, where=str(file) if file else "command line")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    _check_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, where=f"{where}: {f.name}")
        kwargs[f.name] = _coerce(value, tp, f"{where}: {f.name}")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _check_keys(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__}; valid: {', '.join(sorted(fields))}")
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if tp is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected a boolean, got {value!r}")
    if tp in (int, float) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str and value is not None and not isinstance(value, str):
        return str(value)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        return origin(value)
    return value
