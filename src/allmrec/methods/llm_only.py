"""LLM-Only: the frozen LLM with the text prompt (no soft tokens, no training)."""

from __future__ import annotations

from typing import Any

from allmrec.llm.prompt import PromptConfig
from allmrec.llm.reader import PromptReader
from allmrec.methods.base import Method
from allmrec.recommend.llm import LLMRecommender


def text_prompt(resources: Any) -> PromptConfig:
    """The text-only prompt with the stage-2 prompt's history length and title cut."""
    model = resources.config.stage2().model
    return PromptConfig(style="text", history_len=model.history_len, max_title_tokens=model.max_title_tokens)


class LLMOnly(Method):
    name = "llm-only"
    uses_llm = True

    def label(self, resources: Any) -> str:
        return "LLM-Only"

    def build(self, resources: Any, seed: int) -> LLMRecommender:
        llm, tok = resources.llm
        ds = resources.dataset
        return LLMRecommender(PromptReader(llm, tok, ds.titles, ds.wording, text_prompt(resources), seed=seed, progress=True))
