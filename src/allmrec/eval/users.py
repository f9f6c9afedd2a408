"""Which users are evaluated: one eligibility rule and one way to draw seeded samples.

A user is *evaluable* when their sequence has at least 3 items: a validation target with a
non-empty history before it, and a test target after that. ``allmrec evaluate`` scores the
evaluable users of a split (test: every user, cold users included; validation: the training
users); the experiment suite scores the evaluable users of a scenario. A sample of ``n`` of them
is drawn from a named seeded stream, so every method of a run sees the same users.
"""

from __future__ import annotations

import numpy as np

from allmrec.data.dataset import SequenceDataset
from allmrec.utils.seed import rng

MIN_ITEMS = 3


def evaluable(dataset: SequenceDataset, users: np.ndarray) -> np.ndarray:
    """The users among ``users`` whose sequences have at least :data:`MIN_ITEMS` items."""
    users = np.asarray(users, dtype=np.int64)
    return users[np.fromiter((len(dataset.sequences[int(u)]) >= MIN_ITEMS for u in users), dtype=bool, count=len(users))]


def split_users(dataset: SequenceDataset, split: str) -> np.ndarray:
    """Evaluable users of ``split``: every user for ``test``, the training users for ``valid``."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    pool = np.arange(dataset.n_users) if split == "test" else np.flatnonzero(dataset.train_users)
    return evaluable(dataset, pool)


def sample_users(users: np.ndarray, n: int | None, seed: int, *stream: str, nested: bool = False) -> np.ndarray:
    """A seeded sample of ``n`` of ``users`` (all of them when ``n`` is ``None`` or too large),
    sorted. ``nested``: the first ``n`` of one seeded permutation, so a smaller sample is a
    subset of a larger one (the experiment suite reuses users scored for another table);
    otherwise ``Generator.choice`` without replacement (``allmrec evaluate``'s published samples)."""
    users = np.asarray(users, dtype=np.int64)
    if n is None or n >= len(users):
        return users
    gen = rng(seed, *stream)
    picked = gen.permutation(users)[:n] if nested else gen.choice(users, size=n, replace=False)
    return np.sort(picked)
