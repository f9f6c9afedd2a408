"""Item-text templates: a ``str.format`` string over item columns, rendered without "None".

The template is cut into segments at ``", "`` in its literal text (never inside a value); a
segment whose fields are all empty for an item is left out, so
``"Title: {title}, Brand: {brand}"`` renders ``"Title: X"`` for an item without a brand.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Mapping, Sequence

SEP = ", "


@dataclass(frozen=True)
class _Field:
    name: str
    spec: str
    conversion: str | None


class ItemTemplate:
    """A compiled template; ``render(row)`` with ``row`` a mapping column -> str."""

    def __init__(self, template: str):
        self.template = template
        self.segments: list[list[str | _Field]] = [[]]
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as err:
            raise ValueError(f"item template {template!r}: {err}") from None
        for literal, name, spec, conv in parsed:
            pieces = literal.split(SEP)
            for i, piece in enumerate(pieces):
                if i:
                    self.segments.append([])
                if piece:
                    self.segments[-1].append(piece)
            if name is not None:
                if not name or name.isdigit():
                    raise ValueError(f"item template {template!r}: fields must be named columns, e.g. {{title}}")
                self.segments[-1].append(_Field(name, spec or "", conv))
        self.fields = [t.name for seg in self.segments for t in seg if isinstance(t, _Field)]

    def check(self, columns: Sequence[str]) -> None:
        missing = [f for f in self.fields if f not in columns]
        if missing:
            raise ValueError(f"item template {self.template!r}: unknown field(s) {', '.join(missing)}; "
                             f"item columns: {', '.join(columns)}")

    def render(self, row: Mapping[str, str]) -> str:
        out = []
        for seg in self.segments:
            fields = [t for t in seg if isinstance(t, _Field)]
            values = {f.name: str(row.get(f.name) or "").strip() for f in fields}
            if fields and not any(values.values()):
                continue
            parts = []
            for t in seg:
                if isinstance(t, _Field):
                    v = values[t.name]
                    v = repr(v) if t.conversion == "r" else v
                    parts.append(format(v, t.spec))
                else:
                    parts.append(t)
            out.append("".join(parts))
        return SEP.join(out).strip()
