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

Robustness (besides the rules in :mod:`allmrec.data.readers._common`): user, item and time are
required on every review; ``overall`` / ``rating`` may be absent (no rating) but when present
must be a number from 0 to 5; timestamps (seconds; 2023: ms) must be numbers >= 0.
A line that is neither JSON nor a Python literal, or not an object, names its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import RawData
from allmrec.data.readers._common import (check_items, clean, finish_items, interactions_frame, numbered_lines,
                                          parse_object, resolve_file, to_float, to_id, to_int)

STARS = (0.0, 5.0)  # the range of a review's rating
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


def read_reviews(path: Path, fmt: str) -> tuple[pd.DataFrame, np.ndarray]:
    f_user, f_item, f_rating, f_time = _REVIEW_FIELDS[fmt]
    users, items, times, ratings, lines = [], [], [], [], []
    for line_no, line in numbered_lines(path):
        rec = parse_object(line, path, line_no, literal=True)
        users.append(to_id(rec.get(f_user), path, line_no, f_user))
        items.append(to_id(rec.get(f_item), path, line_no, f_item))
        times.append(to_int(rec.get(f_time), path, line_no, f_time, lo=0))
        r = rec.get(f_rating)
        ratings.append(np.nan if r is None else to_float(r, path, line_no, f_rating, *STARS))
        lines.append(line_no)
    return interactions_frame(users, items, times, ratings), np.asarray(lines, dtype=np.int64)


def read_meta(path: Path, fmt: str) -> pd.DataFrame:
    id_field = "parent_asin" if fmt == "amazon2023" else "asin"
    rows: list[dict[str, str]] = []
    for line_no, line in numbered_lines(path):
        rec = parse_object(line, path, line_no, literal=True)
        row = {"item_id": to_id(rec.get(id_field), path, line_no, id_field)}
        for key, value in rec.items():
            key = _META_RENAME.get(key, key)
            if key in _META_DROP or key in (id_field, "item_id", "asin", "parent_asin") or isinstance(value, dict):
                continue
            if key == "description" and isinstance(value, (list, tuple)):
                row[key] = " ".join(s for s in (clean(v) for v in value) if s)
            elif key not in row or not row[key]:
                row[key] = clean(value)
        rows.append(row)
    return pd.DataFrame(rows)


def read(config: PrepareConfig, paths: dict[str, Path]) -> RawData:
    inter, lines = read_reviews(paths["interactions"], config.format)
    info: dict[str, Any] = {}
    meta = finish_items(read_meta(paths["items"], config.format), config, paths["items"], info)
    inter = check_items(inter, lines, meta, config, paths["interactions"], info)
    return RawData(inter, meta, files=[paths["interactions"], paths["items"]], info=info)
