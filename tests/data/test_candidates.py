"""Candidate sampling: truth first, distinct unseen negatives, uniform, seeded."""

import numpy as np
import pytest

from allmrec.data.candidates import sample_candidates
from allmrec.utils.seed import rng


def _random_seqs(n_users, n_items, lo, hi, seed=0):
    g = np.random.default_rng(seed)
    return [g.choice(np.arange(1, n_items + 1), size=int(g.integers(lo, hi)), replace=False) for _ in range(n_users)]


def test_properties():
    seqs = _random_seqs(500, 60, 3, 40)
    targets = np.array([s[-1] for s in seqs])
    c = sample_candidates(targets, seqs, 60, 20, rng(0, "candidates", "test"))
    assert c.shape == (500, 20) and c.dtype == np.int64
    assert (c[:, 0] == targets).all()
    assert c.min() >= 1 and c.max() <= 60
    for s, row in zip(seqs, c):
        assert len(set(row.tolist())) == 20
        assert not set(row[1:].tolist()) & set(s.tolist())


def test_seeded():
    seqs = _random_seqs(300, 100, 3, 30)
    t = np.array([s[-1] for s in seqs])
    a = sample_candidates(t, seqs, 100, 20, rng(7, "candidates", "valid"))
    b = sample_candidates(t, seqs, 100, 20, rng(7, "candidates", "valid"))
    c = sample_candidates(t, seqs, 100, 20, rng(8, "candidates", "valid"))
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_uniform_over_unseen_items():
    n_users = 20000
    seqs = [np.array([1, 2])] * n_users
    c = sample_candidates(np.full(n_users, 2), seqs, 10, 4, rng(0, "u"))
    counts = np.bincount(c[:, 1:].ravel(), minlength=11)
    assert counts[:3].sum() == 0
    expected = n_users * 3 / 8
    assert np.abs(counts[3:] - expected).max() < 0.03 * expected
    # every 3-subset equally likely on average: the first negative is uniform too
    first = np.bincount(c[:, 1], minlength=11)[3:]
    assert np.abs(first - n_users / 8).max() < 0.06 * n_users / 8


def test_dense_users_use_the_exact_fallback():
    # 4 unseen items out of 30: a rejection block rarely holds 3 distinct ones
    seqs = [np.arange(1, 27)] * 50
    c = sample_candidates(np.full(50, 26), seqs, 30, 4, rng(0, "d"))
    assert set(np.unique(c[:, 1:]).tolist()) <= {27, 28, 29, 30}
    assert all(len(set(r.tolist())) == 4 for r in c)


def test_too_few_unseen_items():
    with pytest.raises(ValueError, match="unseen"):
        sample_candidates(np.array([1]), [np.arange(1, 9)], 10, 4, rng(0))


def test_scale_22k_users_12k_items():
    seqs = _random_seqs(22363, 12101, 5, 30, seed=1)
    c = sample_candidates(np.array([s[-1] for s in seqs]), seqs, 12101, 20, rng(0, "scale"))
    assert c.shape == (22363, 20)
