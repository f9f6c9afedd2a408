"""The raw representation every reader produces, and the error every reader raises.

``RawData.interactions`` has one row per interaction with columns

* ``user_id`` (str), ``item_id`` (str),
* ``timestamp`` (int64; absent when the source has no time: file order is then the time),
* ``rating`` (float; absent or NaN when the source has none),
* ``order`` (int64, the row's position in the source, used as the stable tie-break).

``RawData.items`` has one row per item: ``item_id`` (str) and the text columns ``title``,
``description``, ``brand``, ``categories`` (each one string, ``""`` when missing) plus any
extra columns the source carries (e.g. ``genres``), also as strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TEXT_COLUMNS = ("title", "description", "brand", "categories")


class DataFormatError(ValueError):
    """Bad input data. The message names the file, the 1-based line and the field.

    ``line`` is ``None`` where no line applies (an empty file, a broken gzip stream, a
    Parquet file); ``field`` is ``None`` where the problem is the whole line (not JSON, a
    wrong number of fields, undecodable bytes). The subclasses below name kinds of problem
    a caller may want to tell apart; every other problem is a plain ``DataFormatError``.
    """

    def __init__(self, file: str | Path, line: int | None, field: str | None, problem: str):
        self.file = str(file)
        self.line = line
        self.field = field
        where = self.file + (f", line {line}" if line is not None else "")
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{problem}")


class TextEncodingError(DataFormatError):
    """A line is not text in the expected encoding (the line and the byte are named)."""


class CompressionError(DataFormatError):
    """A gzip file is truncated or corrupt."""


class EmptyFileError(DataFormatError):
    """An input file has no non-blank line, or a table has no data row."""


class UnknownItemError(DataFormatError):
    """An interaction names an item the items file does not have (``missing_items: error``)."""


class InsufficientDataError(DataFormatError):
    """The input parses but too little is left to prepare a dataset with these options."""


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages about huge values."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


@dataclass
class RawData:
    interactions: pd.DataFrame
    items: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # reader-level counts (duplicates, dropped rows)

    @property
    def has_timestamp(self) -> bool:
        return "timestamp" in self.interactions.columns

    @property
    def has_rating(self) -> bool:
        return "rating" in self.interactions.columns and bool(self.interactions["rating"].notna().any())
