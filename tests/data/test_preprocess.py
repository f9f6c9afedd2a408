"""Filtering, k-core, ordering, ids, item texts and statistics on hand-made data."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from allmrec.data import PrepareConfig, read_raw
from allmrec.data.preprocess import build, chronological, filter_rating, k_core
from allmrec.data.raw import RawData
from allmrec.data.readers._common import interactions_frame
from allmrec.data.template import ItemTemplate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def raw_from(rows, items=None, times=True):
    """rows: (user, item[, ts[, rating]])"""
    users = [r[0] for r in rows]
    its = [r[1] for r in rows]
    ts = [r[2] for r in rows] if times else None
    ratings = [r[3] for r in rows] if rows and len(rows[0]) > 3 else None
    inter = interactions_frame(users, its, ts, ratings)
    ids = sorted(set(its)) if items is None else list(items)
    meta = pd.DataFrame({"item_id": ids, "title": [f"T{i}" for i in ids], "description": "", "brand": "", "categories": ""})
    return RawData(inter, meta)


def test_template_drops_empty_segments():
    t = ItemTemplate("Title: {title}, Description: {description}, Brand: {brand}, Categories: {categories}")
    assert t.render({"title": "Balm", "description": "", "brand": "Olay", "categories": "Beauty, Lips"}) == \
        "Title: Balm, Brand: Olay, Categories: Beauty, Lips"
    assert t.render({"title": "Balm", "description": None, "brand": None, "categories": ""}) == "Title: Balm"
    assert "None" not in t.render({"title": "X"})
    t2 = ItemTemplate("{title} ({genres})")
    assert t2.render({"title": "Heat", "genres": "Crime"}) == "Heat (Crime)"
    with pytest.raises(ValueError, match="unknown field"):
        ItemTemplate("Title: {name}").check(["title", "brand"])
    with pytest.raises(ValueError, match="named"):
        ItemTemplate("Title: {}")


def test_rating_filter_inclusive_and_strict():
    raw = raw_from([("a", "x", 1, 3.0), ("a", "y", 2, 4.0), ("a", "z", 3, 5.0), ("a", "w", 4, np.nan)])
    assert filter_rating(raw.interactions, 4.0)["item_id"].tolist() == ["y", "z"]
    assert filter_rating(raw.interactions, 4.0, strict=True)["item_id"].tolist() == ["z"]
    assert len(filter_rating(raw.interactions, None)) == 4
    with pytest.raises(ValueError, match="no ratings"):
        filter_rating(raw_from([("a", "x", 1)]).interactions, 4.0)


def test_k_core_is_iterative():
    # 2-core: item "c" has one interaction -> dropped; then user "u3" has one left -> dropped;
    # then item "b" has one left -> dropped; then user "u2" has one left -> dropped.
    rows = [("u1", "a", 1), ("u1", "d", 2), ("u4", "a", 1), ("u4", "d", 2),
            ("u2", "a", 1), ("u2", "b", 2), ("u3", "b", 1), ("u3", "c", 2)]
    df, passes = k_core(raw_from(rows).interactions, 2)
    assert sorted(set(df["user_id"])) == ["u1", "u4"] and sorted(set(df["item_id"])) == ["a", "d"]
    assert passes >= 2
    df0, p0 = k_core(raw_from(rows).interactions, 0)
    assert len(df0) == 8 and p0 == 0
    counts_u = df.groupby("user_id").size()
    counts_i = df.groupby("item_id").size()
    assert counts_u.min() >= 2 and counts_i.min() >= 2


def test_chronological_stable_tie_break():
    rows = [("u", "late", 20), ("v", "x", 1), ("u", "tie_first", 10), ("u", "tie_second", 10), ("u", "early", 5)]
    df = chronological(raw_from(rows).interactions)
    assert df["user_id"].tolist() == ["u"] * 4 + ["v"]
    assert df["item_id"].tolist()[:4] == ["early", "tie_first", "tie_second", "late"]
    no_time = chronological(raw_from(rows, times=False).interactions)
    assert no_time["item_id"].tolist()[:4] == ["late", "tie_first", "tie_second", "early"]


def test_build_ids_titles_texts_stats():
    config = PrepareConfig(format="sequences", path=str(FIXTURES / "sequences"), k_core=0,
                           title_placeholder="Untitled item {item_id}")
    prep = build(read_raw(config), config)
    # U6 has 2 interactions: too short for leave-one-out, dropped and counted
    assert prep.stats["users_too_short"] == 1
    assert prep.user_ids.tolist() == ["U1", "U2", "U3", "U4", "U5"]
    # items numbered by first appearance along the users' sequences
    assert prep.items["item_id"].tolist() == ["<pad>", "I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8"]
    assert [s.tolist() for s in prep.sequences] == [[1, 2, 3, 4], [2, 3, 5], [1, 3, 4, 6, 2], [5, 6, 7], [8, 1, 2]]
    items = prep.items.set_index("item_id")
    assert items.loc["I7", "title"] == "Untitled item I7"
    assert items.loc["I8", "text"] == "Title: Hand Cream, Categories: Beauty"
    assert items.loc["I1", "text"] == "Title: Rose Lip Balm, Brand: Burt's Bees, Categories: Beauty, Skin Care, Lips"
    st = prep.stats
    assert (st["users"], st["items"], st["interactions"]) == (5, 8, 18)
    assert st["items_without_title"] == 1
    assert st["avg_sequence_length"] == pytest.approx(3.6) and st["median_sequence_length"] == 3.0
    assert st["density"] == pytest.approx(18 / 40)
    assert prep.train_users.all()


def test_short_users_are_reported(caplog):
    config = PrepareConfig(format="sequences", path=str(FIXTURES / "sequences"), k_core=0, name="fx")
    with caplog.at_level(logging.WARNING):
        build(read_raw(config), config)
    assert any("fewer than 3" in r.message for r in caplog.records)


def test_k_core_on_fixture_and_drop_repeats():
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "a", 3), ("u", "c", 4), ("v", "a", 1), ("v", "b", 2), ("v", "c", 3)]
    config = PrepareConfig(k_core=0, drop_repeats=True)
    prep = build(raw_from(rows), config)
    assert [s.tolist() for s in prep.sequences] == [[1, 2, 3], [1, 2, 3]]
    prep2 = build(raw_from(rows), PrepareConfig(k_core=0))
    assert prep2.sequences[0].tolist() == [1, 2, 1, 3]


def test_cold_users_natural_preferred():
    # 5 users with 4 interactions on items a..d (a 4-core), + "n1", "n2" with exactly 3 on core items
    # (dropped by the 4-core) and "n3" with 3 interactions on an item outside the core.
    rows = [(f"u{k}", it, t) for k in range(5) for t, it in enumerate("abcd")]
    rows += [("n1", "a", 1), ("n1", "b", 2), ("n1", "c", 3), ("n2", "d", 1), ("n2", "a", 2), ("n2", "b", 3),
             ("n3", "a", 1), ("n3", "b", 2), ("n3", "zz", 3)]
    raw = raw_from(rows)
    prep = build(raw, PrepareConfig(k_core=4, cold_users=2, seed=1))
    kinds = dict(zip(prep.user_ids, prep.user_kind))
    assert kinds["n1"] == kinds["n2"] == "cold_natural" and "n3" not in kinds
    assert prep.stats["cold_users_natural"] == 2 and prep.stats["cold_users_truncated"] == 0
    # asking for more than the natural ones: the rest are truncated core users
    prep = build(raw, PrepareConfig(k_core=4, cold_users=3, seed=1))
    trunc = [u for u, k in zip(prep.user_ids, prep.user_kind) if k == "cold_truncated"]
    assert len(trunc) == 1
    u = list(prep.user_ids).index(trunc[0])
    assert len(prep.sequences[u]) == 3 and len(prep.seen[u]) == 4  # later items stay excluded from negatives
    assert (~prep.train_users).sum() == 3
