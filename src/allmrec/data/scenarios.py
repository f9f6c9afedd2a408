"""Evaluation scenarios of the paper (Tables 1-5) as views of one prepared dataset.

A :class:`Scenario` says which users' training sequences may be used for training
(``train_users``) and which users are evaluated (``eval_users``). Every scenario scores the
dataset's stored candidates, so methods stay comparable.

* ``overall``: train on the training users, evaluate all of them (Table 1).
* ``cold_items`` / ``warm_items``: evaluate the training users whose *test* item is among the
  bottom / top ``fraction`` (35%) of items ranked by training-interaction count (Table 2).
  Items are counted in the training part (``seq[:-2]``) of the training users
  (``SequenceDataset.train_item_counts``). Tie rule: items are ranked by count and, among equal
  counts, by item id (first appearance), so each group holds exactly
  ``floor(fraction * n_items)`` items; equal-count items at a group's boundary may fall on
  either side, decided by id.
* ``cold_users``: the users held out of all training (``train_users`` False; see the
  ``cold_users`` option of ``PrepareConfig``), evaluated on their last item (Table 3).
* ``few_shot``: ``k`` training users sampled with the seed; evaluate every other training user
  (Table 4).
* ``cross_domain``: the dataset is a target domain the model never trained on: nothing is
  trained, every user is evaluated (Table 5). ``source`` names the training dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from allmrec.data.dataset import SequenceDataset
from allmrec.utils.seed import rng


@dataclass
class Scenario:
    name: str
    description: str
    train_users: np.ndarray  # (n_users,) bool
    eval_users: np.ndarray  # int64 user ids, ascending
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.train_users.sum())

    @property
    def n_eval(self) -> int:
        return len(self.eval_users)


def overall(ds: SequenceDataset) -> Scenario:
    train = ds.train_users.copy()
    return Scenario("overall", "all training users", train, np.flatnonzero(train))


def item_groups(ds: SequenceDataset, fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """``(cold_items, warm_items)``: the bottom / top ``fraction`` of items by training count."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
    counts = ds.train_item_counts()[1:]
    ids = np.arange(1, ds.n_items + 1)
    n = int(np.floor(fraction * ds.n_items))
    cold = ids[np.lexsort((ids, counts))][:n]  # ascending count, then ascending id
    warm = ids[np.lexsort((ids, -counts))][:n]  # descending count, then ascending id
    return np.sort(cold), np.sort(warm)


def _by_test_item(ds: SequenceDataset, group: np.ndarray, name: str, fraction: float) -> Scenario:
    train = ds.train_users.copy()
    users = np.flatnonzero(train)
    test_items = np.fromiter((ds.sequences[u][-1] for u in users), dtype=np.int64, count=len(users))
    eval_users = users[np.isin(test_items, group)]
    side = "bottom" if name == "cold_items" else "top"
    return Scenario(name, f"training users whose test item is in the {side} {fraction:.0%} of items by training count",
                    train, eval_users, {"fraction": fraction, "n_group_items": len(group)})


def cold_items(ds: SequenceDataset, fraction: float = 0.35) -> Scenario:
    return _by_test_item(ds, item_groups(ds, fraction)[0], "cold_items", fraction)


def warm_items(ds: SequenceDataset, fraction: float = 0.35) -> Scenario:
    return _by_test_item(ds, item_groups(ds, fraction)[1], "warm_items", fraction)


def cold_users(ds: SequenceDataset) -> Scenario:
    held = np.flatnonzero(~ds.train_users)
    if held.size == 0:
        raise ValueError(f"{ds.name}: no cold users; prepare the dataset with the option cold_users > 0")
    return Scenario("cold_users", "users held out of all training, tested on their last item",
                    ds.train_users.copy(), held)


def few_shot(ds: SequenceDataset, k: int = 256, seed: int | None = None) -> Scenario:
    seed = int(ds.options.get("seed", 0)) if seed is None else seed
    pool = np.flatnonzero(ds.train_users)
    if not 0 < k < len(pool):
        raise ValueError(f"few_shot: k must be in 1..{len(pool) - 1}, got {k}")
    chosen = np.sort(rng(seed, "few_shot", k).choice(pool, size=k, replace=False))
    train = np.zeros(ds.n_users, dtype=bool)
    train[chosen] = True
    return Scenario(f"few_shot_{k}", f"{k} sampled training users; the other training users evaluated",
                    train, np.setdiff1d(pool, chosen), {"k": k, "seed": seed})


def cross_domain(ds: SequenceDataset, source: str = "") -> Scenario:
    return Scenario("cross_domain", f"trained on {source or 'another dataset'}, evaluated on every user of {ds.name}",
                    np.zeros(ds.n_users, dtype=bool), np.arange(ds.n_users), {"source": source, "target": ds.name})


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "overall": overall,
    "cold_items": cold_items,
    "warm_items": warm_items,
    "cold_users": cold_users,
    "few_shot": few_shot,
    "cross_domain": cross_domain,
}


def get_scenario(ds: SequenceDataset, name: str, **kw: Any) -> Scenario:
    """Scenario ``name`` of ``ds``. ``few_shot:256`` is short for ``few_shot`` with ``k=256``;
    ``cross_domain:<source>`` for ``source=<source>``."""
    base, _, arg = name.partition(":")
    base = base.replace("-", "_")
    if base not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    if arg:
        kw.setdefault("k" if base == "few_shot" else "source", int(arg) if base == "few_shot" else arg)
    return SCENARIOS[base](ds, **kw)
