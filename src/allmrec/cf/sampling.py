"""Training batches for CF backbones, built from a :class:`SequenceDataset`.

Only users with ``train_users`` True contribute, and only their training part
``seq[:-2]`` (validation and test targets never enter training, not even as negatives'
exclusion lists: a negative is any item outside the user's *training* sequence, as in
pmixer/SASRec.pytorch, so that the held-out targets leave no trace in what the model sees).

Every epoch draws from its own stream ``allmrec.utils.seed.rng(seed, "cf-train", epoch)``, so a
run resumed at an epoch boundary sees exactly the batches of an uninterrupted run. All per-epoch
work (shuffling, negative sampling, batching) is vectorised numpy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from allmrec.data.dataset import SequenceDataset
from allmrec.utils.seed import rng


def left_pad(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """Stack sequences into a left-padded ``(len(seqs), max_len)`` int64 array (0 = padding),
    keeping the last ``max_len`` items of each."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    n = len(seqs)
    out = np.zeros((n, max_len), dtype=np.int64)
    if n == 0:
        return out
    trunc = [np.asarray(s, dtype=np.int64)[-max_len:] for s in seqs]
    lens = np.fromiter((len(s) for s in trunc), dtype=np.int64, count=n)
    total = int(lens.sum())
    if total == 0:
        return out
    flat = np.concatenate(trunc)
    rows = np.repeat(np.arange(n), lens)
    starts = np.cumsum(lens) - lens
    offset = np.arange(total) - np.repeat(starts, lens)  # index within its own sequence
    cols = max_len - np.repeat(lens, lens) + offset
    out[rows, cols] = flat
    return out


def trim_left(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop the leading columns that are padding in every row of ``arrays[0]``."""
    nonzero = (arrays[0] != 0).any(axis=0)
    first = int(np.argmax(nonzero)) if nonzero.any() else arrays[0].shape[1] - 1
    return tuple(a[:, first:] for a in arrays)


def pack_rows(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First-fit-decreasing packing of segments of ``lengths`` (each ``<= width``) into rows of
    ``width``; returns each segment's ``(row, offset)`` and the number of rows."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > width:
        raise ValueError(f"a segment of length {lengths.max()} does not fit rows of width {width}")
    row = np.zeros(len(lengths), dtype=np.int64)
    offset = np.zeros(len(lengths), dtype=np.int64)
    free: list[int] = []  # plain Python: a batch has ~100 segments and ~20 rows, numpy calls cost more
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        for r, f in enumerate(free):
            if f >= n:
                break
        else:
            r = len(free)
            free.append(width)
        row[i], offset[i] = r, width - free[r]
        free[r] -= n
    n_rows = len(free)
    return row, offset, n_rows


def pack_batch(arrays: tuple[np.ndarray, ...], width: int) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """Pack left-padded rows (``arrays[0]`` decides what is padding) into shared rows.

    Returns the packed arrays ``(R, P)``, ``segments`` ``(R, P)`` (1 + index of the source row
    within the batch, 0 = empty) and ``columns`` ``(R, P)``: each token's column in the original
    left-padded layout of width ``width``, which is what position embeddings must see.
    """
    mask = arrays[0] != 0
    lengths = mask.sum(1)
    row, offset, n_rows = pack_rows(lengths, width)
    n_rows = max(n_rows, 1)
    src_r, src_c = np.nonzero(mask)  # row-major: tokens of a row in order
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    within = np.arange(len(src_r)) - first
    dst_r = row[src_r]
    dst_c = offset[src_r] + within
    used = int(dst_c.max()) + 1 if len(dst_c) else 1
    packed = []
    for a in arrays:
        out = np.zeros((n_rows, used), dtype=a.dtype)
        out[dst_r, dst_c] = a[src_r, src_c]
        packed.append(out)
    segments = np.zeros((n_rows, used), dtype=np.int64)
    segments[dst_r, dst_c] = src_r + 1
    columns = np.zeros((n_rows, used), dtype=np.int64)
    columns[dst_r, dst_c] = width - lengths[src_r] + within
    return tuple(packed), segments, columns


class _Exclusions:
    """Membership test "is item i in user u's training sequence" on flat sorted keys."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        self.stride = n_items + 1
        self.keys = np.unique(users.astype(np.int64) * self.stride + items.astype(np.int64))

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users.astype(np.int64) * self.stride + items
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == q if len(self.keys) else np.zeros(q.shape, dtype=bool)


def sample_negatives(g: np.random.Generator, users: np.ndarray, n_items: int, exclusions: _Exclusions) -> np.ndarray:
    """One uniform negative in ``1..n_items`` per entry of ``users`` (any shape), outside that
    user's excluded items; rejected draws are redrawn (vectorised) until none is left."""
    neg = g.integers(1, n_items + 1, size=users.shape, dtype=np.int64)
    bad = exclusions.contains(users, neg)
    for _ in range(1000):
        if not bad.any():
            return neg
        idx = np.flatnonzero(bad.ravel())
        redraw = g.integers(1, n_items + 1, size=len(idx), dtype=np.int64)
        neg.ravel()[idx] = redraw
        bad.ravel()[idx] = exclusions.contains(users.ravel()[idx], redraw)
    raise RuntimeError("could not sample negatives: some user's training sequence covers (almost) every item")


def _train_users(dataset: SequenceDataset, min_len: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Users that train (``mask``, default ``dataset.train_users``) with ``>= min_len`` training items."""
    users = np.flatnonzero(np.asarray(dataset.train_users if mask is None else mask, dtype=bool))
    lens = np.fromiter((max(len(dataset.sequences[u]) - 2, 0) for u in users), dtype=np.int64, count=len(users))
    return users[lens >= min_len]


class SequenceSampler:
    """Next-item batches for sequential backbones (SASRec-style, pmixer's ``WarpSampler``).

    For a training sequence ``t = seq[:-2]`` the input is ``t[:-1]`` and the target at every
    position is the following item ``t[1:]``; each target gets one negative. Rows are the last
    ``max_len`` positions, left-padded. Each epoch is a seeded permutation of the users with at
    least two training items (the last batch may be smaller).

    Batches are dicts of int64 tensors ``users (B,)``, ``inputs``, ``positives``, ``negatives``
    ``(B, L)`` (0 where ``positives`` is padding). With ``trim=True`` leading all-padding
    columns are dropped (``L <= max_len``), valid only for padding-invariant backbones.

    With ``pack=True`` the batch's sequences share rows (see :func:`pack_batch`): ``inputs``,
    ``positives``, ``negatives`` become ``(R, P)`` with ``R`` usually far below ``B``, plus
    ``segments`` and ``columns``; only backbones with ``supports_packing`` accept this. The
    loss is the same sum over the same positions; the compute drops with the padding.
    """

    def __init__(self, dataset: SequenceDataset, max_len: int, batch_size: int, seed: int, trim: bool = False, pack: bool = False,
                 train_mask: np.ndarray | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n_items = dataset.n_items
        self.batch_size = batch_size
        self.seed = seed
        self.trim = trim
        self.pack = pack
        self.max_len = max_len
        self.users = _train_users(dataset, min_len=2, mask=train_mask)
        train = [dataset.sequences[u][:-2] for u in self.users]
        self.inputs = left_pad([t[:-1] for t in train], max_len)
        self.positives = left_pad([t[1:] for t in train], max_len)
        lens = np.fromiter((len(t) for t in train), dtype=np.int64, count=len(train))
        self.exclusions = _Exclusions(np.repeat(self.users, lens), np.concatenate(train) if train else np.zeros(0, np.int64), self.n_items)

    @property
    def n_sequences(self) -> int:
        return len(self.users)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        g = rng(self.seed, "cf-train", epoch)
        order = g.permutation(len(self.users))
        users = np.broadcast_to(self.users[:, None], self.positives.shape)
        negatives = sample_negatives(g, users, self.n_items, self.exclusions)
        negatives[self.positives == 0] = 0
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            arrays = (self.inputs[idx], self.positives[idx], negatives[idx])
            if self.pack:
                arrays, segments, columns = pack_batch(arrays, self.max_len)
                yield {
                    "users": torch.from_numpy(self.users[idx]),
                    "inputs": torch.from_numpy(arrays[0]),
                    "positives": torch.from_numpy(arrays[1]),
                    "negatives": torch.from_numpy(arrays[2]),
                    "segments": torch.from_numpy(segments),
                    "columns": torch.from_numpy(columns),
                }
                continue
            if self.trim:
                # Trim on the union of inputs and targets: a row's first target sits at its first input.
                arrays = trim_left(*arrays)
            inputs, positives, negs = arrays
            yield {
                "users": torch.from_numpy(self.users[idx]),
                "inputs": torch.from_numpy(np.ascontiguousarray(inputs)),
                "positives": torch.from_numpy(np.ascontiguousarray(positives)),
                "negatives": torch.from_numpy(np.ascontiguousarray(negs)),
            }


class PointwiseSampler:
    """``(user, item, label)`` batches for non-sequential backbones (NCF).

    Every training interaction is a positive; each gets ``n_negatives`` items outside the user's
    training sequence, drawn afresh every epoch. ``batch_size`` counts positives: a batch holds
    ``batch_size * (1 + n_negatives)`` shuffled examples.
    """

    def __init__(self, dataset: SequenceDataset, batch_size: int, seed: int, n_negatives: int = 4, train_mask: np.ndarray | None = None) -> None:
        if batch_size <= 0 or n_negatives < 0:
            raise ValueError(f"batch_size must be positive and n_negatives >= 0, got {batch_size}, {n_negatives}")
        self.n_items = dataset.n_items
        self.batch_size = batch_size
        self.seed = seed
        self.n_negatives = n_negatives
        users = _train_users(dataset, min_len=1, mask=train_mask)
        train = [dataset.sequences[u][:-2] for u in users]
        lens = np.fromiter((len(t) for t in train), dtype=np.int64, count=len(train))
        self.pos_users = np.repeat(users, lens)
        self.pos_items = np.concatenate(train).astype(np.int64) if train else np.zeros(0, np.int64)
        self.exclusions = _Exclusions(self.pos_users, self.pos_items, self.n_items)
        self.n_users_trained = len(users)

    @property
    def n_sequences(self) -> int:
        return self.n_users_trained

    def __len__(self) -> int:
        return -(-len(self.pos_users) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        g = rng(self.seed, "cf-train", epoch)
        k = self.n_negatives
        neg_users = np.repeat(self.pos_users, k)
        neg_items = sample_negatives(g, neg_users, self.n_items, self.exclusions)
        users = np.concatenate([self.pos_users, neg_users])
        items = np.concatenate([self.pos_items, neg_items])
        labels = np.concatenate([np.ones(len(self.pos_users), np.float32), np.zeros(len(neg_users), np.float32)])
        order = g.permutation(len(users))
        step = self.batch_size * (1 + k)
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            yield {
                "users": torch.from_numpy(users[idx]),
                "items": torch.from_numpy(items[idx]),
                "labels": torch.from_numpy(labels[idx]),
            }


def make_sampler(model: Any, dataset: SequenceDataset, batch_size: int, seed: int, train_mask: np.ndarray | None = None) -> SequenceSampler | PointwiseSampler:
    """The sampler a backbone's ``batch_kind`` asks for, over the users of ``train_mask``
    (``(n_users,)`` bool; default ``dataset.train_users``)."""
    kind = getattr(model, "batch_kind", "sequence")
    if kind == "sequence":
        return SequenceSampler(
            dataset,
            model.config.max_len,
            batch_size,
            seed,
            trim=bool(getattr(model, "padding_invariant", False)),
            pack=bool(getattr(model, "supports_packing", False)),
            train_mask=train_mask,
        )
    if kind == "pointwise":
        return PointwiseSampler(dataset, batch_size, seed, n_negatives=int(getattr(model.config, "n_negatives", 4)), train_mask=train_mask)
    raise ValueError(f"backbone {type(model).__name__} has unknown batch_kind {kind!r}; expected 'sequence' or 'pointwise'")
