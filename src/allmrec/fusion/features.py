"""Per-candidate features of a user's candidates that cost no per-user LLM forward: the experts'
scores (CF models, the text tower) and cosine similarities of the candidate's row of an item
table (the frozen text encoder's ``Q``, stage 1's ``q_i`` and ``e_i``) to the user's history;
plus per-candidate and per-user gate inputs (the candidate's popularity, the history's length,
the CF model's confidence over the candidates).

Every feature is a ``(U, C)`` array in the queries' candidate order (or ``(U,)`` per user).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from allmrec.data.queries import Queries

HISTORY = 10  # most recent items the similarities read
DECAY = 0.8  # weight of an item one step older in the decayed mean


def normalize_rows(table: np.ndarray, center: bool = False) -> np.ndarray:
    """Unit rows (row 0, padding, stays zero); ``center`` removes the mean item first."""
    t = np.asarray(table, dtype=np.float32).copy()
    if center:
        t[1:] -= t[1:].mean(0, keepdims=True)
    norms = np.linalg.norm(t, axis=1, keepdims=True)
    t = t / np.where(norms == 0, 1, norms)
    t[0] = 0
    return t


def recent(histories: list[np.ndarray], width: int = HISTORY) -> np.ndarray:
    """``(U, width)`` most recent items, left-padded with 0."""
    out = np.zeros((len(histories), width), dtype=np.int64)
    for r, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-width:]
        if len(h):
            out[r, width - len(h) :] = h
    return out


def similarity_features(table: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray, prefix: str, chunk: int = 2048) -> dict[str, np.ndarray]:
    """Cosine of each candidate's row of ``table`` (unit rows) with the history: the last item
    (``_last``), the best of the last 10 (``_max``), their decayed mean (``_dmean``) and the mean
    of the whole history (``_mean``)."""
    H = recent(histories)
    ages = np.arange(H.shape[1])[::-1]
    parts: dict[str, list[np.ndarray]] = {f"{prefix}_{k}": [] for k in ("last", "max", "dmean", "mean")}
    for s in range(0, len(H), chunk):
        h, c = H[s : s + chunk], table[candidates[s : s + chunk]]
        he = table[h]
        sims = np.einsum("bcd,bwd->bcw", c, he)
        valid = h != 0
        parts[f"{prefix}_max"].append(np.where(valid[:, None, :], sims, -np.inf).max(-1))
        parts[f"{prefix}_last"].append(sims[:, :, -1])
        weights = (DECAY**ages)[None, :] * valid
        u = np.einsum("bw,bwd->bd", weights, he)
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-8)
        parts[f"{prefix}_dmean"].append(np.einsum("bcd,bd->bc", c, u))
        mu = np.stack([table[np.asarray(f, dtype=np.int64)].mean(0) for f in histories[s : s + chunk]])
        mu /= np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-8)
        parts[f"{prefix}_mean"].append(np.einsum("bcd,bd->bc", c, mu))
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}


def zscore(x: np.ndarray) -> np.ndarray:
    """Per-row z-scores over the candidates."""
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)


def cf_confidence(scores: np.ndarray) -> dict[str, np.ndarray]:
    """How sure the CF model is, per user, from its scores of the candidates (the truth unused):
    the margin between its two best z-scores and the entropy of its softmax."""
    z = zscore(scores)
    top = -np.sort(-z, 1)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else np.zeros(len(top))  # one candidate: no runner-up
    return {"u_margin": margin.astype(np.float32), "u_ent": (-(p * np.log(p + 1e-12)).sum(1)).astype(np.float32)}


@dataclass
class FeatureSources:
    """What the features are computed from.

    ``experts``: name -> a scorer of queries (``score(queries) -> (U, C)``: a CF recommender, the
    text tower); ``tables``: name -> ``(n_items + 1, d)`` item table; ``item_counts``: training
    interactions per item (popularity)."""

    experts: Mapping[str, Any]
    tables: Mapping[str, np.ndarray]
    item_counts: np.ndarray
    _unit: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def table(self, name: str) -> np.ndarray:
        if name not in self._unit:
            self._unit[name] = normalize_rows(self.tables[name], center=name.startswith("llm"))
        return self._unit[name]

    def features(self, queries: Queries) -> dict[str, np.ndarray]:
        out = {name: np.asarray(e.score(queries), dtype=np.float32) for name, e in self.experts.items()}
        for name in self.tables:
            out.update(similarity_features(self.table(name), queries.histories, queries.candidates, name))
        out["logpop"] = np.log1p(self.item_counts[queries.candidates]).astype(np.float32)
        out["u_len"] = np.log(np.maximum([len(h) for h in queries.histories], 1)).astype(np.float32)
        if "cf" in out:
            out.update(cf_confidence(out["cf"]))
        return out

    def grown(self, experts: Mapping[str, Any], rows: Mapping[str, np.ndarray]) -> "FeatureSources":
        """These sources with new items appended (ids ``n_items + 1, ...``): ``experts`` replace
        those of the same name (scorers that know the new items), ``rows[name]`` holds each
        table's rows of the new items; a new item has no training interactions."""
        if set(rows) != set(self.tables):
            raise ValueError(f"new items need rows of every table {sorted(self.tables)}, got {sorted(rows)}")
        n_new = {len(r) for r in rows.values()}
        if len(n_new) > 1:
            raise ValueError(f"the tables' new rows disagree on the number of new items: {sorted(n_new)}")
        tables = {name: np.concatenate([t, np.asarray(rows[name], dtype=t.dtype)]) for name, t in self.tables.items()}
        k = n_new.pop() if n_new else 0
        return FeatureSources({**self.experts, **experts}, tables, np.concatenate([self.item_counts, np.zeros(k, dtype=self.item_counts.dtype)]))
