"""One place for seeding, so the same command twice gives the same numbers."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng(seed: int, *stream: int | str) -> np.random.Generator:
    """An independent numpy generator for ``(seed, *stream)``.

    Deriving a fresh stream per purpose (and per epoch) means a run resumed at an epoch
    boundary draws exactly what the uninterrupted run would have drawn.
    """
    keys = [seed] + [_key(s) for s in stream]
    return np.random.default_rng(keys)


def torch_seed(seed: int, *stream: int | str) -> int:
    """A torch seed for ``(seed, *stream)`` (``torch.manual_seed(torch_seed(seed, "dropout", epoch))``)."""
    return int(rng(seed, *stream).integers(0, 2**63 - 1))


def torch_generator(seed: int, *stream: int | str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(torch_seed(seed, *stream))
    return g


def _key(s: int | str) -> int:
    if isinstance(s, int):
        return s
    import zlib

    return zlib.crc32(s.encode())
