"""What a recommender is asked: for each row a user, their history and the candidates to score.

``keys`` name each row for anything that must be seeded per row (the order in which an LLM
prompt shows the candidates): ``"<split>:<user>"`` for a dataset split, so every method and
every run shows a user's candidates the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from allmrec.data.dataset import SequenceDataset


@dataclass
class Queries:
    users: np.ndarray  # (N,) int64 user ids (CF models with user embeddings read them)
    histories: list[np.ndarray]  # per row, the items before the target, oldest first
    candidates: np.ndarray  # (N, C) int64 item ids; from a split, column 0 is the truth
    keys: list[str]  # per row, the name that seeds its prompt order

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        self.candidates = np.asarray(self.candidates, dtype=np.int64).reshape(len(self.users), -1)
        if not len(self.histories) == len(self.keys) == len(self.users):
            raise ValueError(f"queries: {len(self.users)} users, {len(self.histories)} histories and {len(self.keys)} keys")

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_split(cls, dataset: SequenceDataset, split: str, users: np.ndarray | None = None) -> "Queries":
        """The stored ``split`` candidates (column 0 = truth) of ``users`` (default: all), with the
        history before the split's target."""
        users = np.arange(dataset.n_users) if users is None else np.asarray(users, dtype=np.int64)
        return cls(users, [dataset.history(int(u), split) for u in users], dataset.candidates(split)[users], [f"{split}:{int(u)}" for u in users])

    @classmethod
    def single(cls, history: list[int], candidates: list[int], user: int = 0, key: str | None = None) -> "Queries":
        """One row (an ad-hoc history, e.g. from ``allmrec recommend``)."""
        return cls(np.array([user]), [np.asarray(history, dtype=np.int64)], np.asarray([candidates], dtype=np.int64), [key or str(user)])

    def rows(self, index: np.ndarray | list[int] | slice) -> "Queries":
        idx = np.arange(len(self))[index]
        return Queries(self.users[idx], [self.histories[i] for i in idx], self.candidates[idx], [self.keys[i] for i in idx])
