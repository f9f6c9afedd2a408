"""Text embeddings ``Q`` of every item of a dataset, computed once and cached on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from allmrec.data.dataset import SequenceDataset
from allmrec.text.encoder import TextEncoder
from allmrec.utils.fingerprint import strings_fingerprint
from allmrec.utils.io import load_tensors, save_tensors
from allmrec.utils.paths import cache_dir as default_cache_dir


def text_cache_key(encoder: TextEncoder, dataset: SequenceDataset) -> str:
    """Cache key: the encoder's exact weights and truncation length plus the item texts."""
    parts = [encoder.fingerprint(), str(encoder.max_seq_length), dataset.fingerprint, strings_fingerprint(dataset.texts)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def item_text_embeddings(
    encoder: TextEncoder,
    dataset: SequenceDataset,
    batch_size: int = 64,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``(n_items + 1, encoder.dim)`` float32 embeddings of ``dataset.texts``; row 0 (padding) is zeros.

    Parameters
    ----------
    encoder
        The (possibly fine-tuned) text encoder; encoded in eval mode, without gradients.
    dataset
        Supplies the rendered item texts ``dataset.texts``.
    batch_size
        Texts per forward pass.
    cache
        Read/write ``<cache_dir>/<key>.safetensors``, keyed by the encoder's weights, its
        ``max_seq_length`` and the item texts, so a fine-tuned encoder never reuses the base
        model's embeddings.
    cache_dir
        Defaults to ``$ALLMREC_HOME/text_embeddings``.
    progress
        Show a progress bar while encoding.
    """
    path: Path | None = None
    if cache:
        key = text_cache_key(encoder, dataset)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir("text_embeddings")
        path = folder / f"{key}.safetensors"
        if path.exists():
            emb = load_tensors(path)["embeddings"]
            if emb.shape == (dataset.n_items + 1, encoder.dim):
                return emb
    emb = torch.zeros(dataset.n_items + 1, encoder.dim, dtype=torch.float32)
    emb[1:] = encoder.encode(dataset.texts[1:], batch_size=batch_size, progress=progress)
    if path is not None:
        meta = {"encoder_source": encoder.source, "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint}
        save_tensors(path, {"embeddings": emb}, metadata=meta)
    return emb
