"""Dataset presets: plain YAML files shipped in this folder, loaded into :class:`PrepareConfig`.

A preset is configuration only (reader format, paths, columns, filters, template, wording);
no code branches on a dataset's name. ``load_preset(name, **overrides)``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from allmrec.config import from_dict, read_config_file
from allmrec.data.config import PrepareConfig


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def preset_dict(name: str) -> dict[str, Any]:
    """The raw options of preset ``name`` (or of a YAML file path)."""
    if name.endswith((".yaml", ".yml")) and Path(name).exists():
        return read_config_file(name)
    res = resources.files(__name__) / f"{name}.yaml"
    if not res.is_file():
        raise ValueError(f"unknown dataset preset {name!r}; available: {', '.join(list_presets())}")
    with resources.as_file(res) as p:
        return read_config_file(p)


def load_preset(name: str, **overrides: Any) -> PrepareConfig:
    """``PrepareConfig`` of preset ``name`` with ``overrides`` (``None`` values ignored) on top.

    Dict-valued options (``wording``, ``rename``, ``field_seps``) given as overrides are merged
    into the preset's.
    """
    data = preset_dict(name)
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return from_dict(PrepareConfig, data, where=f"preset {name}")


__all__ = ["list_presets", "load_preset", "preset_dict"]
