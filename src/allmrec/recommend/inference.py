"""Recommendation with the frozen LLM on fixed candidate sets.

Two ways to read the LLM's choice, both on the same prompt (candidates shown in a seeded random
order per user):

* ``rank``: the log-likelihood of each candidate's answer (`` "title"`` + EOS) given the prompt.
  The prompt is run once and its key/value cache reused for all candidates
  (:func:`allmrec.llm.scoring.score_answers`). Gives Hit@k / NDCG@k / MRR.
* ``generate``: greedy decoding; the answer is normalised and matched *exactly* to the candidate
  titles (:mod:`allmrec.recommend.matching`). Gives a generation Hit@1 and the share of outputs
  that match no candidate.

Soft tokens come from a :class:`SoftTokenSource`; :class:`ProjectedSoftTokens` is A-LLMRec's
(``F_U(x^u)`` and ``F_I(e_i)``). With ``source=None`` and the ``"text"`` prompt style this is the
LLM-Only baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from allmrec.align.stage2 import Stage2Model, cf_candidate_scores, user_representations
from allmrec.data.dataset import SequenceDataset
from allmrec.eval.metrics import ranking_metrics, target_ranks
from allmrec.llm.prompt import Prompt, PromptConfig, build_prompt, display_titles
from allmrec.llm.scoring import greedy_generate, score_answers
from allmrec.llm.splice import splice, tokenize_answers
from allmrec.recommend.matching import extract_answer, match_candidates, normalize_title
from allmrec.utils.seed import rng

MODES = ("rank", "generate", "both")


class SoftTokenSource(Protocol):
    """Anything that returns the soft vectors of a batch of prompts (in order of appearance)."""

    def soft_vectors(self, prompts: Sequence[Prompt], users: Sequence[int], histories: Sequence[Sequence[int]]) -> torch.Tensor: ...


@dataclass
class ProjectedSoftTokens:
    """A-LLMRec's soft tokens: ``F_U(x^u)`` with ``x^u`` from the frozen CF model, ``F_I(e_i)``."""

    stage2: Stage2Model
    joint_items: torch.Tensor
    cf_model: nn.Module | None = None
    cf_batch_size: int = 256

    def soft_vectors(self, prompts: Sequence[Prompt], users: Sequence[int], histories: Sequence[Sequence[int]]) -> torch.Tensor:
        needs_user = any(t.kind == "user" for p in prompts for t in p.soft_tokens)
        x_u = None
        if needs_user:
            if self.cf_model is None:
                raise ValueError("the prompts have a user soft token but no CF model was given")
            x_u = user_representations(self.cf_model, list(users), list(histories), self.cf_batch_size)
        return self.stage2.soft_vectors(prompts, x_u, self.joint_items.to(self.stage2.device))

    @property
    def listwise(self) -> bool:
        return self.stage2.head is not None

    def listwise_scores(self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], users: Sequence[int], histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Head scores ``(B, C)`` of a listwise stage-2 model (candidates in display order)."""
        if self.cf_model is None:
            raise ValueError("a listwise stage-2 model needs the CF model (user token and residual score)")
        x_u = user_representations(self.cf_model, list(users), list(histories), self.cf_batch_size)
        shown = np.asarray([p.candidates for p in prompts], dtype=np.int64)
        cf = cf_candidate_scores(self.cf_model, list(users), list(histories), shown, self.cf_batch_size) if self.stage2.residual else None
        return self.stage2.listwise_scores(llm, tokenizer, prompts, x_u, self.joint_items.to(self.stage2.device), cf)


@dataclass
class InferenceConfig:
    """Options of :func:`evaluate_llm`, :func:`rank_candidates`, :func:`generate_recommendations`.

    Parameters
    ----------
    mode : str
        ``rank``, ``generate`` or ``both`` (evaluate_llm).
    batch_size : int
        Prompts per forward; 0 = automatic (1 on CPU, where batching only adds padding, 8 on
        CUDA).
    length_normalize : bool
        Rank by mean instead of summed token log-probability.
    max_new_tokens : int
        Generation budget; 0: the longest candidate answer of the prompt + 4 tokens.
    seed : int
        Seeds the candidate order shown in each user's prompt.
    progress : bool
        tqdm bar over batches.
    """

    mode: str = "rank"
    batch_size: int = 0
    length_normalize: bool = False
    max_new_tokens: int = 0
    seed: int = 42
    progress: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"InferenceConfig.mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.batch_size < 0:
            raise ValueError(f"InferenceConfig.batch_size must be >= 0, got {self.batch_size}")


def _prompt_config(prompt: PromptConfig | None, source: Any) -> PromptConfig:
    if prompt is not None:
        return prompt
    stage2 = getattr(source, "stage2", None)
    if isinstance(stage2, Stage2Model):
        return stage2.prompt_config()
    return PromptConfig(style="text")


def answer_complete(text: str) -> bool:
    """Nothing after this point can change :func:`extract_answer`'s result: a quoted span is
    closed, or the first non-empty line has ended."""
    return text.count('"') >= 2 or "\n" in text.strip()


def display_order(candidates: Sequence[int], seed: int, key: Any) -> np.ndarray:
    """The seeded permutation used to show ``candidates`` in a prompt (``shown = cands[perm]``)."""
    return rng(seed, "prompt-order", str(key)).permutation(len(candidates))


@torch.no_grad()
def _run(
    llm: nn.Module,
    tokenizer: Any,
    titles: Sequence[str],
    histories: Sequence[Sequence[int]],
    candidates: np.ndarray,
    users: Sequence[int],
    keys: Sequence[Any],
    wording: dict[str, str] | None,
    prompt: PromptConfig,
    source: SoftTokenSource | None,
    config: InferenceConfig,
    rank: bool,
    generate: bool,
    shown_titles: Sequence[str] | None = None,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    if prompt.style == "soft" and source is None:
        raise ValueError("the 'soft' prompt style needs soft tokens (a stage-2 model); use PromptConfig(style='text') for LLM-Only")
    candidates = np.asarray(candidates, dtype=np.int64)
    n, n_cand = candidates.shape
    if shown_titles is None:
        shown_titles = display_titles(titles, tokenizer, prompt.max_title_tokens)
    listwise = bool(getattr(source, "listwise", False)) and prompt.style == "soft"
    if listwise and generate:
        raise ValueError("this stage-2 model was trained with the listwise objective: it ranks candidates (mode 'rank') but was not trained to generate titles")
    embedding = llm.get_input_embeddings()
    batch_size = config.batch_size or (8 if embedding.weight.device.type == "cuda" else 1)
    perms = np.stack([display_order(candidates[i], config.seed, keys[i]) for i in range(n)]) if n else np.zeros((0, n_cand), np.int64)
    scores = np.full((n, n_cand), np.nan)
    texts: list[str] = [""] * n
    was_training = llm.training
    llm.eval()
    starts = range(0, n, batch_size)
    for s in tqdm(starts, desc="LLM inference", disable=not config.progress, dynamic_ncols=True):
        rows = list(range(s, min(n, s + batch_size)))
        shown = [candidates[r][perms[r]] for r in rows]
        prompts = [build_prompt(histories[r], shown[k], shown_titles, wording, prompt) for k, r in enumerate(rows)]
        if listwise:
            sc = source.listwise_scores(llm, tokenizer, prompts, [users[r] for r in rows], [histories[r] for r in rows]).float().cpu().numpy()
            for k, r in enumerate(rows):
                scores[r, perms[r]] = sc[k]
            continue
        soft = source.soft_vectors(prompts, [users[r] for r in rows], [histories[r] for r in rows]) if source is not None and prompt.style == "soft" else None
        batch = splice(prompts, tokenizer, embedding, soft, padding_side="left")
        answers = [tokenize_answers(p.answers, tokenizer, add_eos=True) for p in prompts]
        if rank:
            sc = score_answers(llm, batch, answers, tokenizer.pad_token_id, config.length_normalize).cpu().numpy()
            for k, r in enumerate(rows):
                scores[r, perms[r]] = sc[k]
        if generate:
            budget = config.max_new_tokens or (max(len(a) for row in answers for a in row) + 4)
            out = greedy_generate(llm, batch, budget, tokenizer.eos_token_id, stop=lambda ids: answer_complete(tokenizer.decode(ids, skip_special_tokens=True)))
            for k, r in enumerate(rows):
                texts[r] = tokenizer.decode(out[k], skip_special_tokens=True)
    llm.train(was_training)
    return {"scores": scores, "texts": texts, "perms": perms, "titles": shown_titles}


def _source(stage2: Stage2Model | None, cf_model: nn.Module | None, joint_items: torch.Tensor | None, source: SoftTokenSource | None) -> SoftTokenSource | None:
    if source is not None:
        return source
    if stage2 is None:
        return None
    if joint_items is None:
        raise ValueError("a stage-2 model needs joint_items (the (n_items + 1, d') joint embedding table)")
    return ProjectedSoftTokens(stage2, joint_items, cf_model)


def rank_candidates(
    llm: nn.Module,
    tokenizer: Any,
    titles: Sequence[str],
    histories: Sequence[Sequence[int]],
    candidates: np.ndarray,
    users: Sequence[int] | None = None,
    *,
    stage2: Stage2Model | None = None,
    cf_model: nn.Module | None = None,
    joint_items: torch.Tensor | None = None,
    source: SoftTokenSource | None = None,
    wording: dict[str, str] | None = None,
    prompt: PromptConfig | None = None,
    config: InferenceConfig | None = None,
    shown_titles: Sequence[str] | None = None,
) -> np.ndarray:
    """Log-likelihood scores ``(N, C)`` of ``candidates`` ``(N, C)`` (same column order as given).

    Parameters
    ----------
    titles : raw item titles by item id (index 0 = padding), e.g. ``dataset.titles``.
    histories : per row, the user's items, oldest first.
    candidates : (N, C) int array; shown to the LLM in a seeded random order per row.
    users : user ids (for the CF model and the candidate order; default ``0..N-1``).
    stage2, cf_model, joint_items : A-LLMRec's soft tokens (omit all three for LLM-Only).
    source : a custom :class:`SoftTokenSource` instead of ``stage2``/``cf_model``/``joint_items``.
    prompt : PromptConfig; default: the stage-2 model's, or the ``"text"`` style without one.
    shown_titles : titles already cut by :func:`allmrec.llm.prompt.display_titles` with
        ``prompt.max_title_tokens`` (saves re-tokenizing the catalogue on every call).
    """
    config = config or InferenceConfig()
    src = _source(stage2, cf_model, joint_items, source)
    users = list(range(len(histories))) if users is None else list(users)
    out = _run(llm, tokenizer, titles, histories, candidates, users, users, wording, _prompt_config(prompt, src), src, config, True, False, shown_titles)
    return out["scores"]


def generate_recommendations(
    llm: nn.Module,
    tokenizer: Any,
    titles: Sequence[str],
    histories: Sequence[Sequence[int]],
    candidates: np.ndarray,
    users: Sequence[int] | None = None,
    *,
    stage2: Stage2Model | None = None,
    cf_model: nn.Module | None = None,
    joint_items: torch.Tensor | None = None,
    source: SoftTokenSource | None = None,
    wording: dict[str, str] | None = None,
    prompt: PromptConfig | None = None,
    config: InferenceConfig | None = None,
    shown_titles: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Greedy answers matched to candidates; per row ``{"generated", "answer", "matched"}``.

    ``matched`` is the first candidate (in prompt order) whose normalised title equals the
    normalised answer, or ``None``. Arguments as in :func:`rank_candidates`.
    """
    config = config or InferenceConfig()
    src = _source(stage2, cf_model, joint_items, source)
    users = list(range(len(histories))) if users is None else list(users)
    out = _run(llm, tokenizer, titles, histories, candidates, users, users, wording, _prompt_config(prompt, src), src, config, False, True, shown_titles)
    results = []
    for i, text in enumerate(out["texts"]):
        shown = np.asarray(candidates[i])[out["perms"][i]]
        answer = extract_answer(text)
        matched = match_candidates(answer, shown, out["titles"])
        results.append({"generated": text, "answer": answer, "matched": matched[0] if matched else None})
    return results


def evaluate_llm(
    dataset: SequenceDataset,
    llm: nn.Module,
    tokenizer: Any,
    split: str = "test",
    users: Sequence[int] | None = None,
    *,
    stage2: Stage2Model | None = None,
    cf_model: nn.Module | None = None,
    joint_items: torch.Tensor | None = None,
    source: SoftTokenSource | None = None,
    prompt: PromptConfig | None = None,
    config: InferenceConfig | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score an LLM recommender on the stored candidates of ``split``.

    History = the items before the split's target (``dataset.history``); candidates =
    ``dataset.candidates(split)`` (column 0 = truth), shown in a per-user seeded order.

    Returns
    -------
    (metrics, outputs)
        ``metrics``: for ``rank``: ``hit@1/5/10``, ``ndcg@1/5/10``, ``mrr``, ``users``; for
        ``generate``: ``gen_hit@1`` (exact match of the normalised answer to the target's title)
        and ``gen_no_match`` (share of answers matching no candidate); ``both``: all of them.
        ``outputs``: one dict per user (``user``, ``target``, ``shown`` candidate order, and
        ``rank``/``scores`` and/or ``generated``/``answer``/``matched``/``gen_hit``).
    """
    config = config or InferenceConfig()
    src = _source(stage2, cf_model, joint_items, source)
    all_cands = dataset.candidates(split)
    users = np.arange(dataset.n_users) if users is None else np.asarray(users, dtype=np.int64)
    histories = [dataset.history(int(u), split) for u in users]
    cands = all_cands[users]
    keys = [f"{split}:{int(u)}" for u in users]
    do_rank, do_gen = config.mode in ("rank", "both"), config.mode in ("generate", "both")
    pcfg = _prompt_config(prompt, src)
    out = _run(llm, tokenizer, dataset.titles, histories, cands, [int(u) for u in users], keys, dataset.wording, pcfg, src, config, do_rank, do_gen)
    metrics: dict[str, float] = {"users": float(len(users))}
    outputs: list[dict[str, Any]] = []
    ranks = target_ranks(out["scores"]) if do_rank and len(users) else None
    if ranks is not None:
        metrics.update(ranking_metrics(ranks))
    gen_hits, no_match = [], []
    for i, u in enumerate(users):
        shown = cands[i][out["perms"][i]]
        row: dict[str, Any] = {"user": int(u), "target": int(cands[i][0]), "shown": [int(c) for c in shown]}
        if ranks is not None:
            row.update(rank=int(ranks[i]), scores=[float(x) for x in out["scores"][i]])
        if do_gen:
            answer = extract_answer(out["texts"][i])
            matched = match_candidates(answer, shown, out["titles"])
            hit = bool(normalize_title(answer)) and normalize_title(answer) == normalize_title(out["titles"][cands[i][0]])
            row.update(generated=out["texts"][i], answer=answer, matched=matched[0] if matched else None, gen_hit=hit)
            gen_hits.append(hit)
            no_match.append(not matched)
        outputs.append(row)
    if do_gen and len(users):
        metrics["gen_hit@1"] = float(np.mean(gen_hits))
        metrics["gen_no_match"] = float(np.mean(no_match))
    return metrics, outputs

