"""Generic tables: an interactions table and an optional items table, CSV/TSV or Parquet.

Interactions need ``user_col`` and ``item_col``; ``time_col`` (numbers, or dates parsed to
Unix seconds) and ``rating_col`` are optional (empty option: absent; without time, row order
is the time). The items table needs ``item_id_col`` (default ``item_col``); every other column
is kept as text (``rename`` maps them to ``title``, ``description``, ...). Without an items
table every item gets the placeholder title. Line numbers in errors are the line a CSV
record starts on (the header is line 1 unless blank lines precede it); for Parquet they are
1-based row numbers.

Robustness (besides the rules in :mod:`allmrec.data.readers._common`, which CSV files are
read through, gzip and byte-order marks included): CSV quoting is the standard one
(``csv`` module); header names are stripped and must be unique; every record must have the
header's number of fields; a field longer than 131,072 characters is an error; a header of
one column containing another likely separator says so. An interactions table without data
rows is an error. Ids are required in every row; times
and ratings must be finite (an empty rating is no rating, an empty time an error); numeric
times must fit a 64-bit integer. Parquet columns are read as text (``pyarrow`` casts), so
integer ids match between the two tables; a file pyarrow cannot read names the file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import DataFormatError, EmptyFileError, RawData, short
from allmrec.data.readers._common import (INT64_MAX, check_items, finish_items, interactions_frame, no_such_column,
                                          resolve_file, text_lines, to_id)

_PATTERNS = ["{}.parquet", "{}.csv", "{}.tsv", "{}.csv.gz", "{}.tsv.gz"]

Columns = dict[str, list[Any]]


def files(config: PrepareConfig) -> dict[str, Path | None]:
    return {
        "interactions": resolve_file(config, config.interactions_file, [p.format("interactions") for p in _PATTERNS], "interactions"),
        "items": resolve_file(config, config.items_file, [p.format("items") for p in _PATTERNS], "items", required=False),
    }


def read_table(path: Path, sep: str) -> tuple[Columns, np.ndarray]:
    """The table's columns (name -> values) and the line number of each row."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _read_parquet(path)
    return _read_csv(path, sep or ("," if ".csv" in name else "\t"))


def _read_parquet(path: Path) -> tuple[Columns, np.ndarray]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        why = str(err).rsplit(": ", 1)[-1][:120]  # the part after "Could not open <path>: ", if any
        raise DataFormatError(path, None, None, f"not a readable Parquet file ({why})") from None
    columns: Columns = {}
    for name, col in zip(table.column_names, table.columns):
        if name in columns:
            raise DataFormatError(path, None, name, "two columns have this name")
        try:
            columns[name] = pc.cast(col, pa.string()).to_pylist()
        except pa.ArrowException:  # lists, structs: kept as Python objects (an error where a scalar is needed)
            columns[name] = col.to_pylist()
    return columns, np.arange(1, table.num_rows + 1)


def _read_csv(path: Path, sep: str) -> tuple[Columns, np.ndarray]:
    last = [0]  # line number of the last physical line handed to the csv module

    def feed() -> Iterator[str]:
        for last[0], line in text_lines(path):
            yield line

    records = csv.reader(feed(), delimiter=sep) if len(sep) == 1 else (line.rstrip("\r\n").split(sep) for line in feed())
    header: list[str] | None = None
    rows, lines = [], []
    start = 1
    try:
        for record in records:
            line_no, start = start, last[0] + 1
            if not record or len(record) == 1 and not record[0].strip():
                continue  # a blank line
            if header is None:
                header = _header(record, path, line_no)
            elif len(record) != len(header):
                raise DataFormatError(path, line_no, None, f"expected {len(header)} {sep!r}-separated fields (the header's), "
                                                           f"got {len(record)}")
            else:
                rows.append(record)
                lines.append(line_no)
    except csv.Error as err:
        raise DataFormatError(path, start, None, f"malformed CSV ({err})") from None
    if header is None:  # every line blank once parsed, e.g. only ""
        raise EmptyFileError(path, None, None, "the file has no header")
    columns: Columns = {h: [r[k] for r in rows] for k, h in enumerate(header)}
    return columns, np.asarray(lines, dtype=np.int64)


def _header(record: list[str], path: Path, line_no: int) -> list[str]:
    names = [h.strip() for h in record]
    for k, name in enumerate(names):
        if name in names[:k]:
            raise DataFormatError(path, line_no, name, "two columns have this name")
    return names


def _col(columns: Columns, name: str, path: Path) -> list[Any]:
    if name not in columns:
        raise no_such_column(path, 1, name, list(columns))
    return columns[name]


def _ids(columns: Columns, name: str, path: Path, lines: np.ndarray) -> list[str]:
    return [to_id(v, path, int(line), name) for v, line in zip(_col(columns, name, path), lines)]


def _cell(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()


def _numbers(values: list[Any], path: Path, lines: np.ndarray, field: str, dates: bool = False) -> np.ndarray:
    """Finite floats (NaN where empty); with ``dates``, a column without any number is parsed
    as dates (Unix seconds) and values must fit an int64."""
    raw = pd.Series([_cell(v) for v in values], dtype=object)
    num = pd.to_numeric(raw.where(raw != "", None), errors="coerce").astype(np.float64)
    bad = (raw != "") & num.isna()
    if dates and bad.any() and not num.notna().any():  # no numbers at all: dates -> Unix seconds
        when = pd.to_datetime(raw.where(raw != "", None), errors="coerce", utc=True, format="mixed")
        bad = (raw != "") & when.isna()
        epoch = pd.Timestamp("1970-01-01", tz="UTC").as_unit("s")  # second resolution: no overflow for year 1 or 9999
        num = np.floor((when - epoch).dt.total_seconds())
    limit = float(INT64_MAX) if dates else np.inf
    bad |= num.notna() & ~(num.abs() < limit)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(path, int(lines[row]), field,
                              f"expected a {'time' if dates else 'finite number'}, got {short(raw.iloc[row])}")
    return num.to_numpy(dtype=np.float64)


def read(config: PrepareConfig, paths: dict[str, Path | None]) -> RawData:
    ipath = paths["interactions"]
    assert ipath is not None
    table, lines = read_table(ipath, config.sep)
    users = _ids(table, config.user_col, ipath, lines)
    items = _ids(table, config.item_col, ipath, lines)
    times = ratings = None
    if config.time_col:
        t = _numbers(_col(table, config.time_col, ipath), ipath, lines, config.time_col, dates=True)
        if np.isnan(t).any():
            raise DataFormatError(ipath, int(lines[np.flatnonzero(np.isnan(t))[0]]), config.time_col, "missing required field")
        times = t.astype(np.int64).tolist()
    if config.rating_col:
        ratings = _numbers(_col(table, config.rating_col, ipath), ipath, lines, config.rating_col).tolist()
    inter = interactions_frame(users, items, times, ratings)
    info: dict[str, Any] = {}
    mpath = paths.get("items")
    if mpath is None:
        meta = finish_items(pd.DataFrame({"item_id": pd.unique(inter["item_id"])}), config, ipath, info)
        return RawData(inter, meta, files=[ipath], info=info)
    mtable, mlines = read_table(mpath, config.sep)
    id_col = config.item_id_col or config.item_col
    ids = _ids(mtable, id_col, mpath, mlines)
    mdf = pd.DataFrame({k: v for k, v in mtable.items() if k != id_col}, index=range(len(ids))).assign(item_id=ids)
    meta = finish_items(mdf, config, mpath, info)
    inter = check_items(inter, lines, meta, config, ipath, info)
    return RawData(inter, meta, files=[ipath, mpath], info=info)
