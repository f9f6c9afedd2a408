"""The methods a run can be evaluated with, by name. Built-ins are listed by module and imported
on first use; ``register_method`` adds one of a user's own (a :class:`Method` subclass)."""

from __future__ import annotations

import importlib

from allmrec.methods.base import BACKBONE_LABELS, Method

BUILTIN = {
    "cf": "allmrec.methods.cf:CF",
    "llm-only": "allmrec.methods.llm_only:LLMOnly",
    "allmrec": "allmrec.methods.allmrec:ALLMRec",
    "allmrec-sbert": "allmrec.methods.allmrec:ALLMRecSBERT",
    "tallrec": "allmrec.methods.tallrec:TALLRec",
    "popularity": "allmrec.methods.popularity:Popularity",
    "text-sim": "allmrec.methods.fusion:TextSimilarity",
    "cf-text": "allmrec.methods.fusion:CFText",
    "fusion": "allmrec.methods.fusion:FusionOnly",
}
_REGISTERED: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in BUILTIN or method.name in _REGISTERED:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTERED[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(available_methods())}")
    module, _, attr = BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


def available_methods() -> list[str]:
    return [*BUILTIN, *_REGISTERED]


__all__ = ["BACKBONE_LABELS", "Method", "available_methods", "get_method", "register_method"]
