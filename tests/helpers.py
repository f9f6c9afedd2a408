"""Test helpers: the bundled LLM loaded once per process, a tiny synthetic dataset with short
distinct titles, and a tiny CF backbone."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from allmrec.cf.base import CFBackbone, CFConfig
from allmrec.data.dataset import SequenceDataset
from allmrec.llm.loading import LLMConfig, llm_source_identity, load_llm
from allmrec.utils.paths import home

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "purple", "orange"]
THINGS = ["apple", "car", "house", "river", "guitar", "lamp", "boat", "tiger"]


def converted_llm_cached(config: LLMConfig | None = None) -> bool:
    """Whether the GGUF conversion of ``config``'s LLM is already in the current cache."""
    config = config or LLMConfig()
    target = home() / "llm" / llm_source_identity(config).replace("@", "-")
    return (target / "model.safetensors").exists()


@functools.cache
def shared_test_llm(fallback_home: str, dtype: str = "auto") -> tuple[nn.Module, object]:
    """The bundled SmolLM2 on CPU, loaded once per process.

    Uses the cache of an explicitly set ``ALLMREC_HOME`` (e.g. CI's) or the user's converted
    cache when present; otherwise converts into ``fallback_home`` (a temporary home) so tests
    never write to the user's default cache.
    """
    config = LLMConfig(dtype=dtype, device="cpu")
    if os.environ.get("ALLMREC_HOME") or converted_llm_cached(config):
        return load_llm(config)
    old = os.environ.get("ALLMREC_HOME")
    os.environ["ALLMREC_HOME"] = str(Path(fallback_home))
    try:
        return load_llm(config)
    finally:
        if old is None:
            os.environ.pop("ALLMREC_HOME", None)
        else:
            os.environ["ALLMREC_HOME"] = old


def tiny_dataset(n_users: int = 12, n_items: int = 40, seq_len: int = 7, n_candidates: int = 20, seed: int = 0, wording: dict[str, str] | None = None) -> SequenceDataset:
    """A synthetic :class:`SequenceDataset` with two-word titles ("red apple", "blue car", ...)."""
    gen = np.random.default_rng(seed)
    titles = [""] + [f"{COLOURS[i % 8].title()} {THINGS[(i // 8 + i) % 8].title()} {i}" for i in range(n_items)]
    sequences = [np.sort(gen.choice(np.arange(1, n_items + 1), size=seq_len, replace=False)) for _ in range(n_users)]
    sequences = [gen.permutation(s).astype(np.int64) for s in sequences]

    def cands(split_target: int) -> np.ndarray:
        out = np.zeros((n_users, n_candidates), dtype=np.int64)
        for u, s in enumerate(sequences):
            pool = np.setdiff1d(np.arange(1, n_items + 1), s)
            out[u, 0] = s[split_target]
            out[u, 1:] = gen.choice(pool, size=n_candidates - 1, replace=False)
        return out

    return SequenceDataset(
        name="tiny",
        item_ids=np.array(["<pad>"] + [f"i{i}" for i in range(1, n_items + 1)]),
        titles=titles,
        texts=titles,
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        sequences=sequences,
        valid_candidates=cands(-2),
        test_candidates=cands(-1),
        train_users=np.ones(n_users, dtype=bool),
        wording=dict(wording or {}),
        fingerprint=f"tiny-{seed}-{n_users}-{n_items}-{seq_len}",
    )


class TinyCF(CFBackbone):
    """Mean of the history's item embeddings; enough to give every user a distinct ``x^u``."""

    name = "tiny"

    def __init__(self, config: CFConfig) -> None:
        super().__init__(config)
        gen = torch.Generator().manual_seed(0)
        self.items = nn.Parameter(torch.randn(config.n_items + 1, config.dim, generator=gen))

    def item_embeddings(self) -> torch.Tensor:
        return self.items

    def user_representation(self, users: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        mask = (histories != 0).float().unsqueeze(-1)
        return (self.items[histories] * mask).sum(1) / mask.sum(1).clamp(min=1) + 0.1

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - not trained
        raise NotImplementedError


def tiny_cf(dataset: SequenceDataset, dim: int = 8) -> TinyCF:
    return TinyCF(CFConfig(n_items=dataset.n_items, n_users=dataset.n_users, dim=dim, max_len=10)).eval()


def save_tiny_gpt2(folder: Path) -> Path:
    """A random 2-layer GPT-2 (width 32) with the bundled tokenizer's vocabulary, saved in ``folder``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = load_llm()
    config = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
