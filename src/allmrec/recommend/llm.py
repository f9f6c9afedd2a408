"""An LLM that reads prompts (LLM-Only, TALLRec, A-LLMRec in either mode) as a recommender."""

from __future__ import annotations

from typing import Any

import numpy as np

from allmrec.data.queries import Queries
from allmrec.llm.reader import PromptReader
from allmrec.recommend.base import Recommender


class LLMRecommender(Recommender):
    """Scores by title likelihood (or a listwise stage-2 head); generates unless listwise."""

    def __init__(self, reader: PromptReader) -> None:
        self.reader = reader
        self.n_items = len(reader.titles) - 1

    @property
    def can_generate(self) -> bool:  # type: ignore[override]
        return not self.reader.listwise

    def score(self, queries: Queries) -> np.ndarray:
        return self.reader.score(self.check(queries))

    def generate(self, queries: Queries) -> list[dict[str, Any]]:
        return self.reader.generate(self.check(queries))

    def display_title(self, item: int) -> str:
        """The title as the prompts show it (what a generated answer is matched against)."""
        return self.reader.shown_titles[int(item)]
