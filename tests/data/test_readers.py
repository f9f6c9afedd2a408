"""Every reader on its hand-made fixture, and bad input naming file, line and field."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from allmrec.data import DataFormatError, PrepareConfig, read_raw

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def cfg(fmt, folder, **kw):
    return PrepareConfig(format=fmt, path=str(FIXTURES / folder), k_core=0, **kw)


def test_sequences_reader():
    raw = read_raw(cfg("sequences", "sequences"))
    inter = raw.interactions
    assert "timestamp" not in inter.columns and not raw.has_timestamp
    assert inter["user_id"].tolist()[:5] == ["U1", "U1", "U1", "U1", "U2"]
    assert inter["item_id"].tolist()[:4] == ["I1", "I2", "I3", "I4"]
    assert inter["order"].tolist() == list(range(20))
    items = raw.items.set_index("item_id")
    assert items.loc["I2", "title"] == "Night Cream & Serum"  # HTML entity decoded
    assert items.loc["I3", "categories"] == "Beauty, Makeup, Nails"  # list of lists flattened, unique
    assert items.loc["I7", "title"] == "" and items.loc["I8", "brand"] == ""
    assert set(["title", "description", "brand", "categories"]) <= set(raw.items.columns)


def test_amazon2014_gz_reviews_and_literal_meta():
    raw = read_raw(cfg("amazon2014", "amazon2014"))
    assert raw.files[0].name.endswith(".gz")
    inter = raw.interactions
    assert len(inter) == 13 and inter["timestamp"].dtype == np.int64
    assert inter.loc[0, ["user_id", "item_id", "rating"]].tolist() == ["A1", "B01", 5.0]
    items = raw.items.set_index("item_id")
    assert items.loc["B01", "categories"] == "Toys & Games, Trains, Wooden Toys"
    assert items.loc["B01", "description"] == 'A classic "wooden" train.'
    assert items.loc["B01", "price"] == "29.99"
    assert "related" not in items.columns and "salesRank" not in items.columns
    assert items.loc["B03", "title"] == ""


def test_amazon2018_lists_and_duplicates():
    raw = read_raw(cfg("amazon2018", "amazon2018"))
    items = raw.items.set_index("item_id")
    assert items.loc["P1", "description"] == "Build anything. Ages 4+."
    assert items.loc["P1", "categories"] == "Toys & Games, Building Toys"
    assert items.loc["P1", "main_cat"] == "Toys & Games"
    assert items.loc["P3", "title"] == "Doll"  # the duplicated meta row keeps the first
    assert raw.info["duplicate_metadata_rows"] == 1
    assert "also_buy" not in items.columns and "fit" not in items.columns  # id lists / empty columns dropped


def test_amazon2023():
    raw = read_raw(cfg("amazon2023", "amazon2023"))
    inter = raw.interactions
    assert inter["item_id"].tolist()[:6] == ["C1", "C2", "C3", "C3", "C1", "C2"]  # parent_asin
    assert inter["timestamp"].iloc[0] == 1588687728923
    items = raw.items.set_index("item_id")
    assert items.loc["C1", "brand"] == "Rubik's" and items.loc["C1", "features"] == "3x3, Smooth"
    assert items.loc["C2", "brand"] == "" and items.loc["C3", "title"] == ""


def test_movielens_100k_grouplens():
    raw = read_raw(cfg("movielens", "ml100k"))
    items = raw.items.set_index("item_id")
    assert items.loc["10", "genres"] == "Animation, Children's, Comedy"
    assert items.loc["20", "title"] == "Café au lait (1993)"  # latin-1
    assert items.loc["40", "genres"] == "unknown"
    assert raw.interactions["rating"].tolist()[:3] == [5.0, 3.0, 4.0]


def test_movielens_1m():
    raw = read_raw(cfg("movielens", "ml1m"))
    items = raw.items.set_index("item_id")
    assert items.loc["661", "genres"] == "Animation, Children's, Musical"
    assert items.loc["2000", "title"] == "Amélie (2001)"
    assert raw.interactions["timestamp"].tolist()[0] == 978300760


def test_recbole_atomic():
    raw = read_raw(cfg("recbole", "recbole", rename={"movie_title": "title", "class": "genres"},
                       field_seps={"genres": " "}))
    items = raw.items.set_index("item_id")
    assert items.loc["10", "genres"] == "Animation, Children's, Comedy"
    assert items.loc["30", "genres"] == "" and items.loc["20", "release_year"] == "1995"
    assert raw.interactions["timestamp"].dtype == np.int64


TABULAR = dict(user_col="uid", item_col="iid", time_col="when", rating_col="stars", item_id_col="movie",
               rename={"name": "title", "summary": "description"})


def test_tabular_csv_and_parquet(tmp_path):
    raw = read_raw(cfg("csv", "tabular", **TABULAR))
    assert raw.interactions["timestamp"].iloc[1] == pd.Timestamp("2024-01-01", tz="UTC").timestamp()
    items = raw.items.set_index("item_id")
    assert items.loc["m1", "title"] == "Arrival, The" and items.loc["m2", "description"] == ""
    assert items.loc["m3", "kind"] == "Comedy"
    pd.read_csv(FIXTURES / "tabular/interactions.csv").to_parquet(tmp_path / "interactions.parquet")
    pd.read_csv(FIXTURES / "tabular/items.csv").to_parquet(tmp_path / "items.parquet")
    raw2 = read_raw(PrepareConfig(format="parquet", path=str(tmp_path), **TABULAR))
    pd.testing.assert_frame_equal(raw.interactions, raw2.interactions)
    assert raw2.items.set_index("item_id").loc["m1", "title"] == "Arrival, The"


def test_tabular_without_items_or_time(tmp_path):
    (tmp_path / "interactions.csv").write_text("u,i\na,x\na,y\n")
    raw = read_raw(PrepareConfig(format="csv", path=str(tmp_path), user_col="u", item_col="i"))
    assert not raw.has_timestamp and raw.items["item_id"].tolist() == ["x", "y"]


# ---- bad input ----------------------------------------------------------------------------
def _copy(tmp_path, folder):
    dst = tmp_path / folder
    shutil.copytree(FIXTURES / folder, dst)
    return dst


def _raises(config, file, line, field):
    with pytest.raises(DataFormatError) as err:
        read_raw(config)
    msg = str(err.value)
    assert file in msg and (f"line {line}" in msg if line else True), msg
    if field:
        assert repr(field) in msg, msg
    return err.value


def test_malformed_json_line(tmp_path):
    d = _copy(tmp_path, "sequences")
    lines = (d / "items.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-1]  # truncated object
    (d / "items.jsonl").write_text("\n".join(lines) + "\n")
    e = _raises(PrepareConfig(format="sequences", path=str(d)), "items.jsonl", 3, None)
    assert e.line == 3


def test_missing_required_field(tmp_path):
    d = _copy(tmp_path, "amazon2018")
    text = (d / "Toy_5.json").read_text().replace('"reviewerID": "R2", "asin": "P1", ', '"asin": "P1", ')
    (d / "Toy_5.json").write_text(text)
    _raises(PrepareConfig(format="amazon2018", path=str(d)), "Toy_5.json", 5, "reviewerID")


def test_bad_number(tmp_path):
    d = _copy(tmp_path, "ml1m")
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::five::978302109\n")
    _raises(PrepareConfig(format="movielens", path=str(d)), "ratings.dat", 2, "rating")


def test_wrong_field_count(tmp_path):
    d = _copy(tmp_path, "recbole")
    with open(d / "tiny.inter", "a") as f:
        f.write("3\t10\t4\n")
    _raises(PrepareConfig(format="recbole", path=str(d)), "tiny.inter", 11, None)


def test_unknown_item_in_reference(tmp_path):
    d = _copy(tmp_path, "sequences")
    with open(d / "sequences.txt", "a") as f:
        f.write("U7 I1 I99 I2\n")
    _raises(PrepareConfig(format="sequences", path=str(d)), "sequences.txt", 7, "item_id")
    kept = read_raw(PrepareConfig(format="sequences", path=str(d), missing_items="keep"))
    assert "I99" in set(kept.interactions["item_id"]) and kept.info["interactions_unknown_item"] == 1
    dropped = read_raw(PrepareConfig(format="sequences", path=str(d), missing_items="drop"))
    assert "I99" not in set(dropped.interactions["item_id"]) and len(dropped.interactions) == 22


def test_gz_error_names_line(tmp_path):
    d = _copy(tmp_path, "amazon2014")
    with gzip.open(d / "reviews_Toy_5.json.gz", "at") as f:
        f.write("{'reviewerID': 'A9', 'asin': 'B01', 'overall': 5.0\n")  # unterminated
    _raises(PrepareConfig(format="amazon2014", path=str(d)), "reviews_Toy_5.json.gz", 14, None)


def test_tabular_missing_column_and_value(tmp_path):
    (tmp_path / "interactions.csv").write_text("u,i,t\na,x,1\n,y,2\n")
    _raises(PrepareConfig(format="csv", path=str(tmp_path), user_col="u", item_col="i"), "interactions.csv", 3, "u")
    _raises(PrepareConfig(format="csv", path=str(tmp_path), user_col="user", item_col="i"), "interactions.csv", 1, "user")
    (tmp_path / "interactions.csv").write_text("u,i,t\na,x,1\nb,y,soon\n")
    _raises(PrepareConfig(format="csv", path=str(tmp_path), user_col="u", item_col="i", time_col="t"),
            "interactions.csv", 3, "t")


def test_duplicate_user_line(tmp_path):
    d = _copy(tmp_path, "sequences")
    with open(d / "sequences.txt", "a") as f:
        f.write("U1 I5 I6\n")
    _raises(PrepareConfig(format="sequences", path=str(d)), "sequences.txt", 7, "user_id")


def test_missing_path_and_files(tmp_path):
    with pytest.raises(ValueError, match="path"):
        read_raw(PrepareConfig(format="sequences"))
    with pytest.raises(FileNotFoundError, match="sequences.txt"):
        read_raw(PrepareConfig(format="sequences", path=str(tmp_path)))
