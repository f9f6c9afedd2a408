"""Scenarios on a hand-made SequenceDataset: who trains, who is evaluated."""

import numpy as np
import pytest

from allmrec.data import SequenceDataset, get_scenario
from allmrec.data.scenarios import item_groups


def make_ds(seqs, train, n_items):
    n = len(seqs)
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
    cand = np.stack([np.r_[s[-1], 0] for s in seqs])
    return SequenceDataset(
        name="toy", item_ids=np.array(["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)]),
        titles=[""] + [f"t{k}" for k in range(1, n_items + 1)], texts=[""] * (n_items + 1),
        user_ids=np.array([f"u{k}" for k in range(n)]), sequences=seqs, valid_candidates=cand, test_candidates=cand,
        train_users=np.asarray(train, dtype=bool), options={"seed": 3})


@pytest.fixture
def toy():
    # training parts (seq[:-2]) of training users: [1,1,2], [1,2,3], [1] -> counts 1:4, 2:2, 3:1, 4-6: 0
    return make_ds([[1, 1, 2, 3, 4], [1, 2, 3, 5, 6], [2, 5, 5], [1, 6, 2]], [True, True, False, True], 6)


def test_item_groups_tie_rule(toy):
    cold, warm = item_groups(toy, 0.35)  # floor(0.35 * 6) = 2 items each
    assert cold.tolist() == [4, 5]  # items 4, 5, 6 all have 0: the lower ids win
    assert warm.tolist() == [1, 2]


def test_cold_and_warm_items(toy):
    cold = get_scenario(toy, "cold_items")
    assert cold.eval_users.tolist() == [0]  # test item 4 is cold; user 1's test item 6 falls outside by the tie rule
    assert get_scenario(toy, "warm_items").eval_users.tolist() == [3]
    assert cold.train_users.tolist() == [True, True, False, True]


def test_overall_and_cold_users(toy):
    o = get_scenario(toy, "overall")
    assert o.eval_users.tolist() == [0, 1, 3] and o.n_train == 3
    c = get_scenario(toy, "cold_users")
    assert c.eval_users.tolist() == [2] and not c.train_users[2]
    warmonly = make_ds([[1, 2, 3]] * 2, [True, True], 3)
    with pytest.raises(ValueError, match="cold_users"):
        get_scenario(warmonly, "cold_users")


def test_few_shot_seeded():
    g = np.random.default_rng(0)
    seqs = [g.integers(1, 30, size=5) for _ in range(100)]
    train = np.ones(100, dtype=bool)
    train[[5, 7]] = False
    ds = make_ds(seqs, train, 30)
    s = get_scenario(ds, "few_shot", k=16)
    assert s.n_train == 16 and s.name == "few_shot_16"
    assert not s.train_users[[5, 7]].any()
    assert set(s.eval_users) == set(np.flatnonzero(train)) - set(np.flatnonzero(s.train_users))
    again = get_scenario(ds, "few_shot:16")
    assert np.array_equal(again.train_users, s.train_users)
    assert not np.array_equal(get_scenario(ds, "few_shot", k=16, seed=4).train_users, s.train_users)
    with pytest.raises(ValueError):
        get_scenario(ds, "few_shot", k=1000)


def test_cross_domain_and_unknown(toy):
    s = get_scenario(toy, "cross_domain:movies")
    assert s.n_train == 0 and s.eval_users.tolist() == [0, 1, 2, 3] and s.params["source"] == "movies"
    with pytest.raises(ValueError, match="unknown scenario"):
        get_scenario(toy, "nope")
