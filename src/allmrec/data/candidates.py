"""Seeded candidate sets: the true item + negatives the user never interacted with.

Negatives are drawn uniformly without replacement from the items outside the user's whole
sequence (so never the target, never the other split's target). Vectorised rejection
sampling: each user draws a block of item ids; unseen, not-yet-drawn ids are kept in draw
order (= sequential sampling without replacement); the rare user whose block is too short
is redrawn exactly from its complement with ``Generator.choice``.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 65536  # users per block (bounds memory; fixed so results never depend on the machine)


def sample_candidates(targets: np.ndarray, seen: list[np.ndarray], n_items: int, n_candidates: int,
                      gen: np.random.Generator) -> np.ndarray:
    """``(n_users, n_candidates)`` int64: column 0 = ``targets``, then distinct negatives.

    Parameters
    ----------
    targets : (n_users,) true item per user (must be among ``seen[u]``).
    seen : per user, the items never to use as negatives (the whole sequence).
    n_items : items are ``1..n_items``.
    n_candidates : truth + ``n_candidates - 1`` negatives.
    gen : the generator (use ``allmrec.utils.seed.rng(seed, "candidates", split)``).
    """
    n_users = len(seen)
    n_neg = n_candidates - 1
    lens = np.fromiter((len(s) for s in seen), dtype=np.int64, count=n_users)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lens)
    items = np.concatenate(seen).astype(np.int64) if n_users else np.zeros(0, np.int64)
    keys = np.unique(users * (n_items + 1) + items)  # sorted (user, item) pairs
    n_seen = np.bincount(keys // (n_items + 1), minlength=n_users)
    short = np.flatnonzero(n_items - n_seen < n_neg)
    if short.size:
        raise ValueError(f"user {short[0]} has only {n_items - n_seen[short[0]]} unseen items; "
                         f"cannot draw {n_neg} negatives (lower n_candidates)")
    out = np.empty((n_users, n_candidates), dtype=np.int64)
    out[:, 0] = targets
    block = 3 * n_neg + 16
    for start in range(0, n_users, _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, n_users), dtype=np.int64)
        draws = gen.integers(1, n_items + 1, size=(rows.size, block), dtype=np.int64)
        k = rows[:, None] * (n_items + 1) + draws
        pos = np.minimum(np.searchsorted(keys, k), max(len(keys) - 1, 0))
        ok = keys[pos] != k if len(keys) else np.ones_like(k, dtype=bool)
        # mark repeats within a row (keep the first occurrence in draw order)
        order = np.argsort(draws, axis=1, kind="stable")
        srt = np.take_along_axis(draws, order, axis=1)
        rep = np.zeros_like(ok)
        rep[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.empty_like(rep)
        np.put_along_axis(dup, order, rep, axis=1)
        ok &= ~dup
        enough = ok.sum(axis=1) >= n_neg
        # first n_neg kept draws of each row: stable argsort puts kept columns first, in order
        first = np.argsort(~ok, axis=1, kind="stable")[:, :n_neg]
        out[rows, 1:] = np.take_along_axis(draws, first, axis=1)
        for r in rows[~enough]:
            pool = np.setdiff1d(np.arange(1, n_items + 1), keys[np.searchsorted(keys, r * (n_items + 1)):
                                np.searchsorted(keys, (r + 1) * (n_items + 1))] - r * (n_items + 1))
            out[r, 1:] = gen.choice(pool, size=n_neg, replace=False)
    return out
