"""Amazon review datasets: the 2014 and 2018 releases (McAuley et al.) and Amazon Reviews 2023.

* 2014: ``reviews_<Cat>[_5].json(.gz)`` (one JSON object a line) with ``reviewerID``,
  ``asin``, ``overall``, ``unixReviewTime``; ``meta_<Cat>.json(.gz)`` written as Python dict
  literals (parsed with ``ast.literal_eval``) with ``asin``, ``title``, ``description`` (str),
  ``categories`` (list of lists), ``brand``.
* 2018: the same review fields; strict-JSON meta with ``category`` (list) and ``description``
  (list).
* 2023: ``<Cat>.jsonl(.gz)`` with ``user_id``, ``parent_asin`` (the item), ``rating``,
  ``timestamp`` (ms); ``meta_<Cat>.jsonl(.gz)`` keyed by ``parent_asin`` with ``title``,
  ``description`` (list), ``categories`` (list), ``store`` (used as the brand).

Every line may be JSON or a Python literal (both releases exist in both forms in the wild).
Metadata keeps scalar and list-of-text fields; nested mappings (``related``, ``details``,
``salesRank``), lists of ASINs and image URLs are dropped. A repeated meta row keeps the first.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import DataFormatError, RawData
from allmrec.data.readers._common import (check_items, clean, finish_items, interactions_frame, numbered_lines,
                                          require, resolve_file, to_float, to_int)

_REVIEW_FIELDS = {  # format -> (user, item, rating, time)
    "amazon2014": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "amazon2018": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "amazon2023": ("user_id", "parent_asin", "rating", "timestamp"),
}
_META_RENAME = {"category": "categories", "store": "brand", "feature": "features"}
_META_DROP = {"related", "also_buy", "also_view", "similar_item", "imUrl", "imageURL", "imageURLHighRes",
              "image", "images", "videos", "bought_together", "salesRank", "details", "tech1", "tech2"}


def files(config: PrepareConfig) -> dict[str, Path]:
    if config.format == "amazon2023":
        inter = ["*.jsonl.gz", "*.jsonl"]
        meta = ["meta_*.jsonl.gz", "meta_*.jsonl"]
    else:
        inter = ["reviews_*.json.gz", "reviews_*.json", "*.json.gz", "*.json"]
        meta = ["meta_*.json.gz", "meta_*.json"]
    return {
        "interactions": resolve_file(config, config.interactions_file, inter, "interactions", exclude=["meta*"]),
        "items": resolve_file(config, config.items_file, meta, "items"),
    }


def parse_record(line: str, path: Path, line_no: int) -> dict[str, Any]:
    """One line as a dict: strict JSON first, then a Python literal (2014 metadata)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            raise DataFormatError(path, line_no, None, f"neither JSON nor a Python dict literal ({type(err).__name__})") from None
    if not isinstance(rec, dict):
        raise DataFormatError(path, line_no, None, f"expected an object, got {type(rec).__name__}")
    return rec


def read_reviews(path: Path, fmt: str) -> tuple[pd.DataFrame, np.ndarray]:
    f_user, f_item, f_rating, f_time = _REVIEW_FIELDS[fmt]
    users, items, times, ratings, lines = [], [], [], [], []
    for line_no, line in numbered_lines(path):
        rec = parse_record(line, path, line_no)
        users.append(str(require(rec, f_user, path, line_no)))
        items.append(str(require(rec, f_item, path, line_no)))
        times.append(to_int(require(rec, f_time, path, line_no), path, line_no, f_time))
        r = rec.get(f_rating)
        ratings.append(np.nan if r is None else to_float(r, path, line_no, f_rating))
        lines.append(line_no)
    return interactions_frame(users, items, times, ratings), np.asarray(lines, dtype=np.int64)


def read_meta(path: Path, fmt: str) -> tuple[pd.DataFrame, int]:
    id_field = "parent_asin" if fmt == "amazon2023" else "asin"
    rows: dict[str, dict[str, str]] = {}
    duplicates = 0
    for line_no, line in numbered_lines(path):
        rec = parse_record(line, path, line_no)
        item = str(require(rec, id_field, path, line_no))
        if item in rows:
            duplicates += 1
            continue
        row = {"item_id": item}
        for key, value in rec.items():
            key = _META_RENAME.get(key, key)
            if key in _META_DROP or key in (id_field, "item_id", "asin", "parent_asin") or isinstance(value, dict):
                continue
            if key == "description" and isinstance(value, (list, tuple)):
                row[key] = " ".join(s for s in (clean(v) for v in value) if s)
            elif key not in row or not row[key]:
                row[key] = clean(value)
        rows[item] = row
    return pd.DataFrame(list(rows.values()) or {"item_id": []}), duplicates


def read(config: PrepareConfig, paths: dict[str, Path]) -> RawData:
    inter, lines = read_reviews(paths["interactions"], config.format)
    meta, duplicates = read_meta(paths["items"], config.format)
    meta = finish_items(meta, config, paths["items"])
    info: dict[str, Any] = {"duplicate_metadata_rows": duplicates} if duplicates else {}
    inter = check_items(inter, lines, meta, config, paths["interactions"], info)
    return RawData(inter, meta, files=[paths["interactions"], paths["items"]], info=info)
