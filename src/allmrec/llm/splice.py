"""Turn prompts with soft-token slots into ``inputs_embeds`` for a frozen LLM.

Each text part is tokenized on its own (no special tokens added), so every slot sits on a token
boundary and the text tokens are exactly the tokenizer's output for that text. Soft vectors are
written into the slot rows with an out-of-place ``index_put`` (gradients reach them, never the
LLM) and cast to the LLM's dtype there, so projectors may train in float32 while the LLM runs in
bfloat16.

Padding is explicit: ``"left"`` for generation and ranking (every row's last real token is the
last column), ``"right"`` for training. Position ids count real tokens only (0 at each row's first
real token), so padding never shifts positions.

Labels follow the Hugging Face convention: ``labels[b, t]`` is the token id at position ``t`` for
target tokens and ``-100`` everywhere else (the prediction for position ``t`` is read at ``t-1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from allmrec.llm.prompt import Prompt, SoftToken

IGNORE = -100


@dataclass
class SplicedBatch:
    """Model inputs for a batch of prompts (``B`` rows, ``L`` columns).

    Attributes
    ----------
    inputs_embeds : (B, L, H) tensor in the LLM's dtype.
    attention_mask : (B, L) long, 1 = real token or soft token.
    position_ids : (B, L) long.
    labels : (B, L) long, token ids at target positions, -100 elsewhere.
    input_ids : (B, L) long, the token ids (pad id at padding, -1 at soft slots).
    soft_mask : (B, L) bool, True at soft slots.
    lengths : (B,) long, number of real positions (prompt + target) per row.
    prompt_lengths : (B,) long, real positions of the prompt part only.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    input_ids: torch.Tensor
    soft_mask: torch.Tensor
    lengths: torch.Tensor
    prompt_lengths: torch.Tensor


def special_prefix(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer puts before a text by itself (e.g. Llama's BOS); often empty."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    k = len(with_special) - len(plain)
    return list(with_special[:k]) if k > 0 and with_special[k:] == plain else []


def tokenize_parts(prompts: Sequence[Prompt], tokenizer: Any) -> list[list[int | SoftToken]]:
    """Per prompt, its token ids with the :class:`SoftToken` slots left in place."""
    texts = [p for prompt in prompts for p in prompt.parts if isinstance(p, str)]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    prefix = special_prefix(tokenizer)
    out: list[list[int | SoftToken]] = []
    for prompt in prompts:
        row: list[int | SoftToken] = list(prefix)
        for part in prompt.parts:
            if isinstance(part, SoftToken):
                row.append(part)
            else:
                row.extend(next(ids))
        out.append(row)
    return out


def tokenize_answers(texts: Sequence[str], tokenizer: Any, add_eos: bool = True) -> list[list[int]]:
    """Token ids of continuations (answers), each followed by EOS when ``add_eos``."""
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if add_eos else []
    return [list(t) + eos for t in ids]


def splice(
    prompts: Sequence[Prompt],
    tokenizer: Any,
    embedding: nn.Module,
    soft: torch.Tensor | None = None,
    *,
    targets: Sequence[str] | None = None,
    padding_side: str = "left",
    add_eos: bool = True,
) -> SplicedBatch:
    """Build LLM inputs for ``prompts`` (and optional answer ``targets``).

    Parameters
    ----------
    prompts : sequence of Prompt
    tokenizer : the LLM's tokenizer.
    embedding : the LLM's input embedding module (``llm.get_input_embeddings()``).
    soft : (n_soft, H) tensor, optional
        One vector per :class:`SoftToken`, in order of appearance, prompt after prompt. Required
        when the prompts have slots; must be ``None`` or empty otherwise.
    targets : sequence of str, optional
        Text appended after each prompt and marked in ``labels`` (EOS appended when ``add_eos``).
    padding_side : {"left", "right"}
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = tokenize_parts(prompts, tokenizer)
    n_soft = sum(1 for r in rows for t in r if isinstance(t, SoftToken))
    have = 0 if soft is None else soft.shape[0]
    if have != n_soft:
        raise ValueError(f"the prompts have {n_soft} soft-token slots but {have} soft vectors were given")
    answers = tokenize_answers(targets, tokenizer, add_eos) if targets is not None else [[] for _ in rows]
    if len(answers) != len(rows):
        raise ValueError(f"{len(rows)} prompts but {len(answers)} targets")

    pad = tokenizer.pad_token_id
    lengths = [len(r) + len(a) for r, a in zip(rows, answers)]
    width = max(lengths)
    bsz = len(rows)
    input_ids = torch.full((bsz, width), pad, dtype=torch.long)
    labels = torch.full((bsz, width), IGNORE, dtype=torch.long)
    attention = torch.zeros((bsz, width), dtype=torch.long)
    soft_mask = torch.zeros((bsz, width), dtype=torch.bool)
    for b, (row, ans) in enumerate(zip(rows, answers)):
        start = width - lengths[b] if padding_side == "left" else 0
        ids = [-1 if isinstance(t, SoftToken) else t for t in row] + ans
        input_ids[b, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[b, start : start + len(ids)] = 1
        soft_mask[b, start : start + len(row)] = torch.tensor([isinstance(t, SoftToken) for t in row])
        if ans:
            labels[b, start + len(row) : start + len(ids)] = torch.tensor(ans, dtype=torch.long)
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)

    weight = embedding.weight
    device = weight.device
    lookup = input_ids.masked_fill(soft_mask | (attention == 0), pad).to(device)
    embeds = embedding(lookup)
    if n_soft:
        b_idx, p_idx = soft_mask.nonzero(as_tuple=True)  # row-major = order of appearance
        embeds = embeds.index_put((b_idx.to(device), p_idx.to(device)), soft.to(device=device, dtype=embeds.dtype))
    return SplicedBatch(
        inputs_embeds=embeds,
        attention_mask=attention.to(device),
        position_ids=position_ids.to(device),
        labels=labels.to(device),
        input_ids=input_ids.to(device),
        soft_mask=soft_mask.to(device),
        lengths=torch.tensor(lengths, device=device),
        prompt_lengths=torch.tensor([len(r) for r in rows], device=device),
    )
