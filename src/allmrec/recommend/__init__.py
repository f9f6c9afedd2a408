"""Inference with the frozen LLM: likelihood ranking, greedy generation + exact matching."""

from allmrec.recommend.inference import (
    InferenceConfig,
    ProjectedSoftTokens,
    SoftTokenSource,
    evaluate_llm,
    generate_recommendations,
    rank_candidates,
)
from allmrec.recommend.matching import extract_answer, match_candidates, normalize_title
from allmrec.recommend.recommender import Recommender

__all__ = [
    "InferenceConfig",
    "ProjectedSoftTokens",
    "Recommender",
    "SoftTokenSource",
    "evaluate_llm",
    "extract_answer",
    "generate_recommendations",
    "match_candidates",
    "normalize_title",
    "rank_candidates",
]
