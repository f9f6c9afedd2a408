"""Helpers shared by the readers: locating files, reading text lines, checked values, items.

Rules every reader follows (``tests/fixtures/fuzz`` holds a case for each):

* Text is UTF-8. A byte-order mark (UTF-8, UTF-16 LE or BE) is honoured and removed, so
  "Unicode text" saved by spreadsheets reads as is. Other bytes that are not UTF-8 are a
  :class:`TextEncodingError` naming the line, the byte and its column (MovieLens: see its reader).
* ``\\n``, ``\\r\\n`` and ``\\r`` all end a line, mixed freely; blank lines are skipped.
* gzip is recognised by its magic bytes, not by the name: a ``.gz`` holding plain text is
  read as text; a truncated or corrupt gzip stream is a :class:`CompressionError`.
* A file without a non-blank line is an :class:`EmptyFileError`.
* Ids are strings or (JSON) integers, surrounding whitespace removed; a missing or empty id
  is an error, and so is a list, an object, a float or a boolean.
* Numbers may be given as numbers or numeric strings; NaN, infinity, booleans and values
  outside the reader's range are errors; timestamps must fit a 64-bit integer (fractions of
  a second are dropped).
* JSON values holding an object (a nested mapping) carry no item text and are dropped;
  a ``\\u`` escape that is a lone surrogate is an error.
* A repeated item id in an items file keeps its first row; the count of dropped rows is
  ``duplicate_metadata_rows`` in the prepared dataset's statistics.
* Values quoted in error messages are cut to about 60 characters.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import html
import importlib.util
import io
import json
import math
import re
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import (TEXT_COLUMNS, CompressionError, DataFormatError, EmptyFileError, TextEncodingError,
                              UnknownItemError, short)

_SPACES = re.compile(r"\s+")
_ESCAPED = re.compile("[\udc80-\udcff]")  # undecodable bytes, surrogate-escaped by open_text
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_LABELS = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16"}
INT64_MAX = 2**63 - 1


def resolve_root(path: str) -> Path | None:
    """``path`` as an absolute folder; ``pkg:<package>/<sub>`` inside an installed package."""
    if not path:
        return None
    if path.startswith("pkg:"):
        package, _, sub = path[4:].partition("/")
        spec = importlib.util.find_spec(package)  # locates without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{path}: package {package!r} is not installed")
        return Path(list(spec.submodule_search_locations)[0]).joinpath(sub).resolve()
    return Path(path).expanduser().resolve()


def resolve_file(config: PrepareConfig, name: str, patterns: Sequence[str], what: str, *,
                 exclude: Sequence[str] = (), required: bool = True) -> Path | None:
    """The ``what`` file: ``name`` (relative to ``config.path``) or the one match of ``patterns``."""
    root = resolve_root(config.path)
    if name:
        p = Path(name).expanduser()
        if not p.is_absolute():
            p = (root / p) if root is not None else p.resolve()
        if not p.exists():
            raise FileNotFoundError(f"{what} file not found: {p}")
        return p.resolve()
    if root is None:
        raise ValueError(f"dataset {config.name!r}: set 'path' (the dataset folder) or '{what}_file'")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    for pattern in patterns:
        hits = sorted(p for p in root.glob(pattern)
                      if p.is_file() and not any(p.match(x) for x in exclude))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"{root}: several {what} files match {pattern!r} ({', '.join(h.name for h in hits)}); "
                             f"choose one with '{what}_file'")
    if required:
        raise FileNotFoundError(f"{root}: no {what} file (looked for {', '.join(patterns)}); set '{what}_file'")
    return None


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Open a plain or gzip text file (gzip detected by its magic bytes, not its name; a
    byte-order mark overrides ``encoding``). Undecodable bytes come through surrogate-escaped:
    read the file with :func:`text_lines`, which reports them."""
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    binary = gzip.open(path, "rb") if compressed else open(path, "rb")
    head = binary.peek(4)[:4]
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), encoding)
    return io.TextIOWrapper(binary, encoding=encoding, errors="surrogateescape", newline="")


def text_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(1-based line number, line with its line end)`` for every line of ``path``.

    Raises :class:`TextEncodingError` at the first undecodable line, :class:`CompressionError`
    for a broken gzip stream and :class:`EmptyFileError` when no line holds anything but
    whitespace.
    """
    line_no, label, filled = 0, _LABELS.get(encoding, encoding), False
    try:
        with open_text(path, encoding) as f:
            label = _LABELS.get(f.encoding, f.encoding)
            for line_no, line in enumerate(f, 1):
                bad = None if line.isascii() else _ESCAPED.search(line)
                if bad:
                    raise TextEncodingError(path, line_no, None, f"not valid {label} text (byte 0x{ord(bad.group()) - 0xDC00:02x} "
                                                                 f"at column {bad.start() + 1}); save the file as UTF-8")
                filled = filled or not line.isspace()
                yield line_no, line
    except UnicodeDecodeError as err:
        raise TextEncodingError(path, line_no + 1, None, f"not valid {label} text ({err.reason})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CompressionError(path, None, None, f"gzip data truncated or corrupt after line {line_no} ({err})") from None
    if not filled:
        raise EmptyFileError(path, None, None, "the file is empty" if line_no == 0 else "the file holds only blank lines")


def numbered_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(1-based line number, line without its line end)`` for every non-blank line (see
    :func:`text_lines` for the errors)."""
    for line_no, line in text_lines(path, encoding):
        line = line.rstrip("\r\n")  # keep other trailing whitespace: it may be an empty last field
        if line.strip():
            yield line_no, line


def parse_object(line: str, path: Path, line_no: int, literal: bool = False) -> dict[str, Any]:
    """One line as a dict: JSON, or with ``literal`` also a Python dict literal (Amazon 2014)."""
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as err:
        why = f"column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        hint = "; the file must hold one object per line" if line.strip() in ("[", "{") else ""
        if not literal:
            raise DataFormatError(path, line_no, None, f"not a valid JSON object ({why}){hint}") from None
        try:
            rec = ast.literal_eval(line)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise DataFormatError(path, line_no, None, f"neither a JSON object ({why}) nor a Python dict literal{hint}") from None
    if not isinstance(rec, dict):
        raise DataFormatError(path, line_no, None, f"expected an object, got {type(rec).__name__}")
    if "\\u" in line:  # an escape may have produced a lone surrogate, which no file format can store
        for key, value in rec.items():
            if any(isinstance(v, str) and _SURROGATE.search(v) for v in _flatten([key, value])):
                raise DataFormatError(path, line_no, str(key), "a \\u escape is a lone surrogate (not a character)")
    return rec


def to_id(value: Any, path: Path, line: int | None, field: str) -> str:
    """An id: a string or an integer, surrounding whitespace removed, never empty."""
    if value is None or isinstance(value, str) and not value.strip():
        raise DataFormatError(path, line, field, "missing required field")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(path, line, field, f"expected a string or integer id, got {type(value).__name__} {short(value)}")
    return str(value).strip()


def to_float(value: Any, path: Path, line: int, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite number in ``[lo, hi]`` (a number or a numeric string)."""
    if value is None or isinstance(value, str) and not value.strip():
        raise DataFormatError(path, line, field, "missing required field")
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataFormatError(path, line, field, f"expected a number, got {type(value).__name__} {short(value)}") from None
    if not math.isfinite(x):
        raise DataFormatError(path, line, field, f"expected a finite number, got {short(value)}")
    if not lo <= x <= hi:
        raise DataFormatError(path, line, field, f"{short(value)} is outside the valid range {lo:g} to {hi:g}")
    return x


def to_int(value: Any, path: Path, line: int, field: str, lo: float = -INT64_MAX) -> int:
    """A whole number (fractions dropped) from ``lo`` up to what an int64 holds."""
    if isinstance(value, int) and not isinstance(value, bool):  # exact, even past 2**53
        if not lo <= value <= INT64_MAX:
            raise DataFormatError(path, line, field, f"{short(value)} is outside the valid range {lo:g} to 2**63-1")
        return value
    return int(to_float(value, path, line, field, lo, INT64_MAX))


def clean(value: Any) -> str:
    """One line of text: lists flattened (unique, in order) and joined with ", ", HTML entities
    decoded, whitespace collapsed; ``None``/NaN and mappings -> ``""``."""
    if value is None or isinstance(value, dict):
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        parts: list[str] = []
        for v in _flatten(value):
            s = clean(v)
            if s and s not in parts:
                parts.append(s)
        return ", ".join(parts)
    return _SPACES.sub(" ", html.unescape(str(value))).strip()


def _flatten(values: Iterable[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, (list, tuple, np.ndarray)):
            yield from _flatten(v)
        else:
            yield v


def finish_items(items: pd.DataFrame, config: PrepareConfig, file: Path | str, info: dict[str, Any]) -> pd.DataFrame:
    """Apply ``rename`` / ``field_seps``, make every text column a clean string, add missing
    standard columns (``""``), drop extra columns empty for every item, keep the first row of
    a duplicated item id (counted in ``info["duplicate_metadata_rows"]``)."""
    items = items.rename(columns=dict(config.rename))
    twice = items.columns[items.columns.duplicated()]
    if len(twice):
        raise DataFormatError(file, None, str(twice[0]), "two columns have this name (after 'rename')")
    if "item_id" not in items.columns:
        raise DataFormatError(file, None, "item_id", f"no item id column (columns: {', '.join(map(str, items.columns))})")
    for col, sep in config.field_seps.items():
        if col in items.columns:
            items[col] = [", ".join(p for p in (clean(x) for x in str(v).split(sep)) if p) if _present(v) else ""
                          for v in items[col]]
    for col in TEXT_COLUMNS:
        if col not in items.columns:
            items[col] = ""
    out = pd.DataFrame({"item_id": items["item_id"].astype(str)})
    for col in items.columns:
        if col != "item_id":
            values = [clean(v) for v in items[col]]
            if col in TEXT_COLUMNS or any(values):  # extra columns empty for every item carry nothing
                out[str(col)] = values
    repeated = out["item_id"].duplicated(keep="first")
    if repeated.any():
        info["duplicate_metadata_rows"] = info.get("duplicate_metadata_rows", 0) + int(repeated.sum())
    return out[~repeated].reset_index(drop=True)


def _present(v: Any) -> bool:
    return not (v is None or (isinstance(v, float) and np.isnan(v)))


def check_items(interactions: pd.DataFrame, lines: np.ndarray, items: pd.DataFrame, config: PrepareConfig,
                file: Path, info: dict[str, Any]) -> pd.DataFrame:
    """Handle interactions whose item has no metadata row, per ``config.missing_items``
    (``drop`` and ``keep`` count them in ``info["interactions_unknown_item"]``)."""
    known = interactions["item_id"].isin(items["item_id"]).to_numpy()
    if known.all():
        return interactions
    if config.missing_items == "error":
        first = int(np.flatnonzero(~known)[0])
        raise UnknownItemError(file, int(lines[first]), "item_id",
                               f"item {short(interactions['item_id'].iloc[first])} is not in the items file "
                               f"({(~known).sum()} interaction(s) affected; set missing_items: drop or keep)")
    info["interactions_unknown_item"] = int((~known).sum())
    if config.missing_items == "drop":
        return interactions[known].reset_index(drop=True)
    return interactions  # "keep": the item gets a placeholder title later


def interactions_frame(users: list[str], items: list[str], timestamps: list[int] | None = None,
                       ratings: list[float] | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"user_id": pd.Series(users, dtype=str), "item_id": pd.Series(items, dtype=str)})
    if timestamps is not None:
        df["timestamp"] = np.asarray(timestamps, dtype=np.int64)
    if ratings is not None:
        df["rating"] = np.asarray(ratings, dtype=np.float64)
    df["order"] = np.arange(len(df), dtype=np.int64)
    return df


def no_such_column(path: Path, line: int | None, name: str, columns: Sequence[str]) -> DataFormatError:
    """The error for a missing column, guessing the separator when the header is one column."""
    hint = ""
    if len(columns) == 1:
        seen = [s for s in (",", ";", "\t", "|", " ") if s in columns[0]]
        hint = f"; the header is one column: is the separator {seen[0]!r}?" if seen else ""
    return DataFormatError(path, line, name, f"no such column (columns: {short(', '.join(map(str, columns)), 80)}){hint}")
