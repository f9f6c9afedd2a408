"""Short content hashes that identify a model's weights or a dataset, for caches and checkpoints."""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping

import torch


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) over the names, dtypes, shapes and bytes of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Viewing as bytes works for every dtype (bfloat16 has no numpy equivalent).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def strings_fingerprint(strings: Iterable[str]) -> str:
    """SHA-256 (16 hex digits) of a sequence of strings (order matters)."""
    h = hashlib.sha256()
    for s in strings:
        b = str(s).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]
