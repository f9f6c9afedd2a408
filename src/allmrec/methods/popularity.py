"""Popularity: every candidate scored by its number of training interactions (the worked
example of docs/design.md: a method is this one file plus its line in the registry)."""

from __future__ import annotations

from typing import Any

import numpy as np

from allmrec.data.queries import Queries
from allmrec.methods.base import Method
from allmrec.recommend.base import Recommender


class PopularityRecommender(Recommender):
    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, dtype=np.float64)

    def score(self, queries: Queries) -> np.ndarray:
        return self.counts[queries.candidates]


class Popularity(Method):
    name = "popularity"

    def label(self, resources: Any) -> str:
        return "Popularity"

    def build(self, resources: Any, seed: int) -> PopularityRecommender:
        return PopularityRecommender(resources.dataset.train_item_counts())
