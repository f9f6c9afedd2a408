"""Scoring generated text: normalise, extract the answer, match it exactly to a candidate title.

A generated answer is a hit only if its normalised text *equals* the normalised title of the
target (never a substring match). Normalisation: lowercase, drop quotes and every Unicode
punctuation character, collapse whitespace.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

_QUOTED = re.compile(r'"([^"\n]*)"')


def normalize_title(text: str) -> str:
    """Lowercase, no punctuation or quotes, single spaces: ``' "Toy Story (1995)"'`` -> ``'toy story 1995'``."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())


def extract_answer(generated: str) -> str:
    """The title part of a generated answer: the first line; within it, the first ``"quoted"``
    span if there is one (the trained answer format is `` "title"``)."""
    line = generated.strip().split("\n", 1)[0] if generated.strip() else ""
    m = _QUOTED.search(line)
    return m.group(1) if m else line.strip()


def match_candidates(answer: str, candidates: Sequence[int], titles: Sequence[str]) -> list[int]:
    """Candidates (in the given order) whose normalised title equals the normalised ``answer``."""
    key = normalize_title(answer)
    if not key:
        return []
    return [int(c) for c in candidates if normalize_title(titles[c]) == key]
