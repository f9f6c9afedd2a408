"""A tiny synthetic SequenceDataset with a pattern every backbone can learn.

Users belong to one of 4 groups of 10 items; a user's sequence walks through its group's items
in a fixed cyclic order from a random start. Sequential models can learn the global transition
"item i -> item i+1 of its group"; NCF can learn which group a user belongs to (negatives are
mostly other groups' items). Built here on purpose, independent of allmrec.data's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from allmrec.data.dataset import SequenceDataset

N_GROUPS, GROUP_SIZE = 4, 10


def make_dataset(n_users: int = 60, seed: int = 0, min_len: int = 5, max_len: int = 9, n_candidates: int = 20, cold: int = 0) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    n_items = N_GROUPS * GROUP_SIZE
    seqs = []
    for u in range(n_users):
        g = u % N_GROUPS
        start = rng.integers(GROUP_SIZE)
        length = rng.integers(min_len, max_len + 1)
        seqs.append((g * GROUP_SIZE + (start + np.arange(length)) % GROUP_SIZE + 1).astype(np.int64))

    def candidates(pos: int) -> np.ndarray:
        out = np.zeros((n_users, n_candidates), dtype=np.int64)
        for u, s in enumerate(seqs):
            pool = np.setdiff1d(np.arange(1, n_items + 1), s)
            out[u, 0] = s[pos]
            out[u, 1:] = rng.choice(pool, n_candidates - 1, replace=False)
        return out

    train_users = np.ones(n_users, dtype=bool)
    if cold:
        train_users[n_users - cold :] = False  # held out of all training
    return SequenceDataset(
        name="synthetic",
        item_ids=np.array(["<pad>"] + [f"i{i}" for i in range(1, n_items + 1)]),
        titles=[""] + [f"item {i}" for i in range(1, n_items + 1)],
        texts=[""] + [f"Title: item {i}" for i in range(1, n_items + 1)],
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        sequences=seqs,
        valid_candidates=candidates(-2),
        test_candidates=candidates(-1),
        train_users=train_users,
    )


@pytest.fixture(scope="session")
def dataset() -> SequenceDataset:
    return make_dataset()


@pytest.fixture(scope="session")
def synthetic():
    """The dataset factory, for tests that need variants (``synthetic(cold=6)``)."""
    return make_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: intra-op threads only add synchronisation (and the CPU is shared).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
