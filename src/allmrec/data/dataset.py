"""The prepared dataset every later stage reads: users, items with text, ordered sequences,
the leave-one-out split and the stored candidate sets.

Conventions (shared by every module):

* Items have internal ids ``1..n_items``; ``0`` is padding. Arrays indexed by item id have
  ``n_items + 1`` rows, row 0 being the padding entry.
* Users have internal ids ``0..n_users-1``.
* ``sequences[u]`` is user ``u``'s chronological item ids (oldest first).
* Leave-one-out: ``train = seq[:-2]``, validation target ``seq[-2]`` (history ``seq[:-2]``),
  test target ``seq[-1]`` (history ``seq[:-1]``).
* ``valid_candidates`` / ``test_candidates`` are ``(n_users, 20)`` int64 arrays; column 0 is
  the true item, columns 1.. are the seeded negatives. Methods must shuffle before showing
  candidates to a model whose output depends on order (prompts).
* ``train_users`` marks users whose training sequence may be used for training (cold users
  held out of all training are ``False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SequenceDataset:
    name: str
    item_ids: np.ndarray  # (n_items + 1,) original item ids as str; [0] = "<pad>"
    titles: list[str]  # (n_items + 1,) display titles; [0] = ""
    texts: list[str]  # (n_items + 1,) rendered item-text template (text-encoder input); [0] = ""
    user_ids: np.ndarray  # (n_users,) original user ids as str
    sequences: list[np.ndarray]  # per user, int64 item ids, chronological
    valid_candidates: np.ndarray  # (n_users, n_candidates) int64, column 0 = truth
    test_candidates: np.ndarray  # (n_users, n_candidates) int64, column 0 = truth
    train_users: np.ndarray  # (n_users,) bool
    item_fields: dict[str, list[str]] = field(default_factory=dict)  # extra text columns, e.g. genres
    stats: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    wording: dict[str, str] = field(default_factory=dict)  # prompt nouns/verbs, see allmrec.llm.prompt

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    # ---- the leave-one-out split -------------------------------------------------------
    def train_sequence(self, user: int) -> np.ndarray:
        return self.sequences[user][:-2]

    def history(self, user: int, split: str) -> np.ndarray:
        """Items seen before the ``split`` target ("valid" or "test")."""
        seq = self.sequences[user]
        if split == "valid":
            return seq[:-2]
        if split == "test":
            return seq[:-1]
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def target(self, user: int, split: str) -> int:
        return int(self.sequences[user][-2 if split == "valid" else -1])

    def candidates(self, split: str) -> np.ndarray:
        if split == "valid":
            return self.valid_candidates
        if split == "test":
            return self.test_candidates
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

    def train_item_counts(self) -> np.ndarray:
        """Interactions per item in the training part of the training users, ``(n_items+1,)``."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        for u in np.flatnonzero(self.train_users):
            np.add.at(counts, self.train_sequence(u), 1)
        counts[0] = 0
        return counts
