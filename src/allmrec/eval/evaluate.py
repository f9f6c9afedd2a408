"""Score a recommender on a split's stored candidates: the per-user columns every reported
number is computed from (:func:`allmrec.eval.metrics.metrics_from_columns`).

Columns: ``rank`` (0-based rank of the truth among the candidates, pessimistic ties) and, for
recommenders that generate, ``gen_hit`` (the normalised answer equals the truth's title) and
``gen_no_match`` (the answer matches no candidate).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from allmrec.data.dataset import SequenceDataset
from allmrec.data.queries import Queries
from allmrec.eval.metrics import target_ranks
from allmrec.llm.matching import normalize_title

if TYPE_CHECKING:  # any object with score() (and, to generate, generate() and display_title())
    from allmrec.recommend.base import Recommender

log = logging.getLogger(__name__)
MODES = ("rank", "generate", "both")


def evaluate_users(recommender: "Recommender", dataset: SequenceDataset, split: str, users: np.ndarray, mode: str = "rank",
                   outputs: list[dict[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """Per-user columns of ``recommender`` on ``users`` of ``split`` (``mode``: rank, generate or
    both; generation is skipped, with a log line, for recommenders that only rank). Generated
    answers are appended to ``outputs`` when given."""
    if mode not in MODES:
        raise ValueError(f"evaluation mode must be one of {', '.join(MODES)}, got {mode!r}")
    queries = Queries.from_split(dataset, split, users)
    columns: dict[str, np.ndarray] = {}
    generate = mode in ("generate", "both")
    if generate and not recommender.can_generate:
        log.info("%s ranks but does not generate; generation skipped", type(recommender).__name__)
        generate = False
    if mode in ("rank", "both") or not generate:
        columns["rank"] = target_ranks(recommender.score(queries)) if len(queries) else np.zeros(0, np.int64)
    if generate:
        rows = recommender.generate(queries)
        truth = [normalize_title(recommender.display_title(c)) for c in queries.candidates[:, 0]]
        columns["gen_hit"] = np.array([bool(t) and normalize_title(r["answer"]) == t for r, t in zip(rows, truth)], dtype=bool)
        columns["gen_no_match"] = np.array([r["matched"] is None for r in rows], dtype=bool)
        if outputs is not None:
            outputs += [{"user": int(u), "target": int(c), **r, "gen_hit": bool(h)} for u, c, r, h in zip(queries.users, queries.candidates[:, 0], rows, columns["gen_hit"])]
    return columns
