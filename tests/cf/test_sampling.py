"""Training samplers: what goes in, what never does, and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from allmrec.cf.sampling import PointwiseSampler, SequenceSampler, left_pad, pack_rows


def test_left_pad_keeps_the_most_recent_items():
    out = left_pad([np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([4, 5, 6, 7, 8])], 4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8]])


def test_pack_rows_fits_without_overlap():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 11, size=200)
    row, offset, n_rows = pack_rows(lengths, 10)
    used = np.zeros((n_rows, 10), dtype=int)
    for r, o, n in zip(row, offset, lengths):
        used[r, o : o + n] += 1
    assert used.max() == 1 and n_rows <= 1.1 * lengths.sum() / 10 + 2
    with pytest.raises(ValueError):
        pack_rows(np.array([11]), 10)


@pytest.mark.parametrize("pack", [False, True])
def test_sequence_batches_use_only_training_parts(pack, synthetic):
    ds = synthetic(cold=6)
    sampler = SequenceSampler(ds, max_len=6, batch_size=7, seed=1, trim=True, pack=pack)
    seen_users = set()
    n_targets = 0
    for batch in sampler.epoch(1):
        users = batch["users"].numpy()
        seen_users.update(users.tolist())
        pos, neg, inp = batch["positives"].numpy(), batch["negatives"].numpy(), batch["inputs"].numpy()
        assert np.all((pos == 0) == (neg == 0)) and np.all((inp == 0) == (pos == 0))
        n_targets += int((pos != 0).sum())
        if pack:
            continue
        for u, i_row, p_row, n_row in zip(users, inp, pos, neg):
            train = ds.sequences[u][:-2]
            expect = train[-7:]  # inputs t[:-1] and targets t[1:], last 6 positions
            np.testing.assert_array_equal(i_row[i_row != 0], expect[:-1][-6:])
            np.testing.assert_array_equal(p_row[p_row != 0], expect[1:][-6:])
            assert not np.isin(n_row[n_row != 0], train).any()  # negatives outside the training sequence
            assert np.all((n_row[n_row != 0] >= 1) & (n_row[n_row != 0] <= ds.n_items))
    assert seen_users == set(np.flatnonzero(ds.train_users).tolist())  # cold users never trained on
    assert n_targets == sum(min(len(ds.sequences[u]) - 3, 6) for u in seen_users)


def test_sequence_epochs_are_seeded(dataset):
    ds = dataset
    a = list(SequenceSampler(ds, 6, 8, seed=5).epoch(3))
    b = list(SequenceSampler(ds, 6, 8, seed=5).epoch(3))
    c = list(SequenceSampler(ds, 6, 8, seed=5).epoch(4))
    for x, y in zip(a, b):
        for k in x:
            assert np.array_equal(x[k].numpy(), y[k].numpy())
    assert not all(np.array_equal(x["negatives"].numpy(), y["negatives"].numpy()) for x, y in zip(a, c))


def test_pointwise_batches(synthetic):
    ds = synthetic(cold=6)
    sampler = PointwiseSampler(ds, batch_size=16, seed=0, n_negatives=3)
    users, items, labels = [], [], []
    for batch in sampler.epoch(2):
        assert len(batch["users"]) <= 16 * 4
        users.append(batch["users"].numpy())
        items.append(batch["items"].numpy())
        labels.append(batch["labels"].numpy())
    users, items, labels = map(np.concatenate, (users, items, labels))
    n_pos = sum(len(ds.sequences[u]) - 2 for u in np.flatnonzero(ds.train_users))
    assert labels.sum() == n_pos and len(labels) == 4 * n_pos
    assert ds.train_users[users].all()
    for u, i, y in zip(users, items, labels):
        assert (i in ds.sequences[u][:-2]) == bool(y)
