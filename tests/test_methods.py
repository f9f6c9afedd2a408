"""The method registry: every built-in method is found by name and builds a Recommender; the
popularity baseline (the worked example of docs/design.md) scores on a hand-made case."""

from __future__ import annotations

import numpy as np
import pytest

from allmrec.data.queries import Queries
from allmrec.eval.evaluate import evaluate_users
from allmrec.methods import available_methods, get_method, register_method
from allmrec.methods.base import Method
from allmrec.methods.popularity import PopularityRecommender
from helpers import tiny_dataset


def test_every_builtin_method_is_found_by_name():
    names = available_methods()
    assert {"cf", "llm-only", "allmrec", "allmrec-sbert", "tallrec", "popularity"} <= set(names)
    for name in names:
        method = get_method(name)
        assert method.name == name and isinstance(method, Method)
    with pytest.raises(ValueError, match="unknown method 'nope'; known: cf"):
        get_method("nope")


def test_popularity_ranks_by_training_counts_with_pessimistic_ties():
    counts = np.array([0, 5, 1, 3, 3])  # item 0 = padding
    rec = PopularityRecommender(counts)
    queries = Queries(np.array([0, 1]), [np.array([1]), np.array([2])], np.array([[1, 2, 3], [3, 4, 2]]), ["a", "b"])
    assert rec.score(queries).tolist() == [[5, 1, 3], [3, 3, 1]]
    assert rec.rank(queries)[0].tolist() == [0, 2, 1]
    assert rec.recommend([2], [2, 3, 1]) == [(1, 5.0), (3, 3.0), (2, 1.0)]


def test_popularity_through_the_evaluator_on_a_dataset():
    ds = tiny_dataset(n_users=6, n_items=30, seq_len=6)
    rec = get_method("popularity").build(type("R", (), {"dataset": ds})(), seed=0)
    columns = evaluate_users(rec, ds, "test", np.arange(6))
    counts = ds.train_item_counts()
    cands = ds.test_candidates[:6]
    expected = (counts[cands[:, 1:]] >= counts[cands[:, :1]]).sum(1)  # a tie ranks above the truth
    assert columns["rank"].tolist() == expected.tolist()


def test_a_users_own_method_registers_once():
    class Constant(Method):
        name = "test-constant"

        def label(self, resources):
            return "Constant"

        def build(self, resources, seed):
            return PopularityRecommender(np.ones(100))

    register_method(Constant())
    assert get_method("test-constant").label(None) == "Constant"
    with pytest.raises(ValueError, match="already registered"):
        register_method(Constant())
