"""Every reported number depends on these: ranks with the pessimistic tie rule, Hit@k / NDCG@k /
MRR on hand-made ranks, the Wilson interval, metrics from per-user columns, who is evaluated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allmrec.eval.metrics import hit_interval, metrics_from_columns, ranking_metrics, target_ranks
from allmrec.eval.users import evaluable, sample_users, split_users
from helpers import tiny_dataset


def test_ranks_count_candidates_scoring_at_least_the_truth():
    scores = np.array([[0.9, 0.1, 0.5],   # truth best: rank 0
                       [0.2, 0.9, 0.5],   # two above: rank 2
                       [0.5, 0.5, 0.1],   # a tie ranks above the truth: rank 1
                       [1.0, 1.0, 1.0]])  # a constant scorer: last
    assert target_ranks(scores).tolist() == [0, 2, 1, 2]
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="users, candidates"):
        target_ranks(np.array([1.0, 2.0]))


def test_metrics_on_hand_made_ranks():
    m = ranking_metrics(np.array([0, 1, 4, 9, 19]))
    assert m["users"] == 5
    assert m["hit@1"] == pytest.approx(1 / 5) and m["hit@5"] == pytest.approx(3 / 5) and m["hit@10"] == pytest.approx(4 / 5)
    assert m["ndcg@1"] == pytest.approx(1 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 20) / 5)
    assert ranking_metrics(np.array([], dtype=np.int64)) == {"users": 0.0}


def test_wilson_interval():
    lo, hi = hit_interval(np.array([1] * 30 + [0] * 70))
    assert lo == pytest.approx(0.2189, abs=1e-4) and hi == pytest.approx(0.3958, abs=1e-4)
    assert hit_interval(np.array([])) == (0.0, 0.0)
    lo, hi = hit_interval(np.zeros(10))
    assert lo == pytest.approx(0.0, abs=1e-12) and 0 < hi < 0.35


def test_metrics_from_columns():
    m = metrics_from_columns({"rank": np.array([0, 3]), "gen_hit": np.array([True, False]), "gen_no_match": np.array([False, False])})
    assert m["hit@1"] == 0.5 and m["gen_hit@1"] == 0.5 and m["gen_no_match"] == 0.0 and m["users"] == 2.0
    assert m["hit@1_ci95"] == list(hit_interval(np.array([1, 0])))


def test_who_is_evaluated():
    ds = tiny_dataset(n_users=6, n_items=30, seq_len=6)
    ds.sequences[2] = ds.sequences[2][:2]  # too short for a validation target with a history
    ds.train_users[5] = False  # a cold user: tested, never validated
    assert evaluable(ds, np.arange(6)).tolist() == [0, 1, 3, 4, 5]
    assert split_users(ds, "test").tolist() == [0, 1, 3, 4, 5] and split_users(ds, "valid").tolist() == [0, 1, 3, 4]
    pool = np.arange(100)
    small, large = sample_users(pool, 10, 1, "s", nested=True), sample_users(pool, 30, 1, "s", nested=True)
    assert set(small) <= set(large) and list(small) == sorted(small)  # nested samples are subsets
    assert sample_users(pool, None, 1, "s").tolist() == list(range(100)) and sample_users(pool, 200, 1, "s").tolist() == list(range(100))
    assert np.array_equal(sample_users(pool, 10, 1, "s"), sample_users(pool, 10, 1, "s"))
    assert not np.array_equal(sample_users(pool, 10, 1, "s"), sample_users(pool, 10, 2, "s"))


def test_catalogue_metrics_on_hand_made_lists():
    from allmrec.eval.metrics import catalogue_metrics

    ranked = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    m = catalogue_metrics(ranked, np.array([3, 4, 10]), ks=(1, 3))
    assert m["recall@1"] == 0.0 and m["recall@3"] == pytest.approx(2 / 3)  # 10 was not retrieved: a miss
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)


def test_top_items_leaves_out_the_history_and_ranks_best_first():
    import torch

    from allmrec.cf.evaluate import top_items
    from helpers import tiny_cf, tiny_dataset

    ds = tiny_dataset(n_users=3, n_items=30, seq_len=6)
    cf = tiny_cf(ds)
    hists = [ds.history(u, "test") for u in range(3)]
    items, scores = top_items(cf, [0, 1, 2], hists, k=5)
    assert items.shape == (3, 5) and all(not set(items[u]) & set(hists[u].tolist()) for u in range(3))
    assert (np.diff(scores, axis=1) <= 0).all()
    with torch.no_grad():
        full = cf.score(torch.tensor([0]), torch.as_tensor(hists[0][-10:])[None], torch.arange(1, 31)[None])[0].numpy()
    full[hists[0] - 1] = -np.inf
    assert items[0].tolist() == (np.argsort(-full, kind="stable")[:5] + 1).tolist()
