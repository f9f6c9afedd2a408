"""Shipped presets, and the real data sets they describe (when present)."""

from pathlib import Path

import numpy as np
import pytest

from allmrec.data import list_presets, load_preset, prepare, print_stats, stats_table

BEAUTY = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "amazon-beauty"


def test_presets_ship_and_load():
    assert {"amazon-beauty", "ml-100k"} <= set(list_presets())
    cfg = load_preset("amazon-beauty", path="somewhere", wording={"item": "product"})
    assert cfg.format == "sequences" and cfg.path == "somewhere" and cfg.k_core == 5
    assert cfg.wording == {"item": "product", "items": "items", "verb_past": "bought", "verb_next": "buy"}
    ml = load_preset("ml-100k", seed=None)
    assert ml.wording["verb_past"] == "watched" and ml.rename["class"] == "genres" and ml.seed == 42
    with pytest.raises(ValueError, match="unknown dataset preset"):
        load_preset("nope")
    with pytest.raises(ValueError, match="unknown option"):
        load_preset("ml-100k", kcore=3)


def test_beauty_preset_needs_a_path(tmp_path):
    with pytest.raises(ValueError, match="path"):
        prepare(load_preset("amazon-beauty"), cache_root=tmp_path)


def test_ml100k_preset(tmp_path):
    pytest.importorskip("importlib.util")
    try:
        ds = prepare(load_preset("ml-100k"), cache_root=tmp_path)
    except FileNotFoundError:
        pytest.skip("the recbole wheel (ml-100k copy) is not installed")
    assert (ds.n_users, ds.n_items, ds.stats["interactions"]) == (943, 1349, 99287)
    assert ds.wording["item"] == "movie" and "genres" in ds.item_fields
    toy = ds.item_ids.tolist().index("1")
    assert ds.titles[toy] == "Toy Story" and ds.item_fields["genres"][toy] == "Animation, Children's, Comedy"
    assert ds.texts[toy] == "Title: Toy Story, Year: 1995, Genres: Animation, Children's, Comedy"
    assert stats_table(ds).row_count >= 8


@pytest.mark.skipif(not BEAUTY.is_dir(), reason="../shared/data/amazon-beauty not present")
def test_beauty_preset_real_counts(tmp_path, capsys):
    cfg = load_preset("amazon-beauty", path=str(BEAUTY))
    ds = prepare(cfg, cache_root=tmp_path / "a")
    assert (ds.n_users, ds.n_items, ds.stats["interactions"]) == (22363, 12101, 198502)
    assert ds.valid_candidates.shape == (22363, 20)
    assert all(ds.test_candidates[u, 0] == ds.sequences[u][-1] for u in range(0, 22363, 97))
    print_stats(ds)
    assert "22,363" in capsys.readouterr().out
    again = prepare(cfg, cache_root=tmp_path / "b")
    assert np.array_equal(again.test_candidates, ds.test_candidates)
