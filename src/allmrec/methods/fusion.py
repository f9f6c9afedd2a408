"""Recommenders with no LLM forward, from a run's text and fitted fusions (:mod:`allmrec.fusion`):

* ``text-sim``: "Text similarity", the cosine of each candidate's frozen text embedding with the
  0.8-decayed mean of the last 10 history items' (nothing trained);
* ``cf-text``: "SASRec + text (no LLM)", the control of method.md (the CF score and two text
  similarities, linearly; ``fusion/control``);
* ``fusion``: "Fusion (no LLM)", the best mode's prior alone (``fusion/fusion``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allmrec.data.queries import Queries
from allmrec.fusion.features import normalize_rows, similarity_features
from allmrec.methods.base import BACKBONE_LABELS, Method
from allmrec.recommend.base import Recommender


class TextSimilarityRecommender(Recommender):
    def __init__(self, table: np.ndarray) -> None:
        self.table = normalize_rows(table)
        self.n_items = len(table) - 1

    def score(self, queries: Queries) -> np.ndarray:
        self.check(queries)
        return similarity_features(self.table, queries.histories, queries.candidates, "text")["text_dmean"]


class TextSimilarity(Method):
    name = "text-sim"

    def label(self, resources: Any) -> str:
        return "Text similarity"

    def build(self, resources: Any, seed: int) -> TextSimilarityRecommender:
        return TextSimilarityRecommender(resources.text_table)


class CFText(Method):
    name = "cf-text"
    needs = ("cf", "fusion")

    def label(self, resources: Any) -> str:
        name = resources.config.cf().backbone
        return f"{BACKBONE_LABELS.get(name, name)} + text (no LLM)"

    def build(self, resources: Any, seed: int) -> Recommender:
        return resources.control


class FusionOnly(Method):
    name = "fusion"
    needs = ("cf", "stage1", "fusion")

    def label(self, resources: Any) -> str:
        return "Fusion (no LLM)"

    def build(self, resources: Any, seed: int) -> Recommender:
        return resources.fusion
