"""A-LLMRec: an all-round LLM-based recommender built on a frozen CF model and a frozen LLM."""

__version__ = "0.1.0"
