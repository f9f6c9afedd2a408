"""Helpers shared by the readers: locating files, opening plain/.gz text, normalising text."""

from __future__ import annotations

import gzip
import html
import importlib.util
import io
import re
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import TEXT_COLUMNS, DataFormatError

_SPACES = re.compile(r"\s+")


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
    """Open a plain or gzip text file (gzip detected by its magic bytes, not its name)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def numbered_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(1-based line number, line)`` for every non-blank line."""
    with open_text(path, encoding) as f:
        try:
            for i, line in enumerate(f, 1):
                line = line.rstrip("\r\n")  # keep other trailing whitespace: it may be an empty last field
                if line.strip():
                    yield i, line
        except UnicodeDecodeError as err:
            raise DataFormatError(path, None, None, f"not valid {encoding} text ({err})") from None


def clean(value: Any) -> str:
    """One line of text: lists flattened (unique, in order) and joined with ", ", HTML entities
    decoded, whitespace collapsed; ``None``/NaN -> ``""``."""
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, (list, tuple)):
        parts: list[str] = []
        for v in _flatten(value):
            s = clean(v)
            if s and s not in parts:
                parts.append(s)
        return ", ".join(parts)
    return _SPACES.sub(" ", html.unescape(str(value))).strip()


def _flatten(values: Iterable[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


def finish_items(items: pd.DataFrame, config: PrepareConfig, file: Path | str) -> pd.DataFrame:
    """Apply ``rename`` / ``field_seps``, make every text column a clean string, add missing
    standard columns (``""``), drop extra columns empty for every item, keep the first row of
    a duplicated item id."""
    items = items.rename(columns=dict(config.rename))
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
    return out.drop_duplicates("item_id", keep="first").reset_index(drop=True)


def _present(v: Any) -> bool:
    return not (v is None or (isinstance(v, float) and np.isnan(v)))


def check_items(interactions: pd.DataFrame, lines: np.ndarray, items: pd.DataFrame, config: PrepareConfig,
                file: Path, info: dict[str, Any]) -> pd.DataFrame:
    """Handle interactions whose item has no metadata row, per ``config.missing_items``."""
    known = interactions["item_id"].isin(items["item_id"]).to_numpy()
    if known.all():
        return interactions
    if config.missing_items == "error":
        first = int(np.flatnonzero(~known)[0])
        raise DataFormatError(file, int(lines[first]), "item_id",
                              f"item {interactions['item_id'].iloc[first]!r} is not in the items file "
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


def require(record: dict[str, Any], key: str, file: Path, line: int) -> Any:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataFormatError(file, line, key, "missing required field")
    return value


def to_int(value: Any, file: Path, line: int, field: str) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise DataFormatError(file, line, field, f"expected a number, got {value!r}") from None


def to_float(value: Any, file: Path, line: int, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataFormatError(file, line, field, f"expected a number, got {value!r}") from None
