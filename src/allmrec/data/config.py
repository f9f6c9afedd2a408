"""``PrepareConfig``: every option that turns raw files into a prepared dataset.

A plain dataclass, serialisable to JSON and buildable from a dict
(``allmrec.config.from_dict(PrepareConfig, d)``) or a YAML preset
(``allmrec.data.presets.load_preset``). Nothing in the data pipeline branches on ``name``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TEMPLATE = "Title: {title}, Description: {description}, Brand: {brand}, Categories: {categories}"
DEFAULT_WORDING = {"item": "item", "items": "items", "verb_past": "bought", "verb_next": "buy"}
FORMATS = ("sequences", "amazon2014", "amazon2018", "amazon2023", "recbole", "movielens", "tabular")


@dataclass
class PrepareConfig:
    """Options of :func:`allmrec.data.prepare`.

    Parameters
    ----------
    name : str
        Dataset name (cache folder prefix, reports).
    format : str
        Reader: one of ``sequences``, ``amazon2014``, ``amazon2018``, ``amazon2023``,
        ``recbole``, ``movielens`` (GroupLens ``u.data``/``u.item`` or ``ratings.dat``/
        ``movies.dat``), ``tabular`` (CSV/TSV/Parquet; aliases ``csv``, ``parquet``).
    path : str
        Dataset folder (a relative path is taken from the current directory). ``pkg:<package>/<sub/path>`` means a folder inside an installed
        package (located with ``importlib.util.find_spec``, never imported).
    interactions_file, items_file : str
        File names relative to ``path`` (or absolute). Empty: the format's default names.
    user_col, item_col, time_col, rating_col : str
        Column names of a tabular interactions table (``time_col``/``rating_col`` empty: absent).
    item_id_col : str
        Item id column of a tabular items table (empty: same as ``item_col``).
    sep : str
        Field separator for CSV/TSV (empty: ``","`` for ``.csv``, tab otherwise).
    rename : dict
        Item column renames applied after reading, e.g. ``{"movie_title": "title"}``.
    field_seps : dict
        Item columns (after renaming) holding a list as one string with this separator,
        re-joined with ``", "`` (e.g. ``{"genres": " "}`` for RecBole ``token_seq``).
    missing_items : str
        Interactions whose item has no metadata row: ``error`` (default), ``drop`` or ``keep``
        (kept with a placeholder title).
    min_rating : float or None
        Keep interactions with ``rating >= min_rating`` (``> `` if ``min_rating_strict``).
        ``None``: keep all.
    drop_repeats : bool
        Keep only the first interaction of a user with an item.
    k_core : int
        Iterative k-core: drop users and items with fewer than ``k_core`` interactions until
        stable (0 or 1: off).
    template : str
        Item text for the text encoder: a ``str.format`` template over item columns. Segments
        separated by ``", "`` whose fields are all empty are dropped (no ``None`` in texts).
    title_placeholder : str
        Title of items without one (``{item_id}`` = original id).
    n_candidates : int
        Candidate-set size (truth + ``n_candidates - 1`` negatives).
    seed : int
        Seed of every random choice (candidates, cold users).
    cold_users : int
        Users held out of all training with only ``cold_user_length`` interactions.
    cold_user_length : int
        Length of a cold user's sequence (3: one history item, a validation and a test target).
    wording : dict
        Prompt words: ``item``, ``items``, ``verb_past``, ``verb_next``.
    """

    name: str = "dataset"
    format: str = "sequences"
    path: str = ""
    interactions_file: str = ""
    items_file: str = ""
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = ""
    rating_col: str = ""
    item_id_col: str = ""
    sep: str = ""
    rename: dict[str, str] = field(default_factory=dict)
    field_seps: dict[str, str] = field(default_factory=dict)
    missing_items: str = "error"
    min_rating: float | None = None
    min_rating_strict: bool = False
    drop_repeats: bool = False
    k_core: int = 5
    template: str = DEFAULT_TEMPLATE
    title_placeholder: str = "Untitled item {item_id}"
    n_candidates: int = 20
    seed: int = 42
    cold_users: int = 0
    cold_user_length: int = 3
    wording: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_WORDING))

    def __post_init__(self) -> None:
        self.format = {"csv": "tabular", "parquet": "tabular", "tsv": "tabular"}.get(self.format, self.format)
        if self.format not in FORMATS:
            raise ValueError(f"PrepareConfig.format: unknown format {self.format!r}; valid: {', '.join(FORMATS)}")
        if self.missing_items not in ("error", "drop", "keep"):
            raise ValueError(f"PrepareConfig.missing_items: expected error, drop or keep, got {self.missing_items!r}")
        if self.n_candidates < 2:
            raise ValueError(f"PrepareConfig.n_candidates: need at least 2, got {self.n_candidates}")
        if self.cold_users < 0 or self.cold_user_length < 3:
            raise ValueError("PrepareConfig.cold_users must be >= 0 and cold_user_length >= 3")
        self.wording = {**DEFAULT_WORDING, **(self.wording or {})}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
