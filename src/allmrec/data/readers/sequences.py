"""``sequences`` format (e.g. ../shared/data/amazon-beauty).

``sequences.txt``: one user a line, ``USER ITEM ITEM ...`` oldest first, no timestamps or
ratings (file order is the time). ``items.jsonl``: one JSON object a line with ``item_id``,
``title``, ``categories`` (list of lists), optionally ``brand`` / ``description``.

Robustness (besides the rules in :mod:`allmrec.data.readers._common`): tokens are separated
by any run of spaces or tabs; a line with a user and no item, and a user listed on two lines,
are errors naming the line; a line that looks comma- or semicolon-separated says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import DataFormatError, RawData, short
from allmrec.data.readers._common import (check_items, finish_items, interactions_frame, numbered_lines,
                                          parse_object, resolve_file, to_id)


def files(config: PrepareConfig) -> dict[str, Path]:
    return {
        "interactions": resolve_file(config, config.interactions_file, ["sequences.txt", "sequences.txt.gz"], "interactions"),
        "items": resolve_file(config, config.items_file, ["items.jsonl", "items.jsonl.gz", "items.json"], "items"),
    }


def read_jsonl_items(path: Path, id_field: str = "item_id") -> pd.DataFrame:
    rows = []
    for line_no, line in numbered_lines(path):
        rec = parse_object(line, path, line_no)
        rec[id_field] = to_id(rec.get(id_field), path, line_no, id_field)
        rows.append(rec)
    return pd.DataFrame(rows)


def read(config: PrepareConfig, paths: dict[str, Path]) -> RawData:
    seq_path = paths["interactions"]
    users: list[str] = []
    items: list[str] = []
    lines: list[int] = []
    seen_users: dict[str, int] = {}
    for line_no, line in numbered_lines(seq_path):
        tokens = line.split()
        if len(tokens) < 2:
            hint = next((f" (items are separated by spaces, not {s!r})" for s in ",;|" if s in tokens[0]), "")
            raise DataFormatError(seq_path, line_no, "items", f"user {short(tokens[0])} has no items{hint}")
        if tokens[0] in seen_users:
            raise DataFormatError(seq_path, line_no, "user_id",
                                  f"user {short(tokens[0])} already listed on line {seen_users[tokens[0]]}")
        seen_users[tokens[0]] = line_no
        users.extend([tokens[0]] * (len(tokens) - 1))
        items.extend(tokens[1:])
        lines.extend([line_no] * (len(tokens) - 1))
    inter = interactions_frame(users, items)
    info: dict = {}
    meta = finish_items(read_jsonl_items(paths["items"]), config, paths["items"], info)
    inter = check_items(inter, np.asarray(lines), meta, config, seq_path, info)
    return RawData(inter, meta, files=[seq_path, paths["items"]], info=info)
