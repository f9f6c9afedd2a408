"""MovieLens in its common layouts.

* ``recbole``: RecBole atomic files ``<name>.inter`` / ``<name>.item``: tab separated, a header
  of ``field:type``; ``token_seq`` values are space separated (turn a list column into
  ``"a, b"`` text with ``field_seps``). Interactions use ``user_col`` / ``item_col`` and, when
  present, ``timestamp`` / ``rating`` (or ``time_col`` / ``rating_col``).
* ``movielens``: GroupLens ML-100K ``u.data`` (``user<TAB>item<TAB>rating<TAB>timestamp``) +
  ``u.item`` (``|`` separated, latin-1, 19 genre flags, names from ``u.genre`` when present),
  or ML-1M ``ratings.dat`` / ``movies.dat`` (``::`` separated, latin-1, genres ``A|B``).
  Genres become a ``genres`` text column ``"Animation, Children's, Comedy"``.

Robustness (besides the rules in :mod:`allmrec.data.readers._common`): every line must have
the file's number of fields (RecBole: the header's), and an id must not be empty. GroupLens:
the separator is found on the first line (``u.data`` tab, ``ratings.dat`` ``::``; anything
else is an error naming the line); ratings are numbers from 0 to 5 and timestamps numbers
>= 0; item files are read as UTF-8 when they are valid UTF-8 (a re-saved copy) and as
latin-1 (the GroupLens original) otherwise. RecBole: the header must be tab-separated and its names unique; ratings
and timestamps are any finite numbers (an empty rating is no rating).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import DataFormatError, RawData, TextEncodingError, short
from allmrec.data.readers._common import (check_items, finish_items, interactions_frame, no_such_column, numbered_lines,
                                          resolve_file, text_lines, to_float, to_id, to_int)

STARS = (0.0, 5.0)  # the range of a GroupLens rating
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]


def files(config: PrepareConfig) -> dict[str, Path]:
    if config.format == "recbole":
        return {"interactions": resolve_file(config, config.interactions_file, ["*.inter"], "interactions"),
                "items": resolve_file(config, config.items_file, ["*.item"], "items")}
    return {"interactions": resolve_file(config, config.interactions_file, ["u.data", "ratings.dat"], "interactions"),
            "items": resolve_file(config, config.items_file, ["u.item", "movies.dat"], "items")}


def split_lines(path: Path, sep: str, n_fields: int | None, encoding: str = "utf-8",
                at_least: bool = False) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)``; a wrong number of fields is a :class:`DataFormatError`."""
    for line_no, line in numbered_lines(path, encoding):
        fields = line.split(sep)
        if n_fields is not None and (len(fields) < n_fields if at_least else len(fields) != n_fields):
            raise DataFormatError(path, line_no, None, f"expected {n_fields} {sep!r}-separated fields, got {len(fields)}")
        yield line_no, fields


def _sep(path: Path, encoding: str, choices: tuple[str, ...]) -> str:
    """The first of ``choices`` that occurs on the first non-blank line of ``path``."""
    lines = numbered_lines(path, encoding)
    line_no, line = next(lines)  # an empty file raises EmptyFileError here
    lines.close()
    for sep in choices:
        if sep in line:
            return sep
    raise DataFormatError(path, line_no, None, f"expected fields separated by {' or '.join(map(repr, choices))}")


def _encoding(path: Path) -> str:
    """UTF-8 if all of ``path`` decodes as UTF-8, else latin-1 (the GroupLens files' own)."""
    try:
        for _ in text_lines(path):
            pass
    except TextEncodingError:
        return "latin-1"
    return "utf-8"


# ---- RecBole atomic files ----------------------------------------------------------------
def read_atomic(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header names (types stripped) and the ``(line, fields)`` rows of an atomic file."""
    rows = split_lines(path, "\t", None)
    header_line, header = next(rows)  # an empty file raises EmptyFileError here
    if len(header) == 1 and header[0].count(":") > 1:
        raise DataFormatError(path, header_line, None, f"the header {short(header[0])} is one column: atomic files are "
                                                       f"tab-separated")
    names = [h.split(":", 1)[0].strip() for h in header]
    for k, name in enumerate(names):
        if name in names[:k]:
            raise DataFormatError(path, header_line, name, "two columns have this name")
    body = []
    for line_no, fields in rows:
        if len(fields) != len(names):
            raise DataFormatError(path, line_no, None, f"expected {len(names)} tab-separated fields (the header's), got {len(fields)}")
        body.append((line_no, fields))
    return names, body


def _column(names: list[str], wanted: str, path: Path, required: bool) -> int | None:
    if wanted in names:
        return names.index(wanted)
    if required:
        raise no_such_column(path, 1, wanted, names)
    return None


def read_recbole(config: PrepareConfig, paths: dict[str, Path]) -> RawData:
    ipath = paths["interactions"]
    names, body = read_atomic(ipath)
    cu = _column(names, config.user_col, ipath, True)
    ci = _column(names, config.item_col, ipath, True)
    ct = _column(names, config.time_col or "timestamp", ipath, bool(config.time_col))
    cr = _column(names, config.rating_col or "rating", ipath, bool(config.rating_col))
    users, items, times, ratings, lines = [], [], [], [], []
    for line_no, f in body:
        users.append(to_id(f[cu], ipath, line_no, names[cu]))
        items.append(to_id(f[ci], ipath, line_no, names[ci]))
        if ct is not None:
            times.append(to_int(f[ct], ipath, line_no, names[ct]))
        if cr is not None:
            ratings.append(to_float(f[cr], ipath, line_no, names[cr]) if f[cr].strip() else np.nan)
        lines.append(line_no)
    inter = interactions_frame(users, items, times if ct is not None else None, ratings if cr is not None else None)
    mpath = paths["items"]
    mnames, mbody = read_atomic(mpath)
    cid = _column(mnames, config.item_id_col or config.item_col, mpath, True)
    rows = [[to_id(v, mpath, line_no, mnames[cid]) if k == cid else v for k, v in enumerate(f)] for line_no, f in mbody]
    meta = pd.DataFrame(rows, columns=mnames).rename(columns={mnames[cid]: "item_id"})
    return _finish(inter, np.asarray(lines), meta, config, paths)


# ---- GroupLens files ---------------------------------------------------------------------
def read_grouplens(config: PrepareConfig, paths: dict[str, Path]) -> RawData:
    ipath, mpath = paths["interactions"], paths["items"]
    sep = _sep(ipath, "latin-1", ("::", "\t"))
    users, items, times, ratings, lines = [], [], [], [], []
    for line_no, f in split_lines(ipath, sep, 4, "latin-1"):
        users.append(to_id(f[0], ipath, line_no, "user_id"))
        items.append(to_id(f[1], ipath, line_no, "item_id"))
        ratings.append(to_float(f[2], ipath, line_no, "rating", *STARS))
        times.append(to_int(f[3], ipath, line_no, "timestamp", lo=0))
        lines.append(line_no)
    inter = interactions_frame(users, items, times, ratings)
    rows: list[dict[str, Any]] = []
    encoding = _encoding(mpath)
    if _sep(mpath, encoding, ("::", "|")) == "::":  # ML-1M movies.dat: id::title::A|B
        for line_no, f in split_lines(mpath, "::", 3, encoding):
            rows.append({"item_id": to_id(f[0], mpath, line_no, "item_id"), "title": f[1],
                         "genres": ", ".join(g for g in f[2].split("|") if g)})
    else:  # ML-100K u.item: id|title|release|video release|url|19 flags
        genres = _genre_names(mpath.parent / "u.genre")
        n = 5 + len(genres)
        for line_no, f in split_lines(mpath, "|", n, encoding):
            flags = f[5:n]
            if any(x.strip() not in ("0", "1") for x in flags):
                raise DataFormatError(mpath, line_no, "genres", f"genre flags must be 0 or 1, got {'|'.join(flags)}")
            rows.append({"item_id": to_id(f[0], mpath, line_no, "item_id"), "title": f[1], "release_date": f[2],
                         "imdb_url": f[4], "genres": ", ".join(g for g, x in zip(genres, flags) if x.strip() == "1")})
    return _finish(inter, np.asarray(lines), pd.DataFrame(rows), config, paths)


def _genre_names(path: Path) -> list[str]:
    if not path.exists():
        return list(ML100K_GENRES)
    encoding = _encoding(path)
    pairs = [(to_int(f[1], path, line_no, "genre_id"), f[0]) for line_no, f in split_lines(path, "|", 2, encoding)]
    return [name for _, name in sorted(pairs)]


def _finish(inter: pd.DataFrame, lines: np.ndarray, meta: pd.DataFrame, config: PrepareConfig,
            paths: dict[str, Path]) -> RawData:
    info: dict[str, Any] = {}
    meta = finish_items(meta, config, paths["items"], info)
    inter = check_items(inter, lines, meta, config, paths["interactions"], info)
    return RawData(inter, meta, files=[paths["interactions"], paths["items"]], info=info)


def read(config: PrepareConfig, paths: dict[str, Path]) -> RawData:
    return read_recbole(config, paths) if config.format == "recbole" else read_grouplens(config, paths)
