"""The A-LLMRec prompt (paper Figure 3) as text parts and soft-token slots.

A :class:`Prompt` is a list of parts: strings, and :class:`SoftToken` slots that
:mod:`allmrec.llm.splice` fills with projected vectors through ``inputs_embeds``. Styles:

* ``"soft"`` (A-LLMRec)::

    [UserRep] is a user representation. This user has bought "t1"[ItemEmb], "t2"[ItemEmb] in
    the past. Recommend a item for this user to buy next from the following set of item titles,
    "c1"[ItemEmb], ... . The recommendation is

  target: `` "title"`` followed by the EOS token.
* ``"text"`` (LLM-Only, TALLRec): the same sentences with no soft tokens at all.

Nouns and verbs come from ``dataset.wording`` (keys ``item``, ``items``, ``verb_past``,
``verb_next``); nothing here branches on a dataset's name. Titles are shown in double quotes
(as the authors' code does), so a title's end is unambiguous; double quotes inside a title become
single quotes. Titles are cut to ``max_title_tokens`` tokens (:func:`display_titles`); the target
and the candidate continuations use the same cut titles, so the model can reproduce them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from allmrec.data.config import DEFAULT_WORDING  # the dataset's wording defaults (one definition)
from allmrec.utils.seed import rng

STYLES = ("soft", "text")
USER_MARK = "[UserRep]"
ITEM_MARK = "[ItemEmb]"


@dataclass(frozen=True)
class SoftToken:
    """A slot filled by one projected vector: the user's ``O_u`` or item ``item``'s ``O_i``."""

    kind: str  # "user" | "item"
    item: int = 0


@dataclass
class PromptConfig:
    """How prompts are written (shared by stage-2 training and inference).

    Parameters
    ----------
    style : str
        ``"soft"`` (user + item soft tokens, A-LLMRec) or ``"text"`` (no soft tokens).
    history_len : int
        Most recent history items shown (paper: 10).
    max_title_tokens : int
        Titles are cut to this many LLM tokens (0: never cut).
    item_token : str
        ``"after"`` (paper: the item soft token follows its title) or ``"before"``.
    user_token : bool
        Put the user soft token (and its sentence) first; ``False`` for the "w/o user
        representation" ablation. Ignored by the ``"text"`` style.
    """

    style: str = "soft"
    history_len: int = 10
    max_title_tokens: int = 16
    item_token: str = "after"
    user_token: bool = True

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"PromptConfig.style: expected one of {', '.join(STYLES)}, got {self.style!r}")
        if self.item_token not in ("after", "before"):
            raise ValueError(f"PromptConfig.item_token: expected 'after' or 'before', got {self.item_token!r}")
        if self.history_len < 1:
            raise ValueError(f"PromptConfig.history_len must be >= 1, got {self.history_len}")
        if self.max_title_tokens < 0:
            raise ValueError(f"PromptConfig.max_title_tokens must be >= 0, got {self.max_title_tokens}")


@dataclass
class Prompt:
    """One prompt: ``parts`` in order, the candidates as shown, and the expected answer.

    ``answers[j]`` is the text the model should produce if candidate ``candidates[j]`` is the
    recommendation (EOS excluded); ``target`` is the answer for ``target_item`` (or ``None``).
    """

    parts: list[str | SoftToken]
    candidates: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    target_item: int | None = None
    target: str | None = None

    @property
    def soft_tokens(self) -> list[SoftToken]:
        return [p for p in self.parts if isinstance(p, SoftToken)]

    def render(self) -> str:
        """The prompt as text with ``[UserRep]`` / ``[ItemEmb]`` marks (for logs and reports)."""
        return "".join(p if isinstance(p, str) else (USER_MARK if p.kind == "user" else ITEM_MARK) for p in self.parts)


def wording_of(wording: dict[str, str] | None) -> dict[str, str]:
    """``wording`` completed with the defaults (item/items/bought/buy)."""
    return {**DEFAULT_WORDING, **(wording or {})}


def clean_title(title: str) -> str:
    return " ".join(str(title).replace('"', "'").split())


def display_titles(titles: Sequence[str], tokenizer: Any, max_tokens: int) -> list[str]:
    """Titles as shown in prompts: cleaned and cut to ``max_tokens`` tokens of ``tokenizer``.

    Cutting is done on the tokens of the title alone, then decoded back to text; 0 = no cut.
    """
    cleaned = [clean_title(t) for t in titles]
    if max_tokens <= 0:
        return cleaned
    ids = tokenizer(cleaned, add_special_tokens=False)["input_ids"]
    out = []
    for text, toks in zip(cleaned, ids):
        out.append(text if len(toks) <= max_tokens else tokenizer.decode(toks[:max_tokens]).strip())
    return out


def answer_text(title: str) -> str:
    """The continuation the model produces for an item: a space, then the quoted title."""
    return f' "{title}"'


def append_text(parts: list[str | SoftToken], text: str) -> None:
    """Append ``text`` to ``parts``, merged into the last part when that is text too."""
    if parts and isinstance(parts[-1], str):
        parts[-1] += text
    else:
        parts.append(text)


def append_items(parts: list[str | SoftToken], items: Sequence[int], titles: Sequence[str], config: PromptConfig) -> None:
    """Append ``items`` as a comma-separated list of quoted titles, each with its item soft token
    (``config.item_token`` side) in the ``"soft"`` style."""
    for k, item in enumerate(items):
        sep = " " if k == 0 else ", "
        title = f'"{titles[item]}"'
        if config.style != "soft":
            append_text(parts, sep + title)
        elif config.item_token == "after":
            append_text(parts, sep + title)
            parts.append(SoftToken("item", int(item)))
        else:
            append_text(parts, sep)
            parts.append(SoftToken("item", int(item)))
            append_text(parts, title)


def history_parts(history: Sequence[int], titles: Sequence[str], wording: dict[str, str] | None = None, config: PromptConfig | None = None) -> list[str | SoftToken]:
    """The opening every prompt shares: the user soft token and its sentence (``"soft"`` style
    with ``user_token``), then "This user has <verb_past> <last history_len titles> in the past."

    Prompts for other questions (e.g. :mod:`allmrec.experiment.genres`) continue from these parts with
    :func:`append_text`, so they show the history exactly as :func:`build_prompt` does.
    """
    config = config or PromptConfig()
    w = wording_of(wording)
    history = [int(i) for i in history][-config.history_len :]
    parts: list[str | SoftToken] = []
    if config.style == "soft" and config.user_token:
        parts.append(SoftToken("user"))
        append_text(parts, " is a user representation. ")
    if history:
        append_text(parts, f"This user has {w['verb_past']}")
        append_items(parts, history, titles, config)
        append_text(parts, " in the past.")
    else:
        append_text(parts, f"This user has not {w['verb_past']} any {w['items']} yet.")
    return parts


def build_prompt(
    history: Sequence[int],
    candidates: Sequence[int],
    titles: Sequence[str],
    wording: dict[str, str] | None = None,
    config: PromptConfig | None = None,
    target_item: int | None = None,
) -> Prompt:
    """Build one Figure-3 prompt.

    Parameters
    ----------
    history : sequence of int
        The user's items, oldest first; the last ``config.history_len`` are shown.
    candidates : sequence of int
        Candidate items in the order they are shown (shuffle them first, see
        :func:`shuffled_candidates`).
    titles : sequence of str
        Display title per item id (index 0 = padding), e.g. from :func:`display_titles`.
    wording : dict, optional
        ``item``, ``items``, ``verb_past``, ``verb_next`` (defaults: item/items/bought/buy).
    config : PromptConfig, optional
    target_item : int, optional
        The item to recommend; sets ``Prompt.target`` (training).
    """
    config = config or PromptConfig()
    w = wording_of(wording)
    candidates = [int(i) for i in candidates]
    parts = history_parts(history, titles, wording, config)
    append_text(parts, f" Recommend a {w['item']} for this user to {w['verb_next']} next from the following set of {w['item']} titles,")
    append_items(parts, candidates, titles, config)
    append_text(parts, ". The recommendation is")
    answers = [answer_text(titles[c]) for c in candidates]
    target = answer_text(titles[target_item]) if target_item is not None else None
    return Prompt(parts=parts, candidates=candidates, answers=answers, target_item=target_item, target=target)


def display_order(candidates: Sequence[int], seed: int, key: Any) -> np.ndarray:
    """The seeded permutation that shows ``candidates`` in a prompt (``shown = cands[perm]``);
    ``key`` names the row (``"<split>:<user>"``), so every method shows a user's candidates alike."""
    return rng(seed, "prompt-order", str(key)).permutation(len(candidates))


def shuffled_candidates(candidates: Sequence[int], gen: np.random.Generator) -> list[int]:
    """``candidates`` in a random (seeded) order: prompts must not reveal the truth's position."""
    arr = np.asarray(candidates, dtype=np.int64)
    return [int(i) for i in arr[gen.permutation(len(arr))]]


def build_prompts(
    histories: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    titles: Sequence[str],
    wording: dict[str, str] | None = None,
    config: PromptConfig | None = None,
    targets: Sequence[int] | None = None,
) -> list[Prompt]:
    """:func:`build_prompt` for a batch (candidates already in display order)."""
    targets = targets if targets is not None else [None] * len(histories)
    return [build_prompt(h, c, titles, wording, config, t) for h, c, t in zip(histories, candidates, targets)]
