"""Favourite-genre generation (paper Section 5.4.4, Figure 4): can the LLM *talk* about a user?

The frozen LLM is asked for a user's favourite genres twice on the same sentences:

* A-LLMRec (``stage2`` given): the user soft token, then the history titles each followed by its
  item soft token (the stage-2 model's prompt settings), then the question;
* LLM-Only (``stage2=None``): the same sentences as plain text, no soft tokens.

Prompt (``"soft"`` style, ml-100k wording)::

    [UserRep] is a user representation. This user has watched "t1"[ItemEmb], ... in the past.
    The genres are Drama, Action, .... This user's three favourite genres are

The answer (greedy, until ``k`` genres are named or the sentence naming them ends) is parsed
into known genre names in order of first appearance. The paper only shows examples; here the answer is scored:

* truth: the ``k`` genres the user watched most in the history before the test item (all of
  it, not just the ``history_len`` titles shown), ties broken by global frequency, then name;
* ``precision@k``: share of the first ``k`` parsed genres that are in the truth (divided by
  ``k``, so a short answer scores less);
* ``coverage``: share of answers naming at least one known genre;
* ``popularity_precision@k``: the same score for the ``k`` globally most watched genres, the
  trivial answer the LLM has to beat;
* ``copied_list@k``: share of answers whose first ``k`` genres are exactly the first ``k``
  offered, in order (a small LLM copying the list rather than answering).

Choices the paper leaves open: genre frequency ("global") counts interactions in the training
part of the training users (no validation/test item is counted); genres named ``unknown`` or
``(no genres listed)`` are not genres; the genre list is offered in a seeded random order per
user (``shuffle_genres``; the same order for both prompts). Unshuffled, the list is most watched
first, so an LLM that copies it scores exactly the popularity baseline: the bundled SmolLM2
(LLM-Only, ml-100k users 0-99) copied the first three genres in 100% of answers unshuffled
(precision@3 0.737 = popularity) and in 62% shuffled (precision@3 0.13).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from allmrec.data.dataset import SequenceDataset
from allmrec.llm.prompt import Prompt, PromptConfig, append_text, display_titles, history_parts, wording_of
from allmrec.llm.scoring import greedy_generate
from allmrec.llm.splice import splice
from allmrec.utils.seed import rng

NOT_GENRES = frozenset({"", "unknown", "(no genres listed)"})
# The question after the history; {genres}: the offered list, {n}: k in words, {item}/{items}: the
# dataset's nouns. A statement the LLM completes (as "The recommendation is" in Figure 3): with the
# bundled SmolLM2 (LLM-Only, first 20 ml-100k users) the question form "What are this user's three
# favourite genres among: ...? The three favourite genres are" got no genre at all in 16 answers
# (":\n\nA:"), this form named genres in all 20.
DEFAULT_QUESTION = " The genres are {genres}. This user's {n} favourite genres are"
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
# Extra spellings of genres whose canonical name an LLM often writes differently.
ALIASES = {"sci-fi": ("science fiction", "science-fiction", "scifi"), "film-noir": ("noir",), "children's": ("kids", "children")}


@dataclass
class GenreConfig:
    """Settings of the favourite-genre experiment.

    Parameters
    ----------
    k : int
        Genres asked for and scored (precision@k).
    field : str
        Item field holding each item's genres as a comma-separated string (``dataset.item_fields``).
    history_len : int
        Most recent history titles shown (paper: 10). The truth uses the whole history.
    max_title_tokens : int
        Titles cut to this many LLM tokens (0: never cut).
    max_new_tokens : int
        Generation budget; decoding stops earlier once ``k`` genres are named or the sentence
        naming them ends (:func:`answer_done`).
    seed : int
        Seeds the order in which the genres are offered.
    shuffle_genres : bool
        Offer the genres in a seeded random order per user (``False``: most watched first).
    batch_size : int
        Prompts per generation batch (0: 8 on CUDA, 1 on CPU).
    question : str
        The text after the history (:data:`DEFAULT_QUESTION`; placeholders ``{genres}``, ``{n}``,
        ``{item}``, ``{items}``).
    """

    k: int = 3
    field: str = "genres"
    history_len: int = 10
    max_title_tokens: int = 16
    max_new_tokens: int = 24
    seed: int = 42
    shuffle_genres: bool = True
    batch_size: int = 0
    question: str = DEFAULT_QUESTION

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"GenreConfig.k must be >= 1, got {self.k}")
        if self.history_len < 1:
            raise ValueError(f"GenreConfig.history_len must be >= 1, got {self.history_len}")
        if self.max_new_tokens < 1:
            raise ValueError(f"GenreConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 0:
            raise ValueError(f"GenreConfig.batch_size must be >= 0, got {self.batch_size}")


# ---- genres of items and users ------------------------------------------------------------------
def split_genres(value: str) -> list[str]:
    """``"Animation, Children's, Comedy"`` -> ``["Animation", "Children's", "Comedy"]`` (``|`` also
    separates; placeholders such as ``unknown`` dropped, duplicates removed)."""
    out: list[str] = []
    for g in re.split(r"[,|]", str(value or "")):
        g = " ".join(g.split())
        if g.lower() not in NOT_GENRES and g not in out:
            out.append(g)
    return out


def item_genres(dataset: SequenceDataset, field: str = "genres") -> list[list[str]]:
    """Per item id (row 0 = padding, empty), its genres from ``dataset.item_fields[field]``."""
    values = dataset.item_fields.get(field)
    if values is None:
        have = ", ".join(sorted(dataset.item_fields)) or "none"
        raise ValueError(
            f"dataset {dataset.name!r} has no item field {field!r} (item fields: {have}); favourite-genre generation needs "
            f"per-item genres, e.g. ml-100k's 'genres' (GenreConfig.field names the field)"
        )
    if len(values) != dataset.n_items + 1:
        raise ValueError(f"dataset {dataset.name!r}: item field {field!r} has {len(values)} rows, expected n_items + 1 = {dataset.n_items + 1}")
    out = [split_genres(v) for v in values]
    out[0] = []
    if not any(out):
        raise ValueError(f"dataset {dataset.name!r}: item field {field!r} names no genre for any item")
    return out


def global_genre_counts(dataset: SequenceDataset, genres_of: Sequence[Sequence[str]]) -> dict[str, int]:
    """Interactions per genre over the training part of the training users (every known genre,
    zero included), most watched first, ties by name."""
    counts: Counter[str] = Counter({g: 0 for gs in genres_of for g in gs})
    for item, n in enumerate(dataset.train_item_counts()):
        for g in genres_of[item]:
            counts[g] += int(n)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def top_genres(history: Sequence[int], genres_of: Sequence[Sequence[str]], k: int, global_counts: dict[str, int]) -> list[str]:
    """The ``k`` genres most frequent in ``history`` (each watch counts once per genre of the
    item); ties broken by ``global_counts`` (higher first), then name. Fewer than ``k`` when the
    history has fewer genres."""
    counts = Counter(g for item in history for g in genres_of[int(item)])
    ranked = sorted(counts, key=lambda g: (-counts[g], -global_counts.get(g, 0), g))
    return ranked[:k]


# ---- parsing and scoring ------------------------------------------------------------------------
def _spellings(genre: str) -> list[str]:
    """Regex spellings of one genre: case-free, any of space/hyphen/nothing between its words,
    the apostrophe optional, plural forms; plus :data:`ALIASES`."""
    name = genre.lower()
    words = [re.escape(w).replace("'", "['\u2019]?") for w in re.split(r"[\s\-_/]+", name) if w]
    if not words:
        return []
    last = words[-1]
    # Plurals ("comedies", "thrillers"); not for very short names ("War" must not match "Star Wars").
    if len(name) > 3:
        last = last[:-1] + "(?:y|ies)" if last.endswith("y") else last + "(?:e?s)?"
    body = r"[\s\-]?".join(words[:-1] + [last])
    return [body] + [_spellings_plain(a) for a in ALIASES.get(name, ())]


def _spellings_plain(alias: str) -> str:
    return r"[\s\-]?".join(re.escape(w) for w in re.split(r"[\s\-]+", alias.lower()) if w)


def genre_matcher(genres: Sequence[str]) -> tuple[re.Pattern[str], list[str]]:
    """One regex with a named group per genre (longer spellings tried first) and the group order."""
    order = list(dict.fromkeys(genres))
    alts = []
    for j, g in enumerate(order):
        for s in _spellings(g):
            alts.append((len(s), f"(?P<g{j}_{len(alts)}>{s})"))
    alts.sort(key=lambda a: -a[0])
    pattern = re.compile(r"(?<![\w'])(?:" + "|".join(a for _, a in alts) + r")(?![\w'])", re.IGNORECASE)
    return pattern, order


def parse_genres(text: str, genres: Sequence[str], matcher: tuple[re.Pattern[str], list[str]] | None = None) -> list[str]:
    """Known ``genres`` named in ``text``, canonical spelling, in order of first appearance.

    Matching is case-insensitive on whole words; "Childrens"/"children"/"kids" count as
    "Children's", "science fiction"/"scifi" as "Sci-Fi", "film noir"/"noir" as "Film-Noir";
    plurals ("comedies") count. Duplicates are dropped.
    """
    pattern, order = matcher or genre_matcher(genres)
    out: list[str] = []
    for m in pattern.finditer(text or ""):
        name = next(k for k, v in m.groupdict().items() if v is not None)
        g = order[int(name[1:].split("_")[0])]
        if g not in out:
            out.append(g)
    return out


def precision_at_k(predicted: Sequence[str], truth: Sequence[str], k: int) -> float:
    """``|predicted[:k] & truth| / k``."""
    return len(set(predicted[:k]) & set(truth)) / k


# ---- prompts ------------------------------------------------------------------------------------
def build_genre_prompt(
    history: Sequence[int],
    titles: Sequence[str],
    wording: dict[str, str] | None,
    config: PromptConfig | None,
    genres: Sequence[str],
    k: int = 3,
    question: str = DEFAULT_QUESTION,
) -> Prompt:
    """The favourite-genre prompt: the history exactly as :func:`allmrec.llm.prompt.build_prompt`
    shows it (user/item soft tokens in the ``"soft"`` style), then the question.

    Parameters
    ----------
    history : the user's items, oldest first (the last ``config.history_len`` are shown).
    titles : display title per item id (index 0 = padding).
    wording : the dataset's nouns/verbs (``verb_past`` is used).
    config : PromptConfig (style, history_len, item_token, user_token).
    genres : the genre names offered, in the order shown.
    k : how many genres are asked for.
    question : the text after the history (placeholders ``{genres}``, ``{n}``, ``{item}``, ``{items}``).
    """
    if not genres:
        raise ValueError("build_genre_prompt needs at least one genre to offer")
    parts = history_parts(history, titles, wording, config)
    w = wording_of(wording)
    append_text(parts, question.format(genres=", ".join(genres), n=NUMBER_WORDS.get(k, str(k)), item=w["item"], items=w["items"]))
    return Prompt(parts=parts)


def offered_genres(genres: Sequence[str], user: int, config: GenreConfig) -> list[str]:
    """The genres in the order offered to ``user``: seeded shuffle, or as given."""
    genres = list(genres)
    if not config.shuffle_genres:
        return genres
    return [genres[j] for j in rng(config.seed, "genre-order", int(user)).permutation(len(genres))]


def answer_done(text: str, k: int, matcher: tuple[re.Pattern[str], list[str]]) -> bool:
    """Generation may stop: ``k`` distinct genres named, a sentence ending right after a genre
    ("... Action and Drama."), or a blank line after the last genre (a numbered list
    "1. Action\n2. ..." goes on)."""
    matches = list(matcher[0].finditer(text))
    if not matches:
        return False
    if len(parse_genres(text, matcher[1], matcher)) >= k:
        return True
    tail = text[matches[-1].end() :]
    return re.match(r"[\s'\"]*[.!]", tail) is not None or "\n\n" in tail


# ---- the experiment -----------------------------------------------------------------------------
@torch.no_grad()
def favourite_genres(
    dataset: SequenceDataset,
    llm: nn.Module,
    tokenizer: Any,
    users: Sequence[int] | None,
    *,
    stage2: Any | None = None,
    cf_model: nn.Module | None = None,
    joint_items: torch.Tensor | None = None,
    config: GenreConfig | None = None,
    n_examples: int = 5,
) -> dict[str, Any]:
    """Ask the LLM for each user's favourite genres and score the answers (see module docstring).

    Parameters
    ----------
    dataset : a prepared dataset whose ``item_fields[config.field]`` holds item genres.
    llm, tokenizer : the frozen LLM.
    users : user ids to ask about (``None``: all users). History = ``dataset.history(u, "test")``.
    stage2, cf_model, joint_items : A-LLMRec's soft tokens (a trained
        :class:`~allmrec.align.stage2.Stage2Model`, the frozen CF model for ``x^u``, the joint item
        table); ``stage2=None`` is LLM-Only (text prompt). The stage-2 model's ``item_token`` /
        ``user_token`` settings are used; ``history_len`` / ``max_title_tokens`` come from ``config``
        so both methods see the same titles.
    config : GenreConfig
    n_examples : answers returned verbatim (the first users, in the given order).

    Returns
    -------
    dict
        ``precision@k``, ``coverage``, ``popularity_precision@k``, ``copied_list@k`` (floats),
        ``users`` (int), ``method`` ("a-llmrec" or "llm-only"), ``k``, ``genres`` (global order),
        ``popularity`` (the baseline's genres), ``config`` and ``examples``: per example user
        ``user``, ``history_titles`` (the last 5 shown), ``offered``, ``truth``, ``generated``,
        ``parsed``.
    """
    config = config or GenreConfig()
    genres_of = item_genres(dataset, config.field)
    global_counts = global_genre_counts(dataset, genres_of)
    vocab = list(global_counts)
    users = list(range(dataset.n_users)) if users is None else [int(u) for u in users]
    histories = [dataset.history(u, "test") for u in users]
    prompt_cfg, source = _prompt_and_soft_tokens(stage2, cf_model, joint_items, config)
    offered = [offered_genres(vocab, u, config) for u in users]
    texts = _answers(dataset, llm, tokenizer, users, histories, offered, prompt_cfg, source, genre_matcher(vocab), config)
    result = _score(dataset, users, histories, offered, texts, genres_of, global_counts, config, n_examples)
    return {**result, "method": "a-llmrec" if stage2 is not None else "llm-only"}


def _prompt_and_soft_tokens(stage2: Any | None, cf_model: nn.Module | None, joint_items: torch.Tensor | None, config: GenreConfig):
    """The prompt settings and the soft-token source of A-LLMRec (``stage2``) or LLM-Only."""
    if stage2 is None:
        return PromptConfig(style="text", history_len=config.history_len, max_title_tokens=config.max_title_tokens), None
    from allmrec.align.stage2.scoring import Stage2Scorer

    if joint_items is None:
        raise ValueError("favourite_genres with a stage-2 model needs joint_items (the (n_items + 1, d') joint embedding table)")
    base = stage2.prompt_config()
    prompt_cfg = PromptConfig(style="soft", history_len=config.history_len, max_title_tokens=config.max_title_tokens, item_token=base.item_token, user_token=base.user_token)
    if prompt_cfg.user_token and cf_model is None:
        raise ValueError("this stage-2 model puts a user soft token first: favourite_genres needs cf_model for x^u")
    return prompt_cfg, Stage2Scorer(stage2, joint_items, cf_model)


def _answers(dataset: SequenceDataset, llm: nn.Module, tokenizer: Any, users: list[int], histories: list[np.ndarray], offered: list[list[str]],
             prompt_cfg: PromptConfig, source: Any, matcher: tuple[re.Pattern[str], list[str]], config: GenreConfig) -> list[str]:
    """The LLM's greedy answer for each user (until ``k`` genres are named)."""
    shown_titles = display_titles(dataset.titles, tokenizer, config.max_title_tokens)
    embedding = llm.get_input_embeddings()
    batch_size = config.batch_size or (8 if embedding.weight.device.type == "cuda" else 1)
    texts: list[str] = [""] * len(users)
    was_training = llm.training
    llm.eval()
    try:
        for s in range(0, len(users), batch_size):
            rows = list(range(s, min(len(users), s + batch_size)))
            prompts = [build_genre_prompt(histories[r], shown_titles, dataset.wording, prompt_cfg, offered[r], config.k, config.question) for r in rows]
            soft = source.soft_vectors(prompts, [users[r] for r in rows], [histories[r] for r in rows]) if source is not None else None
            batch = splice(prompts, tokenizer, embedding, soft, padding_side="left")
            done = lambda ids: answer_done(tokenizer.decode(ids, skip_special_tokens=True), config.k, matcher)  # noqa: E731
            out = greedy_generate(llm, batch, config.max_new_tokens, tokenizer.eos_token_id, stop=done)
            for k, r in enumerate(rows):
                texts[r] = tokenizer.decode(out[k], skip_special_tokens=True).strip()
    finally:
        llm.train(was_training)
    return texts


def _score(dataset: SequenceDataset, users: list[int], histories: list[np.ndarray], offered: list[list[str]], texts: list[str],
           genres_of: list[list[str]], global_counts: dict[str, int], config: GenreConfig, n_examples: int) -> dict[str, Any]:
    """Precision@k of the parsed answers against each user's top genres, and the baselines."""
    vocab = list(global_counts)
    popular, matcher, k = vocab[: config.k], genre_matcher(vocab), config.k
    precision, covered, pop_precision, copied, examples = [], [], [], [], []
    for i, u in enumerate(users):
        truth = top_genres(histories[i], genres_of, k, global_counts)
        parsed = parse_genres(texts[i], vocab, matcher)
        precision.append(precision_at_k(parsed, truth, k))
        covered.append(bool(parsed))
        pop_precision.append(precision_at_k(popular, truth, k))
        copied.append(parsed[:k] == offered[i][:k])
        if len(examples) < n_examples:
            shown = [int(j) for j in histories[i]][-min(5, config.history_len) :]
            examples.append({"user": u, "history_titles": [dataset.titles[j] for j in shown], "offered": offered[i], "truth": truth, "generated": texts[i],
                             "parsed": parsed})
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    return {"precision@k": mean(precision), "coverage": mean(covered), "popularity_precision@k": mean(pop_precision), "copied_list@k": mean(copied),
            "users": len(users), "k": k, "genres": vocab, "popularity": popular, "config": asdict(config), "examples": examples}


__all__ = [
    "GenreConfig",
    "answer_done",
    "build_genre_prompt",
    "favourite_genres",
    "genre_matcher",
    "global_genre_counts",
    "item_genres",
    "offered_genres",
    "parse_genres",
    "precision_at_k",
    "split_genres",
    "top_genres",
]
