"""Recommenders: one interface (:class:`Recommender`), a CF model's and an LLM's implementation."""

from allmrec.llm.matching import extract_answer, match_candidates, normalize_title
from allmrec.recommend.base import Recommender
from allmrec.recommend.cf import CFRecommender
from allmrec.recommend.llm import LLMRecommender

__all__ = ["CFRecommender", "LLMRecommender", "Recommender", "extract_answer", "match_candidates", "normalize_title"]
