"""Short content hashes that identify a model's weights, a tensor or a dataset: the identities a
checkpoint records and a later step checks (a stage 2 trained on one CF model refuses another)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Mapping

import numpy as np
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


def tensor_fingerprint(t: torch.Tensor) -> str:
    return state_fingerprint({"t": t.detach().float()})


def strings_fingerprint(strings: Iterable[str]) -> str:
    """SHA-256 (16 hex digits) of a sequence of strings (order matters)."""
    h = hashlib.sha256()
    for s in strings:
        b = str(s).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset: Any) -> str:
    """The prepared dataset's own fingerprint, or a hash of its sequences, candidates and
    training-user mask (datasets built in memory)."""
    if dataset.fingerprint:
        return dataset.fingerprint
    h = hashlib.sha256()
    h.update(np.asarray([dataset.n_users, dataset.n_items], dtype=np.int64).tobytes())
    for s in dataset.sequences:
        h.update(np.asarray(len(s), dtype=np.int64).tobytes())
        h.update(np.asarray(s, dtype=np.int64).tobytes())
    for a in (dataset.valid_candidates, dataset.test_candidates):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    h.update(np.asarray(dataset.train_users, dtype=bool).tobytes())
    return "sha256:" + h.hexdigest()[:32]


def cf_identity(cf_model: torch.nn.Module) -> str:
    """``"<backbone name>@<hash of its config and weights>"`` of a CF model."""
    cfg = getattr(cf_model, "config", None)
    cfg_text = repr(dataclasses.asdict(cfg)) if dataclasses.is_dataclass(cfg) else ""
    name = getattr(cf_model, "name", "") or type(cf_model).__name__
    h = hashlib.sha256((cfg_text + state_fingerprint(cf_model.state_dict())).encode()).hexdigest()[:12]
    return f"{name}@{h}"
