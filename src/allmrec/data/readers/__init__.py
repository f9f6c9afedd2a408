"""Readers: raw files in, :class:`~allmrec.data.raw.RawData` out, dispatched by ``config.format``."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import EmptyFileError, RawData
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
    """Read the raw files of ``config`` with the reader of ``config.format``.

    Every problem with the files' content is a :class:`~allmrec.data.raw.DataFormatError`
    (or a subclass) naming the file, the line and the field; an interactions file without
    any interaction (only a header, or every row dropped as an unknown item) is an
    :class:`~allmrec.data.raw.EmptyFileError`.
    """
    reader = _READERS[config.format]
    raw = reader.read(config, reader.files(config))
    if raw.interactions.empty:
        dropped = raw.info.get("interactions_unknown_item")
        why = f" left: all {dropped} name unknown items" if dropped else " (only a header?)"
        raise EmptyFileError(raw.files[0], None, None, f"no interactions{why}")
    return raw


__all__ = ["input_files", "read_raw"]
