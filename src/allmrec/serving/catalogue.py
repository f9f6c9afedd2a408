"""The served item catalogue: original ids, titles and texts by internal id (row 0 = padding),
the items of the training data (``1..n_base``) followed by items added while serving.

Lookups map original ids (strings; integers are taken as their decimal string) to internal
ids and report the unknown ones; :meth:`Catalogue.search` finds titles by a case- and
accent-insensitive substring (Unicode NFKC + casefold), prefix matches first.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field


def fold(text: str) -> str:
    """``text`` normalised for matching: NFKC, accents dropped, casefolded, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", str(text)))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


@dataclass
class Catalogue:
    item_ids: list[str]  # (n_items + 1,), [0] = "<pad>"
    titles: list[str]
    texts: list[str]
    n_base: int = 0  # items 1..n_base come from the training data; later ones were added
    index: dict[str, int] = field(init=False)
    _folded: list[str] = field(init=False)

    def __post_init__(self) -> None:
        if not len(self.item_ids) == len(self.titles) == len(self.texts):
            raise ValueError(f"catalogue: {len(self.item_ids)} ids, {len(self.titles)} titles and {len(self.texts)} texts")
        self.n_base = self.n_base or len(self.item_ids) - 1
        self.index = {str(iid): i for i, iid in enumerate(self.item_ids) if i > 0}
        self._folded = [fold(t) for t in self.titles]

    def __len__(self) -> int:
        return len(self.item_ids) - 1

    @property
    def added(self) -> range:
        """Internal ids of the items added while serving."""
        return range(self.n_base + 1, len(self.item_ids))

    def lookup(self, ids: Sequence[str]) -> tuple[list[int], list[str]]:
        """``(internal ids, unknown ids)``: ``internal`` holds 0 where an id is unknown."""
        out, unknown = [], []
        for iid in ids:
            i = self.index.get(str(iid), 0)
            out.append(i)
            if not i:
                unknown.append(str(iid))
        return out, unknown

    def add(self, ids: Sequence[str], titles: Sequence[str], texts: Sequence[str]) -> list[int]:
        """Append items (ids must be new); returns their internal ids."""
        taken = [str(i) for i in ids if str(i) in self.index]
        if taken:
            raise ValueError(f"item ids already in the catalogue: {taken[:5]}")
        start = len(self.item_ids)
        for k, (iid, title, text) in enumerate(zip(ids, titles, texts)):
            self.item_ids.append(str(iid))
            self.titles.append(str(title))
            self.texts.append(str(text))
            self._folded.append(fold(title))
            self.index[str(iid)] = start + k
        return list(range(start, len(self.item_ids)))

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Internal ids whose title contains ``query`` (folded), title prefixes first, then by id;
        an empty query lists the first ``limit`` items."""
        q = fold(query)
        if not q:
            return list(range(1, min(len(self.item_ids), limit + 1)))
        exact = self.index.get(query.strip())
        prefix, inner = [], []
        for i in range(1, len(self.item_ids)):
            t = self._folded[i]
            if t.startswith(q):
                prefix.append(i)
            elif q in t:
                inner.append(i)
            if len(prefix) >= limit:
                break
        hits = ([exact] if exact else []) + [i for i in prefix + inner if i != exact]
        return hits[:limit]

    def describe(self, i: int) -> dict[str, str]:
        return {"item_id": self.item_ids[i], "title": self.titles[i]}
