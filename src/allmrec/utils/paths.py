"""Where allmrec keeps caches (prepared datasets, converted LLMs). Override with ALLMREC_HOME."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    root = os.environ.get("ALLMREC_HOME")
    if root:
        return Path(root).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "allmrec"


def cache_dir(*parts: str) -> Path:
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
