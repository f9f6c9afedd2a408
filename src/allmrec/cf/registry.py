"""Find CF backbones by name: the built-in ones (``sasrec``, ``gru4rec``, ``nextitnet``, ``ncf``,
``morec``, ``ctrl``, ``recformer``) and any a user registers.

Built-ins are listed by module and imported on first use, so importing the registry never
imports every model (and no model module imports the registry back). A user's own backbone::

    from allmrec.cf import CFBackbone, register_backbone

    @register_backbone("mymodel")
    class MyModel(CFBackbone): ...

is then usable in any config as ``cf.backbone: mymodel``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from allmrec.cf.base import CFBackbone

BUILTIN = {
    "sasrec": "allmrec.cf.sasrec:SASRec",
    "gru4rec": "allmrec.cf.gru4rec:GRU4Rec",
    "nextitnet": "allmrec.cf.nextitnet:NextItNet",
    "ncf": "allmrec.cf.ncf:NCF",
    "morec": "allmrec.cf.morec:MoRec",
    "ctrl": "allmrec.cf.ctrl:CTRL",
    "recformer": "allmrec.cf.recformer:RecFormer",
}
_REGISTERED: dict[str, type[CFBackbone]] = {}


def register_backbone(name: str):
    """Class decorator: ``@register_backbone("mymodel")`` makes ``"mymodel"`` usable in configs."""

    def deco(cls: type[CFBackbone]) -> type[CFBackbone]:
        taken = _REGISTERED.get(name)
        if name in BUILTIN or (taken is not None and taken is not cls):
            raise ValueError(f"a CF backbone named {name!r} is already registered ({(taken or BUILTIN.get(name))!s})")
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return deco


def get_backbone_class(name: str) -> type[CFBackbone]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise KeyError(f"unknown CF backbone {name!r}; known: {', '.join(available_backbones())}")


def available_backbones() -> list[str]:
    return sorted({*BUILTIN, *_REGISTERED})


def build_backbone(name: str, **options: Any) -> CFBackbone:
    cls = get_backbone_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = set(options) - fields
    if unknown:
        raise ValueError(f"unknown option(s) for backbone {name!r}: {', '.join(sorted(unknown))}; valid: {', '.join(sorted(fields))}")
    return cls(cls.config_class(**options))
