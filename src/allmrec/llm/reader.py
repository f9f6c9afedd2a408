"""The frozen LLM reading recommendation prompts for a catalogue: scores for every candidate, or
a generated answer matched to one.

Two ways to read the LLM's choice, both on the same prompt (candidates shown in a seeded random
order per row, :func:`allmrec.llm.prompt.display_order` keyed by the row's query key):

* ``score``: the log-likelihood of each candidate's answer (`` "title"`` + EOS) given the prompt,
  with the prompt run once and its key/value cache reused for all candidates
  (:func:`allmrec.llm.scoring.score_answers`); or, when the soft-token source is a listwise
  stage-2 model, its head's scores.
* ``generate``: greedy decoding; the answer is normalised and matched *exactly* to the candidate
  titles (:mod:`allmrec.llm.matching`).

Soft tokens come from a :class:`SoftTokenSource` (a trained stage 2:
:class:`allmrec.align.stage2.scoring.Stage2Scorer`); with none and the ``"text"`` prompt style
this is the LLM-Only baseline (and TALLRec with its LoRA model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from allmrec.data.queries import Queries
from allmrec.llm.matching import extract_answer, match_candidates
from allmrec.llm.prompt import Prompt, PromptConfig, build_prompt, display_order, display_titles
from allmrec.llm.scoring import greedy_generate, score_answers
from allmrec.llm.splice import splice, tokenize_answers
from allmrec.utils.progress import progress_bar


class SoftTokenSource(Protocol):
    """What fills a prompt's soft tokens (and, for a listwise model, scores its candidates)."""

    listwise: bool

    def soft_vectors(self, prompts: Sequence[Prompt], users: Sequence[int], histories: Sequence[Sequence[int]]) -> torch.Tensor: ...

    def listwise_scores(self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], users: Sequence[int],
                        histories: Sequence[Sequence[int]]) -> torch.Tensor: ...


def answer_complete(text: str) -> bool:
    """Nothing after this point can change :func:`extract_answer`'s result: a quoted span is
    closed, or the first non-empty line has ended."""
    return text.count('"') >= 2 or "\n" in text.strip()


@dataclass
class PromptReader:
    """The frozen LLM with a prompt style over a catalogue.

    Parameters
    ----------
    llm, tokenizer : the frozen LLM (:func:`allmrec.llm.load_llm`).
    titles : raw item titles by item id (index 0 = padding), e.g. ``dataset.titles``.
    wording : prompt nouns/verbs (``dataset.wording``).
    prompt : the prompt settings (a stage-2 model's, or the ``"text"`` style).
    source : the soft tokens (required by the ``"soft"`` style).
    seed : seeds the candidate order shown in each row's prompt.
    batch_size : prompts per forward; 0 = automatic (1 on CPU, 8 on CUDA). Rows are batched in
        order of their prompt's length (titles' token counts), so a batch carries little padding.
    length_normalize : rank by mean instead of summed token log-probability.
    max_new_tokens : generation budget; 0: the longest candidate answer of the prompt + 4 tokens.
    progress : a progress bar over batches.
    """

    llm: nn.Module
    tokenizer: Any
    titles: Sequence[str]
    wording: dict[str, str] | None = None
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(style="text"))
    source: SoftTokenSource | None = None
    seed: int = 42
    batch_size: int = 0
    length_normalize: bool = False
    max_new_tokens: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.prompt.style == "soft" and self.source is None:
            raise ValueError("the 'soft' prompt style needs soft tokens (a stage-2 model); use PromptConfig(style='text') for LLM-Only")
        self.shown_titles = display_titles(self.titles, self.tokenizer, self.prompt.max_title_tokens)

    def add_titles(self, titles: Sequence[str]) -> None:
        """Show new items (ids after the current ones) by these titles."""
        self.shown_titles.extend(display_titles(list(titles), self.tokenizer, self.prompt.max_title_tokens))
        self.__dict__.pop("_title_tokens", None)  # recounted at the next batch plan

    @property
    def listwise(self) -> bool:
        return bool(getattr(self.source, "listwise", False)) and self.prompt.style == "soft"

    def shown(self, queries: Queries) -> tuple[np.ndarray, np.ndarray]:
        """``(perms, shown)``: each row's display permutation and its candidates in that order."""
        perms = np.stack([display_order(queries.candidates[i], self.seed, queries.keys[i]) for i in range(len(queries))]) \
            if len(queries) else np.zeros((0, queries.candidates.shape[1]), np.int64)
        return perms, np.take_along_axis(queries.candidates, perms, 1)

    def prompts(self, queries: Queries, shown: np.ndarray, rows: Sequence[int]) -> list[Prompt]:
        return [build_prompt(queries.histories[r], shown[r], self.shown_titles, self.wording, self.prompt) for r in rows]

    def _batches(self, queries: Queries, desc: str):
        """Row indices per forward: one row at a time, or rows of similar prompt length."""
        n = len(queries)
        size = self.batch_size or (8 if self.llm.get_input_embeddings().weight.device.type == "cuda" else 1)
        order = np.argsort(self._prompt_lengths(queries), kind="stable") if size > 1 else np.arange(n)
        for s in progress_bar(iterable=range(0, n, size), desc=desc, disable=not self.progress):
            yield [int(r) for r in order[s : s + size]]

    def _prompt_lengths(self, queries: Queries) -> np.ndarray:
        """Each row's prompt length up to a constant: the token counts of the titles it shows."""
        if not hasattr(self, "_title_tokens"):
            ids = self.tokenizer(list(self.shown_titles), add_special_tokens=False)["input_ids"]
            self._title_tokens = np.array([len(t) for t in ids], dtype=np.int64)
        k = self.prompt.history_len
        return np.array([self._title_tokens[np.asarray(h[-k:], dtype=np.int64)].sum() + self._title_tokens[c].sum()
                         for h, c in zip(queries.histories, queries.candidates)])

    def _spliced(self, queries: Queries, prompts: list[Prompt], rows: list[int]):
        users, hists = [int(queries.users[r]) for r in rows], [queries.histories[r] for r in rows]
        soft = self.source.soft_vectors(prompts, users, hists) if self.source is not None and self.prompt.style == "soft" else None
        return splice(prompts, self.tokenizer, self.llm.get_input_embeddings(), soft, padding_side="left")

    @torch.no_grad()
    def score(self, queries: Queries) -> np.ndarray:
        """Scores ``(N, C)`` of each row's candidates, in the queries' column order."""
        perms, shown = self.shown(queries)
        scores = np.full(queries.candidates.shape, np.nan)
        was_training = self.llm.training
        self.llm.eval()
        for rows in self._batches(queries, "LLM inference"):
            prompts = self.prompts(queries, shown, rows)
            if self.listwise:
                users, hists = [int(queries.users[r]) for r in rows], [queries.histories[r] for r in rows]
                sc = self.source.listwise_scores(self.llm, self.tokenizer, prompts, users, hists).float().cpu().numpy()
            else:
                answers = [tokenize_answers(p.answers, self.tokenizer, add_eos=True) for p in prompts]
                batch = self._spliced(queries, prompts, rows)
                sc = score_answers(self.llm, batch, answers, self.tokenizer.pad_token_id, self.length_normalize).cpu().numpy()
            for k, r in enumerate(rows):
                scores[r, perms[r]] = sc[k]
        self.llm.train(was_training)
        return scores

    @torch.no_grad()
    def generate(self, queries: Queries) -> list[dict[str, Any]]:
        """Greedy answers matched to candidates; per row ``{"generated", "answer", "matched"}``
        (``matched``: the first candidate, in prompt order, whose normalised title equals the
        normalised answer, or ``None``)."""
        if self.listwise:
            raise ValueError("this stage-2 model was trained with the listwise objective: it ranks candidates (mode 'rank') but was not trained to generate titles")
        perms, shown = self.shown(queries)
        out: list[dict[str, Any]] = [{} for _ in range(len(queries))]
        was_training = self.llm.training
        self.llm.eval()
        for rows in self._batches(queries, "LLM generation"):
            prompts = self.prompts(queries, shown, rows)
            answers = [tokenize_answers(p.answers, self.tokenizer, add_eos=True) for p in prompts]
            budget = self.max_new_tokens or (max(len(a) for row in answers for a in row) + 4)
            stop = lambda ids: answer_complete(self.tokenizer.decode(ids, skip_special_tokens=True))  # noqa: E731
            tokens = greedy_generate(self.llm, self._spliced(queries, prompts, rows), budget, self.tokenizer.eos_token_id, stop=stop)
            for k, r in enumerate(rows):
                text = self.tokenizer.decode(tokens[k], skip_special_tokens=True)
                answer = extract_answer(text)
                matched = match_candidates(answer, shown[r], self.shown_titles)
                out[r] = {"generated": text, "answer": answer, "matched": matched[0] if matched else None}
        self.llm.train(was_training)
        return out
