"""Readers: raw files in, :class:`~allmrec.data.raw.RawData` out, dispatched by ``config.format``."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import RawData
from allmrec.data.readers import amazon, movielens, sequences, tabular

_READERS: dict[str, ModuleType] = {
    "sequences": sequences,
    "amazon2014": amazon,
    "amazon2018": amazon,
    "amazon2023": amazon,
    "recbole": movielens,
    "movielens": movielens,
    "tabular": tabular,
}


def input_files(config: PrepareConfig) -> dict[str, Path]:
    """The input files ``config`` names (resolved, existing), without reading them."""
    return {k: v for k, v in _READERS[config.format].files(config).items() if v is not None}


def read_raw(config: PrepareConfig) -> RawData:
    """Read the raw files of ``config`` with the reader of ``config.format``."""
    reader = _READERS[config.format]
    return reader.read(config, reader.files(config))


__all__ = ["input_files", "read_raw"]
