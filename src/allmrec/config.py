"""Configuration: typed dataclasses, built from layers of plain mappings.

Every option group is a dataclass (``TrainCFConfig``, ``Stage1Config``, ...). A configuration is
built from layers, later layers winning: built-in defaults < a YAML file < ... < ``--set
section.key=value``. :func:`merge` applies one layer; :func:`parse_sets` turns ``--set`` items
into a layer; :func:`from_dict` builds and checks a dataclass (unknown keys are an error naming
the file and the key). An explicit ``null`` in a layer sets the option to ``None`` (``--set
eval.max_users=null`` asks for all users); a command-line flag that was not given is simply
absent from its layer.

Fields say how they may change between an interrupted training run and its resumption, on the
field itself: :func:`runtime_field` (never changes what is computed: threads, device, logging,
checkpoint cadence) and :func:`length_field` (how long training runs: may grow on resume). Every
other field defines the result, and a resumed run refuses to continue if one differs. A defining
field added after runs were recorded is an :func:`added_field`: at its default it is left out of
identities, so what older runs computed keeps its name and stays resumable.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_RESUME = "allmrec_resume"


def runtime_field(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field that never changes what a run computes (threads, device, batch size of a frozen
    forward, logging, checkpoint cadence)."""
    return dataclasses.field(default=default, metadata={_RESUME: "runtime"}, **kwargs)


def length_field(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field that says how long training runs (epochs, steps, patience): it may change when an
    interrupted run is resumed, and the run continues from where it stopped."""
    return dataclasses.field(default=default, metadata={_RESUME: "length"}, **kwargs)


def added_field(default: Any, **kwargs: Any) -> Any:
    """A defining field added after runs were recorded without it: a record that lacks it had
    ``default``, and at ``default`` it is left out of :func:`defining_options`."""
    return dataclasses.field(default=default, metadata={_RESUME: "added"}, **kwargs)


def _added_at_default(config: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(config) if f.metadata.get(_RESUME) == "added" and getattr(config, f.name) == f.default}


def runtime_fields(cls: type) -> set[str]:
    """Names of ``cls``'s :func:`runtime_field` fields."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get(_RESUME) == "runtime"}


def resumable_fields(cls: type) -> set[str]:
    """Names of the fields that may differ between a checkpoint and its resumption."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get(_RESUME) in ("runtime", "length")}


def defining_options(config: Any) -> dict[str, Any]:
    """The options of a config dataclass that define what it computes (runtime fields left out)."""
    skip = runtime_fields(type(config)) | _added_at_default(config)
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


def check_resumable(saved: dict[str, Any], config: Any, where: Path | str, what: str) -> None:
    """Refuse to resume when a field that defines the result differs from the checkpoint's."""
    new = dataclasses.asdict(config)
    free = resumable_fields(type(config))
    saved = {**{k: new[k] for k in _added_at_default(config)}, **saved}  # recorded before the field existed
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {new[k]!r}" for k in sorted(new) if k not in free and _plain(saved.get(k)) != _plain(new[k])]
    if diffs:
        raise ValueError(f"{where}: cannot resume, the {what} config differs ({'; '.join(diffs)}). Use another out_dir, or resume=False to start over.")


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (JSON has no tuples)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


# ---- files and layers --------------------------------------------------------------------------
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


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["cf.epochs=20", "eval.methods=[cf,allmrec]"]`` -> ``{"cf.epochs": 20, ...}``; values
    are parsed as YAML (``null`` is ``None``, an empty value too)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def merge(base: dict[str, Any], *layers: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each layer merged over it. Keys may be dotted paths
    (``"stage2.lr"``); nested mappings merge key by key; any other value, ``None`` included,
    replaces what was there."""
    out = copy.deepcopy(base)
    for layer in layers:
        for key, value in (layer or {}).items():
            _set_path(out, str(key).split("."), copy.deepcopy(value))
    return out


def _set_path(node: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    last = keys[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for k, v in value.items():
            _set_path(node[last], str(k).split("."), v)
    else:
        node[last] = value


# ---- dataclasses -------------------------------------------------------------------------------
def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from ``data`` (defaults for missing keys; values coerced to the field types)."""
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
