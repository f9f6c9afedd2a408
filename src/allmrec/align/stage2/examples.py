"""Stage-2 training examples (shared with TALLRec, which trains on exactly the same ones).

One example per training user (paper: last item only): history and target per ``train_target``
(``"train"``: the training sequence minus its last item, and that item; ``"valid"``: the whole
training sequence, and the validation item); candidates = the target + ``n_candidates - 1``
negatives drawn per epoch from items the user never touched, shown in a seeded random order.
Users without a history before their target are skipped. Everything an epoch draws derives
from ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from allmrec.align.stage2.config import Stage2TrainConfig
from allmrec.data.dataset import SequenceDataset
from allmrec.utils.seed import rng


def sample_negatives(dataset: SequenceDataset, users: Sequence[int], n: int, gen: np.random.Generator) -> np.ndarray:
    """``(len(users), n)`` items each user never interacted with (distinct within a row)."""
    out = np.zeros((len(users), n), dtype=np.int64)
    for r, u in enumerate(users):
        seen = set(int(i) for i in dataset.sequences[u])
        if dataset.n_items - len(seen) < n:
            raise ValueError(f"user {u} has interacted with {len(seen)} of {dataset.n_items} items: cannot draw {n} negatives")
        picked: list[int] = []
        chosen: set[int] = set()
        while len(picked) < n:
            for i in gen.integers(1, dataset.n_items + 1, size=2 * n):
                i = int(i)
                if i not in seen and i not in chosen:
                    picked.append(i)
                    chosen.add(i)
                    if len(picked) == n:
                        break
        out[r] = picked
    return out


def curve_users(dataset: SequenceDataset, config: Stage2TrainConfig) -> np.ndarray:
    """The seeded training users held out of stage 2 for the learning curve (sorted ids)."""
    users = np.flatnonzero(np.asarray(dataset.train_users, dtype=bool))
    users = users[[len(dataset.train_sequence(u)) >= 1 for u in users]]
    n = min(config.valid_users, len(users))
    return np.sort(rng(config.seed, "stage2-curve").choice(users, size=n, replace=False)) if n else users[:0]


def training_users(dataset: SequenceDataset, config: Stage2TrainConfig) -> np.ndarray:
    """Training users with a history before their stage-2 target (>= 2 training items for the
    ``train`` target, >= 1 for ``valid``), minus :func:`curve_users`, optionally a seeded sample
    (sorted ids)."""
    need = 2 if config.train_target == "train" else 1
    users = np.flatnonzero(np.asarray(dataset.train_users, dtype=bool))
    users = users[[len(dataset.train_sequence(u)) >= need for u in users]]
    if config.valid_users:
        users = np.setdiff1d(users, curve_users(dataset, config))
    if config.max_train_users is not None and config.max_train_users < len(users):
        users = np.sort(rng(config.seed, "stage2-users").choice(users, size=config.max_train_users, replace=False))
    return users


def example_history(dataset: SequenceDataset, user: int, config: Stage2TrainConfig) -> np.ndarray:
    """History before the stage-2 training target of ``user``."""
    seq = dataset.train_sequence(user)
    return seq[:-1] if config.train_target == "train" else seq


def example_target(dataset: SequenceDataset, user: int, config: Stage2TrainConfig) -> int:
    """The stage-2 training target of ``user`` (last training item, or the validation item)."""
    return int(dataset.train_sequence(user)[-1]) if config.train_target == "train" else dataset.target(user, "valid")


def epoch_plan(dataset: SequenceDataset, users: np.ndarray, config: Stage2TrainConfig, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, candidates)`` of an epoch (0-based): a permutation of row indices of ``users``
    and each user's candidates ``(n_users, n_candidates)`` in display order (target included)."""
    gen = rng(config.seed, "stage2-epoch", epoch)
    order = gen.permutation(len(users))
    negs = sample_negatives(dataset, users, config.n_candidates - 1, gen)
    targets = np.array([example_target(dataset, u, config) for u in users], dtype=np.int64)
    cands = np.concatenate([targets[:, None], negs], 1)
    for r in range(len(users)):
        cands[r] = cands[r][gen.permutation(cands.shape[1])]
    return order, cands


class Examples:
    """The training users of a config with their histories and targets."""

    def __init__(self, dataset: SequenceDataset, config: Stage2TrainConfig) -> None:
        self.dataset, self.config = dataset, config
        self.users = training_users(dataset, config)
        if len(self.users) == 0:
            raise ValueError(f"dataset {dataset.name!r}: no training user has a history before its stage-2 target")
        self.histories = [example_history(dataset, u, config) for u in self.users]
        self.targets = np.array([example_target(dataset, u, config) for u in self.users], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.users)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return epoch_plan(self.dataset, self.users, self.config, epoch)
