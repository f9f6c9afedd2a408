"""The frozen LLM: loading, the Figure-3 prompt, soft-token splicing and scoring."""

from allmrec.llm.loading import LLMConfig, bundled_llm_folder, freeze, hidden_size, llm_identity, llm_source_identity, load_llm
from allmrec.llm.prompt import (
    Prompt,
    PromptConfig,
    SoftToken,
    build_prompt,
    build_prompts,
    display_titles,
    shuffled_candidates,
    wording_of,
)
from allmrec.llm.scoring import greedy_generate, label_logprobs, score_answers, sequence_logprobs, target_loss
from allmrec.llm.splice import SplicedBatch, splice, tokenize_answers

__all__ = [
    "LLMConfig",
    "Prompt",
    "PromptConfig",
    "SoftToken",
    "SplicedBatch",
    "build_prompt",
    "build_prompts",
    "bundled_llm_folder",
    "display_titles",
    "freeze",
    "greedy_generate",
    "hidden_size",
    "label_logprobs",
    "llm_identity",
    "llm_source_identity",
    "load_llm",
    "score_answers",
    "sequence_logprobs",
    "shuffled_candidates",
    "splice",
    "target_loss",
    "tokenize_answers",
    "wording_of",
]
