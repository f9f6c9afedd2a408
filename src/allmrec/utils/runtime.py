"""Process-wide torch settings that a step may change only for its own duration."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (``n <= 0``: leave as is), then restore.

    Small CF models run fastest on one thread, the LLM on all cores: a step must not leave its
    own choice behind for the next step of the same process.
    """
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
