"""Scoring, evaluating and reading user representations of a CF backbone on a dataset split.

All functions run the model in eval mode without gradients (restoring its mode afterwards) and
process users in batches. For padding-invariant backbones users are processed in order of
history length and each batch is trimmed to its longest history, which is exact and several
times faster on short-sequence data such as Amazon Beauty; results come back in the caller's
user order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from allmrec.cf.base import CFBackbone
from allmrec.cf.sampling import left_pad
from allmrec.data.dataset import SequenceDataset
from allmrec.eval.metrics import ranking_metrics, target_ranks


def default_users(dataset: SequenceDataset, split: str) -> np.ndarray:
    """Users with a target and a non-empty history for ``split`` (``"valid"``: >= 3 items,
    ``"test"``: >= 2 items), including users held out of training."""
    need = {"valid": 3, "test": 2}.get(split)
    if need is None:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    lens = np.fromiter((len(s) for s in dataset.sequences), dtype=np.int64, count=dataset.n_users)
    return np.flatnonzero(lens >= need)


def _check_users(dataset: SequenceDataset, split: str, users: np.ndarray | list[int] | None) -> np.ndarray:
    if users is None:
        return default_users(dataset, split)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if len(users) and (users.min() < 0 or users.max() >= dataset.n_users):
        raise ValueError(f"user ids must lie in 0..{dataset.n_users - 1}, got range {users.min()}..{users.max()}")
    return users


def split_histories(dataset: SequenceDataset, split: str, users: np.ndarray, max_len: int) -> np.ndarray:
    """Left-padded ``(len(users), max_len)`` histories before the ``split`` target."""
    return left_pad([dataset.history(int(u), split) for u in users], max_len)


def _device(model: CFBackbone) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _batches(model: CFBackbone, histories: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row indices, histories)`` batches, length-sorted and trimmed when exact."""
    n = len(histories)
    if model.padding_invariant:
        order = np.argsort(-(histories != 0).sum(1), kind="stable")
    else:
        order = np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        h = histories[idx]
        if model.padding_invariant:
            nonzero = (h != 0).any(axis=0)
            h = h[:, int(np.argmax(nonzero)) :] if nonzero.any() else h[:, -1:]
        yield idx, h


def _run(model: CFBackbone, users: np.ndarray, histories: np.ndarray, batch_size: int, fn: Callable[[torch.Tensor, torch.Tensor, np.ndarray], torch.Tensor]) -> list[tuple[np.ndarray, torch.Tensor]]:
    device = _device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for idx, h in _batches(model, histories, batch_size):
                u = torch.from_numpy(users[idx]).to(device)
                out.append((idx, fn(u, torch.from_numpy(np.ascontiguousarray(h)).to(device), idx).float().cpu()))
    finally:
        model.train(was_training)
    return out


def score_candidates(
    model: CFBackbone, dataset: SequenceDataset, split: str, users: np.ndarray | list[int] | None = None, batch_size: int = 1024
) -> np.ndarray:
    """Scores ``(U, C)`` of the stored ``split`` candidates (column 0 = truth) for ``users``.

    Parameters
    ----------
    model : a CF backbone (any device).
    dataset : the prepared dataset.
    split : ``"valid"`` or ``"test"``; the history is everything before that split's target.
    users : user ids; default :func:`default_users`.
    batch_size : users per forward pass.
    """
    users = _check_users(dataset, split, users)
    cands = np.asarray(dataset.candidates(split), dtype=np.int64)[users]
    histories = split_histories(dataset, split, users, model.config.max_len)
    scores = np.zeros(cands.shape, dtype=np.float32)
    device = _device(model)

    def fn(u: torch.Tensor, h: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return model.score(u, h, torch.from_numpy(cands[idx]).to(device))

    for idx, s in _run(model, users, histories, batch_size, fn):
        scores[idx] = s.numpy()
    return scores


def evaluate_cf(
    model: CFBackbone, dataset: SequenceDataset, split: str, users: np.ndarray | list[int] | None = None, batch_size: int = 1024
) -> dict[str, float]:
    """Hit@1/5/10, NDCG@5/10 and MRR of ``model`` on the stored ``split`` candidates."""
    scores = score_candidates(model, dataset, split, users, batch_size)
    return ranking_metrics(target_ranks(scores))


def user_representations(
    model: CFBackbone, dataset: SequenceDataset, split: str, users: np.ndarray | list[int] | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """``(U, dim)`` float32 CPU tensor of ``x^u`` from each user's history before the ``split`` target."""
    users = _check_users(dataset, split, users)
    histories = split_histories(dataset, split, users, model.config.max_len)
    out = torch.zeros(len(users), model.dim)
    for idx, x in _run(model, users, histories, batch_size, lambda u, h, idx: model.user_representation(u, h)):
        out[torch.from_numpy(idx)] = x
    return out
