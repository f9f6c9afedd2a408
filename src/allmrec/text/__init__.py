"""Sentence-BERT text encoder (loading, fine-tuning, saving) and cached item-text embeddings."""

from allmrec.text.embeddings import item_text_embeddings
from allmrec.text.encoder import BUNDLED_NAME, TextEncoder, bundled_model_path, load_text_encoder

__all__ = ["BUNDLED_NAME", "TextEncoder", "bundled_model_path", "item_text_embeddings", "load_text_encoder"]
