"""TALLRec: the LLM with LoRA adapters fine-tuned on the text prompt (:mod:`allmrec.baselines.tallrec`)."""

from __future__ import annotations

from typing import Any

from allmrec.baselines.tallrec import tallrec_prompt_config
from allmrec.llm.reader import PromptReader
from allmrec.methods.base import Method
from allmrec.recommend.llm import LLMRecommender


class TALLRec(Method):
    name = "tallrec"
    needs = ("tallrec",)
    uses_llm = True

    def label(self, resources: Any) -> str:
        return "TALLRec"

    def build(self, resources: Any, seed: int) -> LLMRecommender:
        model = resources.tallrec
        ds = resources.dataset
        return LLMRecommender(PromptReader(model, resources.llm[1], ds.titles, ds.wording, tallrec_prompt_config(model), seed=seed, progress=True))
