"""The unit store: records per unit, done only with the same key, per-user rows shared between
units of the same model."""

from __future__ import annotations

import pytest

from allmrec.experiment.store import UnitStore, file_hash, invocations, stable_hash


def test_records_survive_a_reload_and_are_done_only_for_their_key(tmp_path):
    store = UnitStore(tmp_path)
    store.write("eval/overall/main/cf", {"status": "done", "key": "k1", "score_key": "s", "users": [3, 1], "rank": [0, 4]})
    store.write("train/main", {"status": "failed", "reason": "boom"})
    again = UnitStore(tmp_path)
    assert again.is_done("eval/overall/main/cf", "k1") and not again.is_done("eval/overall/main/cf", "k2")
    assert not again.is_done("train/main", None) and again.get("train/main")["reason"] == "boom"
    assert (tmp_path / "units" / "eval" / "overall" / "main" / "cf.json").is_file()
    # The per-user rows of a done record are reusable by any unit with the same score key.
    assert again.rows("s") == {3: {"rank": 0}, 1: {"rank": 4}} and again.rows("other") == {}
    with pytest.raises(ValueError, match="status must be one of"):
        store.write("x", {"status": "maybe"})


def test_hashes_and_invocations(tmp_path):
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1}) != stable_hash({"a": 2, "b": [1, 2]})
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_hash(path) == file_hash(path) and file_hash(tmp_path / "none") is None
    assert invocations({"invocations": [{"started": "t", "seconds": 3}]}) == [{"started": "t", "seconds": 3}]
    assert invocations({"started": "t", "this_run_seconds": 5}) == [{"started": "t", "seconds": 5}]  # files from before the list existed
