"""One object that recommends from a history and a candidate list (used by the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from allmrec.align.stage2 import Stage2Model
from allmrec.data.dataset import SequenceDataset
from allmrec.llm.prompt import PromptConfig, display_titles
from allmrec.recommend.inference import InferenceConfig, SoftTokenSource, _prompt_config, _source, generate_recommendations, rank_candidates


class Recommender:
    """A-LLMRec (or LLM-Only without ``stage2``) over a fixed item catalogue.

    Parameters
    ----------
    llm, tokenizer : the frozen LLM (:func:`allmrec.llm.load_llm`).
    titles : item titles by item id (index 0 = padding).
    wording : prompt nouns/verbs (``dataset.wording``).
    stage2, cf_model, joint_items : A-LLMRec's projectors, frozen CF model and joint table.
    prompt : PromptConfig; default: the stage-2 model's, else the ``"text"`` style.
    config : InferenceConfig (batch size, seed of the candidate order, ...).
    """

    def __init__(
        self,
        llm: nn.Module,
        tokenizer: Any,
        titles: Sequence[str],
        wording: dict[str, str] | None = None,
        stage2: Stage2Model | None = None,
        cf_model: nn.Module | None = None,
        joint_items: torch.Tensor | None = None,
        source: SoftTokenSource | None = None,
        prompt: PromptConfig | None = None,
        config: InferenceConfig | None = None,
    ) -> None:
        self.llm, self.tokenizer, self.titles, self.wording = llm, tokenizer, list(titles), wording
        self.source = _source(stage2, cf_model, joint_items, source)
        self.prompt = _prompt_config(prompt, self.source)
        self.config = config or InferenceConfig()
        self.shown_titles = display_titles(self.titles, tokenizer, self.prompt.max_title_tokens)

    @classmethod
    def from_dataset(cls, dataset: SequenceDataset, llm: nn.Module, tokenizer: Any, **kwargs: Any) -> Recommender:
        return cls(llm, tokenizer, dataset.titles, dataset.wording, **kwargs)

    def _check(self, history: Sequence[int], candidates: Sequence[int]) -> tuple[list[int], np.ndarray]:
        n = len(self.titles) - 1
        bad = [int(i) for i in [*history, *candidates] if not 1 <= int(i) <= n]
        if bad:
            raise ValueError(f"item ids must be in 1..{n}; got {bad[:5]}")
        if len(candidates) == 0:
            raise ValueError("no candidates given")
        return [int(i) for i in history], np.asarray([list(candidates)], dtype=np.int64)

    def scores(self, history_item_ids: Sequence[int], candidate_item_ids: Sequence[int], user: int = 0) -> np.ndarray:
        """Log-likelihood of each candidate's title as the answer, in the given order."""
        hist, cands = self._check(history_item_ids, candidate_item_ids)
        return rank_candidates(self.llm, self.tokenizer, self.titles, [hist], cands, [user], source=self.source, wording=self.wording, prompt=self.prompt, config=self.config, shown_titles=self.shown_titles)[0]

    def recommend(self, history_item_ids: Sequence[int], candidate_item_ids: Sequence[int], user: int = 0) -> list[tuple[int, float]]:
        """Candidates ranked best first as ``(item_id, score)``.

        ``user`` matters only for CF models with user embeddings (NCF); sequential backbones
        read the history.
        """
        s = self.scores(history_item_ids, candidate_item_ids, user)
        order = np.argsort(-s, kind="stable")
        return [(int(candidate_item_ids[k]), float(s[k])) for k in order]

    def generate(self, history_item_ids: Sequence[int], candidate_item_ids: Sequence[int], user: int = 0) -> dict[str, Any]:
        """Greedy answer: ``{"generated", "answer", "matched"}`` (matched item id or ``None``)."""
        hist, cands = self._check(history_item_ids, candidate_item_ids)
        return generate_recommendations(self.llm, self.tokenizer, self.titles, [hist], cands, [user], source=self.source, wording=self.wording, prompt=self.prompt, config=self.config, shown_titles=self.shown_titles)[0]
