"""Generic tables: an interactions table and an optional items table, CSV/TSV or Parquet.

Interactions need ``user_col`` and ``item_col``; ``time_col`` (numbers, or dates parsed to
Unix seconds) and ``rating_col`` are optional (empty option: absent; without time, row order
is the time). The items table needs ``item_id_col`` (default ``item_col``); every other column
is kept as text (``rename`` maps them to ``title``, ``description``, ...). Without an items
table every item gets the placeholder title. Line numbers in errors count the CSV header as
line 1; for Parquet they are 1-based row numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import DataFormatError, RawData
from allmrec.data.readers._common import check_items, finish_items, interactions_frame, resolve_file

_PATTERNS = ["{}.parquet", "{}.csv", "{}.tsv", "{}.csv.gz", "{}.tsv.gz"]


def files(config: PrepareConfig) -> dict[str, Path | None]:
    return {
        "interactions": resolve_file(config, config.interactions_file, [p.format("interactions") for p in _PATTERNS], "interactions"),
        "items": resolve_file(config, config.items_file, [p.format("items") for p in _PATTERNS], "items", required=False),
    }


def read_table(path: Path, sep: str) -> tuple[pd.DataFrame, int]:
    """The table as strings, and the line number of its first row (2 after a CSV header)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        df = pd.read_parquet(path)
        return df, 1
    sep = sep or ("," if ".csv" in name else "\t")
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                         quoting=csv.QUOTE_MINIMAL, encoding="utf-8")
    except pd.errors.ParserError as err:
        raise DataFormatError(path, None, None, f"malformed table: {err}") from None
    return df, 2


def _col(df: pd.DataFrame, name: str, path: Path) -> pd.Series:
    if name not in df.columns:
        raise DataFormatError(path, 1, name, f"no such column (columns: {', '.join(map(str, df.columns))})")
    return df[name]


def _text(s: pd.Series) -> pd.Series:
    return s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())


def _numbers(s: pd.Series, path: Path, first: int, field: str, dates: bool = False) -> np.ndarray:
    raw = _text(s)
    num = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
    bad = (raw != "") & num.isna()
    if dates and bad.any() and not num.notna().any():  # no numbers at all: dates -> Unix seconds
        when = pd.to_datetime(raw.where(raw != "", None), errors="coerce", utc=True, format="mixed")
        bad = (raw != "") & when.isna()
        num = pd.Series((when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1), index=raw.index, dtype="float64")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(path, row + first, field, f"expected a {'time' if dates else 'number'}, got {raw.iloc[row]!r}")
    return num.to_numpy(dtype=np.float64)


def read(config: PrepareConfig, paths: dict[str, Path | None]) -> RawData:
    ipath = paths["interactions"]
    assert ipath is not None
    df, first = read_table(ipath, config.sep)
    users = _text(_col(df, config.user_col, ipath))
    items = _text(_col(df, config.item_col, ipath))
    for name, s in ((config.user_col, users), (config.item_col, items)):
        empty = np.flatnonzero((s == "").to_numpy())
        if empty.size:
            raise DataFormatError(ipath, int(empty[0]) + first, name, "missing required field")
    times = ratings = None
    if config.time_col:
        t = _numbers(_col(df, config.time_col, ipath), ipath, first, config.time_col, dates=True)
        if np.isnan(t).any():
            raise DataFormatError(ipath, int(np.flatnonzero(np.isnan(t))[0]) + first, config.time_col, "missing required field")
        times = t.astype(np.int64).tolist()
    if config.rating_col:
        ratings = _numbers(_col(df, config.rating_col, ipath), ipath, first, config.rating_col).tolist()
    inter = interactions_frame(users.tolist(), items.tolist(), times, ratings)
    lines = np.arange(len(df)) + first
    info: dict[str, Any] = {}
    mpath = paths.get("items")
    if mpath is None:
        meta = finish_items(pd.DataFrame({"item_id": pd.unique(inter["item_id"])}), config, ipath)
        return RawData(inter, meta, files=[ipath], info=info)
    mdf, mfirst = read_table(mpath, config.sep)
    id_col = config.item_id_col or config.item_col
    ids = _text(_col(mdf, id_col, mpath))
    empty = np.flatnonzero((ids == "").to_numpy())
    if empty.size:
        raise DataFormatError(mpath, int(empty[0]) + mfirst, id_col, "missing required field")
    mdf = mdf.drop(columns=[id_col]).assign(item_id=ids.to_numpy())
    meta = finish_items(mdf, config, mpath)
    inter = check_items(inter, lines, meta, config, ipath, info)
    return RawData(inter, meta, files=[ipath, mpath], info=info)
