"""Raw interactions -> ordered, filtered, id-mapped sequences with item texts and statistics.

Steps (each a small function, in this order):

1. ``filter_rating``: keep ``rating >= min_rating`` (``>`` if strict); off by default.
   Interactions without a rating fail the filter; their count is
   ``stats["interactions_without_rating"]``.
2. ``drop_repeats`` (optional): keep a user's first interaction with an item.
3. ``k_core``: drop users and items with fewer than ``k`` interactions (rows), repeated until
   nothing changes.
4. Cold users (optional, ``cold_users > 0``): see :func:`choose_cold_users`.
5. Users with fewer than 3 interactions cannot be split leave-one-out: they are dropped,
   counted in ``stats["users_too_short"]`` and a warning is logged.
6. Chronological order per user: by ``timestamp`` then original file ``order`` (stable
   tie-break); without timestamps by file order alone.
7. Ids: users ``0..n-1`` in order of first appearance in the source file; items ``1..n`` in
   order of first appearance when reading the users' chronological sequences user by user.

Repairs the readers made (rows dropped or merged, see ``RawData.info``) are copied into the
statistics and logged as one warning. When the data cannot make a dataset with these options
(nothing left after filtering), :func:`build` raises
:class:`~allmrec.data.raw.InsufficientDataError` naming the interactions file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from allmrec.data.config import PrepareConfig
from allmrec.data.raw import DataFormatError, InsufficientDataError, RawData
from allmrec.data.template import ItemTemplate
from allmrec.utils.seed import rng

log = logging.getLogger(__name__)

MIN_LENGTH = 3  # one history item + a validation and a test target


@dataclass
class Prepared:
    """Everything ``prepare`` stores, before candidates are drawn."""

    user_ids: np.ndarray  # (n_users,) str
    user_kind: np.ndarray  # (n_users,) str: "train", "cold_natural", "cold_truncated"
    sequences: list[np.ndarray]  # int64 item ids, chronological
    seen: list[np.ndarray]  # items each user interacted with (for cold-truncated users: before truncation)
    items: pd.DataFrame  # row k = item id k (row 0 = padding); item_id, title, text, other text columns
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def train_users(self) -> np.ndarray:
        return self.user_kind == "train"


def filter_rating(df: pd.DataFrame, min_rating: float | None, strict: bool = False) -> pd.DataFrame:
    if min_rating is None:
        return df
    if "rating" not in df.columns or df["rating"].isna().all():
        raise ValueError("min_rating is set but the interactions have no ratings")
    r = df["rating"].to_numpy(dtype=np.float64)
    keep = r > min_rating if strict else r >= min_rating  # NaN ratings fail both
    return df[keep].reset_index(drop=True)


def chronological(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by user (first appearance in file order), then time, then file order."""
    df = df.sort_values("order", kind="stable")
    ucode, _ = pd.factorize(df["user_id"])
    keys = [df["order"].to_numpy()]
    if "timestamp" in df.columns:
        keys.append(df["timestamp"].to_numpy())
    keys.append(ucode)
    return df.iloc[np.lexsort(keys)].reset_index(drop=True)  # lexsort: last key is primary


def drop_repeats(df: pd.DataFrame) -> pd.DataFrame:
    df = chronological(df)
    return df[~df.duplicated(["user_id", "item_id"], keep="first")].reset_index(drop=True)


def k_core(df: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Iterative k-core on interaction counts; returns the kept rows and the number of passes."""
    if k <= 1 or df.empty:
        return df, 0
    u, _ = pd.factorize(df["user_id"])
    i, _ = pd.factorize(df["item_id"])
    keep = np.ones(len(df), dtype=bool)
    passes = 0
    while True:
        uc = np.bincount(u[keep], minlength=u.max() + 1)
        ic = np.bincount(i[keep], minlength=i.max() + 1)
        bad = keep & ((uc[u] < k) | (ic[i] < k))
        if not bad.any():
            break
        keep &= ~bad
        passes += 1
    return df[keep].reset_index(drop=True), passes


def choose_cold_users(filtered: pd.DataFrame, core: pd.DataFrame, config: PrepareConfig) -> tuple[pd.DataFrame, dict[str, str], dict[str, np.ndarray]]:
    """Pick ``config.cold_users`` users to hold out of all training, with ``L = cold_user_length``
    interactions each.

    Natural cold users come first: users with exactly ``L`` interactions after the rating
    filter whose items all survive the k-core (the k-core would have dropped them for being
    short). They are added back. If there are fewer than asked, the rest are k-core users
    longer than ``L`` truncated to their first ``L`` interactions (5-core data has no natural
    ones). Both choices are seeded samples. Truncation removes interactions, so the result is
    no longer strictly a k-core. Returns the new interactions, ``{user_id: kind}`` and, for
    truncated users, their full item list (their later items are never used as negatives).
    """
    n, L = config.cold_users, config.cold_user_length
    if n == 0:
        return core, {}, {}
    g = rng(config.seed, "cold_users")
    items_ok = set(core["item_id"].unique())
    counts = filtered.groupby("user_id", sort=False).size()
    natural = [u for u in counts.index[counts.to_numpy() == L]]
    by_user = filtered[filtered["user_id"].isin(natural)].groupby("user_id", sort=False)["item_id"].agg(list)
    natural = sorted((u for u in natural if set(by_user[u]) <= items_ok), key=str)
    if len(natural) > n:
        natural = [natural[j] for j in np.sort(g.choice(len(natural), size=n, replace=False))]
    kinds = {u: "cold_natural" for u in natural}
    core_users = set(core["user_id"].unique())
    add = filtered[filtered["user_id"].isin([u for u in natural if u not in core_users])]
    out = pd.concat([core, add], ignore_index=True) if len(add) else core
    need = n - len(natural)
    full: dict[str, np.ndarray] = {}
    if need > 0:
        ordered = chronological(out)
        lens = ordered.groupby("user_id", sort=False).size()
        pool = sorted((u for u in lens.index[lens.to_numpy() > L] if u not in kinds), key=str)
        if len(pool) < need:
            raise ValueError(f"cold_users={n}: only {len(natural)} natural and {len(pool)} truncatable users available")
        picked = [pool[j] for j in np.sort(g.choice(len(pool), size=need, replace=False))]
        kinds.update({u: "cold_truncated" for u in picked})
        pos = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
        is_picked = ordered["user_id"].isin(picked).to_numpy()
        for u, items in ordered[is_picked].groupby("user_id", sort=False)["item_id"]:
            full[u] = items.to_numpy()
        out = ordered[~is_picked | (pos < L)]
    return out.reset_index(drop=True), kinds, full


def build(raw: RawData, config: PrepareConfig) -> Prepared:
    """Run the steps of this module on ``raw`` (see the module docstring)."""
    df = raw.interactions
    stats: dict[str, Any] = {
        "raw_interactions": len(df),
        "raw_users": int(df["user_id"].nunique()),
        "raw_items": int(df["item_id"].nunique()),
        "metadata_items": len(raw.items),
    }
    stats.update(raw.info)
    if raw.info:
        log.warning("%s: input repaired: %s", config.name, ", ".join(f"{k}={v}" for k, v in raw.info.items()))
    source = raw.files[0] if raw.files else "interactions"
    if config.min_rating is not None:
        if not raw.has_rating:
            raise DataFormatError(source, None, "rating", "min_rating is set but the interactions have no ratings")
        stats["interactions_without_rating"] = int(df["rating"].isna().sum())
    df = filter_rating(df, config.min_rating, config.min_rating_strict)
    stats["interactions_after_rating_filter"] = len(df)
    if config.drop_repeats:
        df = drop_repeats(df)
        stats["interactions_after_drop_repeats"] = len(df)
    filtered = df
    df, passes = k_core(df, config.k_core)
    stats["k_core_passes"] = passes
    df, kinds, full = choose_cold_users(filtered, df, config)

    lens = df.groupby("user_id", sort=False).size()
    short = lens.index[lens.to_numpy() < MIN_LENGTH]
    stats["users_too_short"] = len(short)
    if len(short):
        log.warning("%s: %d user(s) with fewer than %d interactions cannot be split leave-one-out; dropped",
                    config.name, len(short), MIN_LENGTH)
        df = df[~df["user_id"].isin(short)]
    if df.empty:
        raise InsufficientDataError(source, None, None, f"no user keeps {MIN_LENGTH} interactions after filtering "
                                                        f"(k_core={config.k_core}, min_rating={config.min_rating})")

    df = chronological(df)
    ucodes, user_ids = pd.factorize(df["user_id"])  # first appearance in file order (see chronological)
    icodes, item_ids = pd.factorize(df["item_id"])  # first appearance along the sorted sequences
    bounds = np.flatnonzero(np.diff(ucodes)) + 1
    sequences = np.split((icodes + 1).astype(np.int64), bounds)
    user_ids = np.asarray(user_ids, dtype=object).astype(str)
    kind = np.array([kinds.get(u, "train") for u in user_ids], dtype=object)
    index = {s: k for k, s in enumerate(item_ids, 1)}
    seen = [np.asarray([index[x] for x in full[u] if x in index], dtype=np.int64) if u in full else s
            for u, s in zip(user_ids, sequences)]

    items = _item_table(raw.items, np.asarray(item_ids, dtype=object).astype(str), config)
    n_users, n_items, n_inter = len(user_ids), len(item_ids), len(df)
    seq_lens = np.diff(np.r_[0, bounds, n_inter])
    stats.update({
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "avg_sequence_length": round(float(seq_lens.mean()), 4),
        "median_sequence_length": float(np.median(seq_lens)),
        "min_sequence_length": int(seq_lens.min()),
        "max_sequence_length": int(seq_lens.max()),
        "density": round(n_inter / (n_users * n_items), 8),
        "items_without_title": int(items.attrs["untitled"]),
        "duplicate_titles": int(items["title"].iloc[1:].duplicated().sum()),
        "cold_users": len(kinds),
        "cold_users_natural": sum(v == "cold_natural" for v in kinds.values()),
        "cold_users_truncated": sum(v == "cold_truncated" for v in kinds.values()),
    })
    return Prepared(user_ids, kind.astype(str), sequences, seen, items, stats)


def _item_table(meta: pd.DataFrame, item_ids: np.ndarray, config: PrepareConfig) -> pd.DataFrame:
    """Item rows in id order (row 0 = padding) with display ``title`` and rendered ``text``."""
    table = meta.set_index("item_id").reindex(item_ids)
    table = table.astype(object).where(table.notna(), "")
    raw_title = table["title"].astype(str).str.strip().to_numpy()
    untitled = raw_title == ""
    titles = [config.title_placeholder.format(item_id=i) if u else t for i, t, u in zip(item_ids, raw_title, untitled)]
    table["title"] = titles
    template = ItemTemplate(config.template)
    template.check(["item_id", *table.columns])
    records = table.reset_index(names="item_id").to_dict("records")
    texts = [template.render(r) for r in records]
    cols = [c for c in table.columns if c != "title"]
    out = pd.DataFrame({"item_id": ["<pad>", *item_ids], "title": ["", *titles], "text": ["", *texts]})
    for c in cols:
        out[c] = ["", *table[c].astype(str)]
    out.attrs["untitled"] = int(untitled.sum())
    return out
