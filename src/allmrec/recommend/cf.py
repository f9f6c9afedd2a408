"""A CF backbone (or any model with ``score(users, histories, candidates)``) as a recommender."""

from __future__ import annotations

import numpy as np

from allmrec.cf.base import CFBackbone
from allmrec.cf.evaluate import candidate_scores
from allmrec.data.queries import Queries
from allmrec.recommend.base import Recommender


class CFRecommender(Recommender):
    def __init__(self, model: CFBackbone, batch_size: int = 1024) -> None:
        self.model, self.batch_size = model, batch_size
        self.n_items = int(model.config.n_items) or None

    def score(self, queries: Queries) -> np.ndarray:
        self.check(queries)
        return candidate_scores(self.model, queries.users, queries.histories, queries.candidates, self.batch_size).numpy()
