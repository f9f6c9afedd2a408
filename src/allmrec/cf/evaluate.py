"""The frozen CF model's outputs for given users and histories: user representations ``x^u``,
candidate scores, and the metrics of a split's stored candidates.

Every function runs the model in eval mode without gradients (restoring its mode afterwards),
in batches of left-padded histories. With ``trim=True`` (the evaluation default), a
padding-invariant backbone gets its users in order of history length, each batch trimmed to its
longest history: exact and several times faster on short-sequence data such as Amazon Beauty.
Results always come back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from allmrec.cf.base import CFBackbone
from allmrec.cf.sampling import left_pad
from allmrec.data.dataset import SequenceDataset
from allmrec.eval.metrics import ranking_metrics, target_ranks
from allmrec.eval.users import evaluable

BatchFn = Callable[[torch.Tensor, torch.Tensor, np.ndarray], torch.Tensor]


def _device(model: CFBackbone) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _batches(model: CFBackbone, histories: np.ndarray, batch_size: int, trim: bool):
    """``(row indices, histories)`` per batch; length-sorted and trimmed when ``trim`` is exact."""
    trim = trim and model.padding_invariant
    order = np.argsort(-(histories != 0).sum(1), kind="stable") if trim else np.arange(len(histories))
    for start in range(0, len(histories), batch_size):
        idx = order[start : start + batch_size]
        h = histories[idx]
        if trim:
            nonzero = (h != 0).any(axis=0)
            h = h[:, int(np.argmax(nonzero)) :] if nonzero.any() else h[:, -1:]
        yield idx, h


def frozen_outputs(model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], fn: BatchFn, batch_size: int = 1024,
                   trim: bool = True) -> torch.Tensor:
    """``fn(users, histories, rows)`` over batches, stacked in the callers' order (float32, CPU);
    ``histories`` are each user's items, oldest first (the last ``max_len`` are used)."""
    users = np.asarray(users, dtype=np.int64)
    padded = left_pad([np.asarray(h, dtype=np.int64) for h in histories], int(model.config.max_len))
    device = _device(model)
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    try:
        with torch.no_grad():  # not inference_mode: the outputs may feed a trained projector (x^u -> F_U)
            for idx, h in _batches(model, padded, batch_size, trim):
                u = torch.from_numpy(users[idx]).to(device)
                y = fn(u, torch.from_numpy(np.ascontiguousarray(h)).to(device), idx).float().cpu()
                if out is None:
                    out = torch.zeros((len(users), *y.shape[1:]))
                out[torch.from_numpy(idx)] = y
    finally:
        model.train(was_training)
    return out if out is not None else torch.zeros((0,))


def user_representations(model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], batch_size: int = 1024,
                         trim: bool = True) -> torch.Tensor:
    """``x^u`` ``(len(users), dim)`` of each history (float32, CPU)."""
    if len(users) == 0:
        return torch.zeros((0, model.dim))
    return frozen_outputs(model, users, histories, lambda u, h, rows: model.user_representation(u, h), batch_size, trim)


def candidate_scores(model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], candidates: np.ndarray, batch_size: int = 1024,
                     trim: bool = True) -> torch.Tensor:
    """Scores ``(len(users), C)`` of each row's ``candidates`` (float32, CPU)."""
    cands = torch.as_tensor(np.asarray(candidates, dtype=np.int64))
    if len(users) == 0:
        return torch.zeros((0, cands.shape[1] if cands.dim() == 2 else 0))
    device = _device(model)
    return frozen_outputs(model, users, histories, lambda u, h, rows: model.score(u, h, cands[torch.from_numpy(rows)].to(device)), batch_size, trim)


def _split_users(dataset: SequenceDataset, users: np.ndarray | list[int] | None) -> np.ndarray:
    if users is None:
        return evaluable(dataset, np.arange(dataset.n_users))
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if len(users) and (users.min() < 0 or users.max() >= dataset.n_users):
        raise ValueError(f"user ids must lie in 0..{dataset.n_users - 1}, got range {users.min()}..{users.max()}")
    return users


def score_candidates(model: CFBackbone, dataset: SequenceDataset, split: str, users: np.ndarray | list[int] | None = None, batch_size: int = 1024) -> np.ndarray:
    """Scores ``(U, C)`` of the stored ``split`` candidates (column 0 = truth) for ``users``
    (default: every evaluable user); the history is everything before the split's target."""
    users = _split_users(dataset, users)
    cands = np.asarray(dataset.candidates(split), dtype=np.int64)[users]
    histories = [dataset.history(int(u), split) for u in users]
    return candidate_scores(model, users, histories, cands, batch_size).numpy()


def evaluate_cf(model: CFBackbone, dataset: SequenceDataset, split: str, users: np.ndarray | list[int] | None = None, batch_size: int = 1024) -> dict[str, float]:
    """Hit@1/5/10, NDCG@5/10 and MRR of ``model`` on the stored ``split`` candidates."""
    return ranking_metrics(target_ranks(score_candidates(model, dataset, split, users, batch_size)))


def top_items(model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], k: int, batch_size: int = 256,
              exclude_history: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items of the whole catalogue for each history: ``(items, scores)``, both
    ``(len(users), k)``, best first; the history's own items are left out (``exclude_history``).
    The first stage of the two-stage use (retrieve with the CF model, re-rank with A-LLMRec)."""
    n_items = int(model.config.n_items)
    if not 0 < k <= n_items:
        raise ValueError(f"k must be in 1..{n_items}, got {k}")
    device = _device(model)
    catalogue = torch.arange(1, n_items + 1, device=device)
    items = np.zeros((len(users), k), dtype=np.int64)
    scores = np.zeros((len(users), k), dtype=np.float32)
    for s in range(0, len(users), batch_size):
        rows = list(range(s, min(len(users), s + batch_size)))
        sc = candidate_scores(model, [users[r] for r in rows], [histories[r] for r in rows],
                              catalogue.cpu().expand(len(rows), n_items).numpy(), batch_size).numpy()
        if exclude_history:
            for j, r in enumerate(rows):
                seen = np.asarray(histories[r], dtype=np.int64)
                sc[j, seen[seen > 0] - 1] = -np.inf
        best = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        items[s : s + len(rows)] = best + 1
        scores[s : s + len(rows)] = np.take_along_axis(sc, best, 1)
    return items, scores
