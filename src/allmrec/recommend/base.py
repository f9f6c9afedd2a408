"""The one interface every recommender implements (Cornac's ``score``/``rank``, LensKit's
components): scores for given candidates, for a batch of :class:`~allmrec.data.queries.Queries`.

Evaluation, the experiment suite, ``allmrec recommend`` and serving all score through it; the
methods of :mod:`allmrec.methods` build them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from allmrec.data.queries import Queries


class Recommender(ABC):
    """Scores candidate items for users with histories; higher is better."""

    can_generate = False  # whether generate() names an item in words (LLM methods)
    n_items: int | None = None  # the catalogue size, when known: item ids must be in 1..n_items

    def check(self, queries: Queries) -> Queries:
        """``queries`` if every item id lies in the catalogue, else a ``ValueError`` naming them."""
        if self.n_items is not None:
            items = np.concatenate([queries.candidates.reshape(-1), *[np.asarray(h, dtype=np.int64) for h in queries.histories]])
            bad = items[(items < 1) | (items > self.n_items)]
            if len(bad):
                raise ValueError(f"item ids must be in 1..{self.n_items}; got {sorted(set(bad.tolist()))[:5]}")
        return queries

    @abstractmethod
    def score(self, queries: Queries) -> np.ndarray:
        """``(N, C)`` scores of each row's candidates, in the queries' column order."""

    def rank(self, queries: Queries) -> np.ndarray:
        """``(N, C)`` column indices of each row's candidates, best first (stable on ties)."""
        return np.argsort(-self.score(queries), axis=1, kind="stable")

    def recommend(self, history: Sequence[int], candidates: Sequence[int], user: int = 0) -> list[tuple[int, float]]:
        """``candidates`` ranked best first as ``(item id, score)`` for one history.

        ``user`` matters only for CF models with user embeddings (NCF); sequential models read
        the history.
        """
        if len(candidates) == 0:
            raise ValueError("no candidates given")
        scores = self.score(Queries.single(list(history), list(candidates), user))[0]
        order = np.argsort(-scores, kind="stable")
        return [(int(candidates[k]), float(scores[k])) for k in order]

    def generate(self, queries: Queries) -> list[dict[str, Any]]:
        """Per row ``{"generated", "answer", "matched"}``: a generated answer matched to a candidate."""
        raise ValueError(f"{type(self).__name__} ranks candidates but does not generate answers")
