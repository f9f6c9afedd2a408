"""What the recommender asks of the frozen LLM: the loss on target tokens, the log-likelihood of
candidate answers given a prompt (with the prompt computed once), and greedy generation.

All functions take a :class:`~allmrec.llm.splice.SplicedBatch`. Logits are computed only where
they are needed (target positions), by running the LLM body and its output head separately; this
saves the ``L x vocab`` projection of the whole prompt. Models whose logits are more than the head
applied to the last hidden state (logit soft-capping, logit scaling) fall back to the full forward.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from allmrec.llm.splice import IGNORE, SplicedBatch


def continued(llm: nn.Module, out) -> dict:
    """The keyword argument that continues ``out``'s KV cache in the next forward of ``llm``:
    ``cache`` from transformers 5.2x (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    cache = out["cache"] if "cache" in out else out.past_key_values
    return {_cache_keyword(type(llm)): cache}


@functools.lru_cache(maxsize=None)
def _cache_keyword(model_type: type) -> str:
    """Looked up once per model class: greedy decoding asks on every token."""
    return "cache" if "cache" in inspect.signature(model_type.forward).parameters else "past_key_values"


def body_and_head(llm: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    cfg = getattr(llm, "config", None)
    if cfg is not None and (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)):
        return None
    body, head = getattr(llm, "base_model", None), llm.get_output_embeddings()
    if body is None or body is llm or head is None:
        return None
    return body, head


def label_logprobs(llm: nn.Module, batch: SplicedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled tokens.

    Returns
    -------
    (logp, mask)
        ``logp`` is a flat float32 tensor over labelled tokens in row-major order; ``mask``
        ``(B, L-1)`` marks which shifted positions they come from.
    """
    target = batch.labels[:, 1:]
    mask = target != IGNORE
    parts = body_and_head(llm)
    kwargs = dict(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
    if parts is not None:
        body, head = parts
        hidden = body(**kwargs).last_hidden_state[:, :-1]
        logits = head(hidden[mask]).float()
    else:
        logits = llm(**kwargs).logits[:, :-1][mask].float()
    logp = logits.log_softmax(-1).gather(1, target[mask].unsqueeze(1)).squeeze(1)
    return logp, mask


def target_loss(llm: nn.Module, batch: SplicedBatch) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens (paper eq. 8, averaged over tokens)."""
    logp, mask = label_logprobs(llm, batch)
    if logp.numel() == 0:
        raise ValueError("the batch has no target tokens (build it with targets=...)")
    return -logp.mean()


def sequence_logprobs(llm: nn.Module, batch: SplicedBatch, length_normalize: bool = False) -> torch.Tensor:
    """Per row, the summed (or mean) log-probability of its labelled tokens, ``(B,)`` float32."""
    logp, mask = label_logprobs(llm, batch)
    rows = mask.nonzero(as_tuple=True)[0]
    total = torch.zeros(mask.shape[0], device=logp.device).index_add(0, rows, logp)
    if length_normalize:
        total = total / mask.sum(1).clamp(min=1)
    return total


def _pack_answers(answers: Sequence[Sequence[Sequence[int]]], pad_token_id: int):
    """Each row's answers (all but their last token) packed into one sequence: ``(ids, offset
    within its answer, owner answer, flat row / column / target token / candidate of every
    scored position)``, or ``None`` when every answer is one token long."""
    width = max(sum(len(a) - 1 for a in row) for row in answers)
    if width == 0:
        return None
    bsz = len(answers)
    ids = torch.full((bsz, width), pad_token_id, dtype=torch.long)
    offset = torch.zeros((bsz, width), dtype=torch.long)
    owner = torch.full((bsz, width), -1, dtype=torch.long)  # which answer a packed token belongs to
    rows, cols, targets, cands = [], [], [], []
    for b, row in enumerate(answers):
        q = 0
        for c, a in enumerate(row):
            k = len(a) - 1
            if k:
                ids[b, q : q + k] = torch.tensor(a[:-1])
                offset[b, q : q + k] = torch.arange(k)
                owner[b, q : q + k] = c
                rows += [b] * k
                cols += range(q, q + k)
                targets += a[1:]
                cands += [c] * k
            q += k
    return ids, offset, owner, torch.tensor(rows), torch.tensor(cols), torch.tensor(targets), torch.tensor(cands)


@torch.no_grad()
def score_answers(
    llm: nn.Module,
    prefix: SplicedBatch,
    answers: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    length_normalize: bool = False,
) -> torch.Tensor:
    """Log-likelihood of each candidate answer given its prompt, ``(B, C)`` float32.

    The left-padded prompts are run once with ``use_cache=True``. Then, per prompt, all ``C``
    answers are packed into one row and scored in a single forward against that cache, with a
    4-D attention mask that lets each answer token see the prompt and the earlier tokens of its
    own answer only (and position ids that restart after the prompt for every answer). This costs
    one prompt forward plus ``sum(len(answer))`` tokens, instead of ``C`` full forwards, and never
    copies the cache.

    Parameters
    ----------
    prefix : SplicedBatch
        The prompts, left-padded, without targets.
    answers : ``answers[b][c]`` token ids of candidate ``c`` for prompt ``b`` (EOS included if
        wanted); every prompt must have the same number of candidates.
    length_normalize : bool
        Mean instead of summed token log-probability.
    """
    bsz = prefix.inputs_embeds.shape[0]
    n_cand = {len(a) for a in answers}
    if len(answers) != bsz or len(n_cand) != 1:
        raise ValueError("score_answers needs one list of answers per prompt, all of the same length")
    n_cand = n_cand.pop()
    if any(len(a) == 0 for row in answers for a in row):
        raise ValueError("empty candidate answer")
    device = prefix.inputs_embeds.device
    out = llm(
        inputs_embeds=prefix.inputs_embeds,
        attention_mask=prefix.attention_mask,
        position_ids=prefix.position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): predicts every answer's first token
    first_ids = torch.tensor([[a[0] for a in row] for row in answers], device=device)
    scores = first.gather(1, first_ids)  # (B, C)
    lengths = torch.tensor([[len(a) for a in row] for row in answers], dtype=torch.float32, device=device)

    packed = _pack_answers(answers, pad_token_id)
    if packed is not None:
        ids, offset, owner, rows, cols, targets, cands = (t.to(device) for t in packed)
        width, p_len = ids.shape[1], prefix.attention_mask.shape[1]
        same = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)
        causal = torch.arange(width, device=device)[None, :] <= torch.arange(width, device=device)[:, None]
        keep = torch.cat([prefix.attention_mask.bool()[:, None, :].expand(bsz, width, p_len), same & causal[None]], 2)
        dtype = prefix.inputs_embeds.dtype
        mask = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)[:, None]
        pos = prefix.attention_mask.sum(1, keepdim=True) + offset
        logits = llm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **continued(llm, out)).logits
        logp = logits[rows, cols].float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        scores = scores.reshape(-1).index_add(0, rows * n_cand + cands, logp).view(bsz, n_cand)
    if length_normalize:
        scores = scores / lengths
    return scores


@torch.no_grad()
def greedy_generate(
    llm: nn.Module,
    prefix: SplicedBatch,
    max_new_tokens: int,
    eos_token_id: int,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Greedy decoding from left-padded prompts; per row the new tokens up to (excluding) EOS.

    ``stop(tokens)`` may end a row early (e.g. once its answer is complete); the tokens generated
    so far are kept.
    """
    device = prefix.inputs_embeds.device
    bsz = prefix.inputs_embeds.shape[0]
    mask = prefix.attention_mask
    out = llm(inputs_embeds=prefix.inputs_embeds, attention_mask=mask, position_ids=prefix.position_ids, use_cache=True, logits_to_keep=1)
    pos = mask.sum(1, keepdim=True)
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
        tokens.append(nxt)
        done |= nxt == eos_token_id
        if stop is not None:
            sofar = torch.stack(tokens, 1).tolist()
            done |= torch.tensor([not d and stop(row) for d, row in zip(done.tolist(), sofar)], device=device)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((bsz, 1), dtype=mask.dtype, device=device)], 1)
        out = llm(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **continued(llm, out))
        pos = pos + 1
    gen = torch.stack(tokens, 1).tolist() if tokens else [[] for _ in range(bsz)]
    return [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in gen]
