"""prepare / load_prepared: cached files, fingerprint, atomic replacement, determinism."""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from allmrec.config import from_dict
from allmrec.data import PrepareConfig, dataset_dir, fingerprint, load_prepared, prepare

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def fixture_config(folder, **kw):
    base = dict(name="fx", format="sequences", path=str(folder), k_core=0, n_candidates=3, seed=5)
    return PrepareConfig(**{**base, **kw})


@pytest.fixture
def seqdir(tmp_path):
    d = tmp_path / "data"
    shutil.copytree(FIXTURES / "sequences", d)
    return d


def test_prepare_writes_and_loads(seqdir, tmp_path):
    ds = prepare(fixture_config(seqdir), cache_root=tmp_path / "cache")
    folder = dataset_dir(fixture_config(seqdir), tmp_path / "cache")
    assert folder.name == f"fx-{ds.fingerprint}"
    for f in ("items.parquet", "sequences.parquet", "users.parquet", "valid_candidates.npy", "test_candidates.npy", "meta.json"):
        assert (folder / f).is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no temp folder left
    assert ds.n_users == 5 and ds.n_items == 8
    assert ds.item_ids[0] == "<pad>" and ds.titles[0] == "" and ds.texts[0] == ""
    assert ds.titles[ds.item_ids.tolist().index("I7")] == "Untitled item I7"
    assert ds.valid_candidates.shape == (5, 3) and ds.test_candidates.dtype == np.int64
    for u in range(ds.n_users):
        assert ds.valid_candidates[u, 0] == ds.target(u, "valid") and ds.test_candidates[u, 0] == ds.target(u, "test")
        assert not set(ds.test_candidates[u, 1:]) & set(ds.sequences[u].tolist())
    assert ds.wording["verb_past"] == "bought" and ds.stats["users_too_short"] == 1
    assert set(ds.item_fields) >= {"brand", "categories", "description"}
    seq = pd.read_parquet(folder / "sequences.parquet")
    assert seq.columns.tolist() == ["user", "position", "item"] and len(seq) == 18
    users = pd.read_parquet(folder / "users.parquet")
    assert users["train_user"].all() and users["user_id"].tolist()[0] == "U1"
    again = load_prepared(folder)
    assert [s.tolist() for s in again.sequences] == [s.tolist() for s in ds.sequences]


def test_cache_hit_and_byte_identical_candidates(seqdir, tmp_path):
    cfg = fixture_config(seqdir)
    a = prepare(cfg, cache_root=tmp_path / "a")
    fa = dataset_dir(cfg, tmp_path / "a")
    stamp = (fa / "meta.json").stat().st_mtime_ns
    prepare(cfg, cache_root=tmp_path / "a")
    assert (fa / "meta.json").stat().st_mtime_ns == stamp  # loaded, not rewritten
    b = prepare(cfg, cache_root=tmp_path / "b")
    fb = dataset_dir(cfg, tmp_path / "b")
    assert a.fingerprint == b.fingerprint
    for f in ("valid_candidates.npy", "test_candidates.npy"):
        assert (fa / f).read_bytes() == (fb / f).read_bytes()
    c = prepare(fixture_config(seqdir, seed=6), cache_root=tmp_path / "a")
    assert c.fingerprint != a.fingerprint


def test_fingerprint_tracks_options_and_inputs(seqdir):
    cfg = fixture_config(seqdir)
    fp = fingerprint(cfg)
    assert fingerprint(fixture_config(seqdir)) == fp
    assert fingerprint(fixture_config(seqdir, template="{title}")) != fp
    assert fingerprint(fixture_config(seqdir, wording={"item": "product"})) != fp
    st = (seqdir / "items.jsonl").stat()
    os.utime(seqdir / "items.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint(cfg) == fp  # touched or re-mounted: same content, same dataset
    moved = seqdir.parent / "moved"
    shutil.copytree(seqdir, moved)  # copied elsewhere: a new path
    assert fingerprint(fixture_config(moved)) == fp
    with open(seqdir / "items.jsonl", "a") as f:
        f.write("\n")  # one byte more
    assert fingerprint(cfg) != fp


def test_force_replaces_only_when_complete(seqdir, tmp_path, monkeypatch):
    cfg = fixture_config(seqdir)
    cache = tmp_path / "cache"
    prepare(cfg, cache_root=cache)
    folder = dataset_dir(cfg, cache)
    before = (folder / "test_candidates.npy").read_bytes()
    prep_mod = sys.modules["allmrec.data.store"]

    def boom(*a, **k):
        raise RuntimeError("crash while writing")

    monkeypatch.setattr(prep_mod, "write_json", boom)  # dies after the arrays, before meta.json
    with pytest.raises(RuntimeError):
        prepare(cfg, cache_root=cache, force=True)
    monkeypatch.undo()
    assert (folder / "test_candidates.npy").read_bytes() == before  # the prepared copy survived
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # the temp folder is gone
    ds = prepare(cfg, cache_root=cache, force=True)
    assert (folder / "test_candidates.npy").read_bytes() == before
    assert sorted(p.name for p in cache.iterdir()) == [folder.name] and ds.n_users == 5


def test_config_from_dict_and_errors():
    cfg = from_dict(PrepareConfig, {"name": "x", "format": "csv", "k_core": "3", "min_rating": "4",
                                    "wording": {"item": "movie"}})
    assert cfg.format == "tabular" and cfg.k_core == 3 and cfg.min_rating == 4.0
    assert cfg.wording["item"] == "movie" and cfg.wording["verb_next"] == "buy"
    with pytest.raises(ValueError, match="format"):
        PrepareConfig(format="excel")
    with pytest.raises(ValueError, match="unknown option"):
        from_dict(PrepareConfig, {"kcore": 5})


def test_every_format_prepares(tmp_path):
    cases = [
        dict(format="amazon2014", path=str(FIXTURES / "amazon2014"), min_rating=3.0),
        dict(format="amazon2018", path=str(FIXTURES / "amazon2018")),
        dict(format="amazon2023", path=str(FIXTURES / "amazon2023")),
        dict(format="movielens", path=str(FIXTURES / "ml100k")),
        dict(format="movielens", path=str(FIXTURES / "ml1m")),
        dict(format="recbole", path=str(FIXTURES / "recbole")),
        dict(format="csv", path=str(FIXTURES / "tabular"), user_col="uid", item_col="iid", time_col="when",
             item_id_col="movie", rename={"name": "title"}, template="Title: {title}, Kind: {kind}"),
    ]
    for kw in cases:
        ds = prepare(PrepareConfig(name=kw["format"], k_core=0, n_candidates=2, **kw), cache_root=tmp_path)
        assert ds.n_users >= 2 and ds.valid_candidates.shape == (ds.n_users, 2), kw
        assert all(len(s) >= 3 for s in ds.sequences)
        assert not any("None" in t for t in ds.texts)
    # amazon2014 with min_rating 3: A1's B03 (2 stars) and A3's B01 (1 star) are gone, A1 ordered by time then file order
    ds = prepare(PrepareConfig(name="amazon2014", format="amazon2014", path=str(FIXTURES / "amazon2014"),
                               min_rating=3.0, k_core=0, n_candidates=2), cache_root=tmp_path)
    a1 = ds.sequences[ds.user_ids.tolist().index("A1")]
    assert [ds.item_ids[i] for i in a1] == ["B01", "B02", "B04"]
    a2 = ds.sequences[ds.user_ids.tolist().index("A2")]
    assert [ds.item_ids[i] for i in a2] == ["B01", "B02", "B05"]  # sorted by timestamp
    # tabular: carol's m3 is untitled -> placeholder, ISO dates order alice m2, m3, m1
    ds = prepare(PrepareConfig(name="tab", k_core=0, n_candidates=2, **cases[-1]), cache_root=tmp_path)
    alice = ds.sequences[0]
    assert [ds.item_ids[i] for i in alice] == ["m2", "m3", "m1"]
    assert ds.titles[ds.item_ids.tolist().index("m3")] == "Untitled item m3"
    assert ds.texts[ds.item_ids.tolist().index("m1")] == "Title: Arrival, The, Kind: Sci-Fi"


def test_cold_users_end_to_end(seqdir, tmp_path):
    from allmrec.data import get_scenario

    ds = prepare(fixture_config(seqdir, cold_users=2, n_candidates=2), cache_root=tmp_path / "c")
    cold = ds.user_ids[~ds.train_users].tolist()
    assert len(cold) == 2 and set(cold) <= {"U2", "U4", "U5"}  # the natural 3-interaction users
    assert all(len(ds.sequences[u]) == 3 for u in np.flatnonzero(~ds.train_users))
    assert ds.stats["cold_users_natural"] == 2
    sc = get_scenario(ds, "cold_users")
    assert ds.user_ids[sc.eval_users].tolist() == cold
    assert set(get_scenario(ds, "overall").eval_users.tolist()).isdisjoint(sc.eval_users.tolist())
    # excluded from the item counts used for cold/warm items
    counts = ds.train_item_counts()
    assert counts.sum() == sum(len(ds.sequences[u]) - 2 for u in np.flatnonzero(ds.train_users))
