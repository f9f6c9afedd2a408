"""A trained A-LLMRec in one object: :class:`TrainedRecommender` loads an artifact folder
(:mod:`allmrec.serving.artifact`) with ``from_pretrained`` and writes one with
``save_pretrained`` (Hugging Face's symmetry), and ranks for histories of original item ids.

It is a :class:`~allmrec.recommend.Recommender` (``score(queries)`` is the exported method's,
A-LLMRec by default) that also holds the CF model on its own (``cf_score``, and ``retrieve``:
the top items of the whole catalogue, the first stage of a two-stage recommender) and the
catalogue, which can grow:

**Items never seen in training** (:meth:`add_items`) enter through their text, the A-LLMRec
(SBERT) path: ``Q = SBERT(text)`` with the stage-1 text encoder, ``q = f_T^enc(Q)`` is the
item's joint embedding (its soft token), and ``f_I^dec(q)`` its row in the CF model's item table
(so the CF model scores it, and reads it in a history). Retrieval keeps ``cold_slots`` of the
``n`` candidates for added items (those whose text embedding ``Q`` is closest, by cosine, to the
mean ``Q`` of the history's last ``history_len`` items): a CF model never ranks an item without
interactions high on its own, and this is the lane through which a new item can be shown at all.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from allmrec.data.queries import Queries
from allmrec.data.template import ItemTemplate
from allmrec.fusion.scorer import FusedScorer
from allmrec.pipeline.config import RunConfig
from allmrec.recommend.base import Recommender
from allmrec.recommend.cf import CFRecommender
from allmrec.serving.artifact import ADDED, ArtifactError, ArtifactResources, read_catalogue, read_manifest, replace_dir
from allmrec.serving.catalogue import Catalogue
from allmrec.utils.io import read_json, write_json


def with_new_items(model: nn.Module, rows: torch.Tensor) -> nn.Module:
    """A copy of a CF model whose item table has ``rows`` appended (item ids ``n_items + 1, ...``)."""
    emb = getattr(model, "item_emb", None)
    if not isinstance(emb, nn.Embedding):
        raise ArtifactError(f"the {getattr(model, 'name', type(model).__name__)!r} CF model has no item table to extend: it cannot take new items")
    new = copy.deepcopy(model)
    weight = torch.cat([emb.weight.detach(), rows.to(emb.weight)], 0)
    new.item_emb = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=0).to(weight.device)
    new.item_emb.weight.data.copy_(weight)
    new.item_emb.weight.requires_grad_(False)
    new.config = dataclasses.replace(model.config, n_items=weight.shape[0] - 1)
    return new.eval()


class TrainedRecommender(Recommender):
    """An exported model at work. Build it with :meth:`from_pretrained`."""

    def __init__(self, root: Path, manifest: dict[str, Any], resources: ArtifactResources, method: str, seed: int, text_embeddings: torch.Tensor) -> None:
        from allmrec.methods import get_method

        self.root, self.manifest, self.resources, self.method, self.seed = root, manifest, resources, method, seed
        ds = resources.dataset
        self.catalogue = Catalogue(item_ids=[str(i) for i in ds.item_ids], titles=ds.titles, texts=ds.texts)
        self.model = get_method(method).build(resources, seed)
        self.reader = getattr(self.model, "reader", None)
        if self.reader is not None:
            self.reader.progress = False
        self.cf = CFRecommender(resources.cf)
        self.text_embeddings = text_embeddings
        self.history_len = int(getattr(resources.cf.config, "max_len", 50))
        self.added: list[dict[str, Any]] = []
        self.n_items = len(self.catalogue)

    # ---- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, llm: str | None = None, method: str | None = None, device: str = "cpu", seed: int | None = None,
                        verify: bool = True) -> "TrainedRecommender":
        """Load an artifact folder. ``llm`` replaces the recorded LLM source (a moved folder);
        its hash must be the recorded one. Files are checked against the manifest's sha256."""
        from allmrec.llm.loading import llm_source_identity

        root = Path(path).resolve()
        manifest = read_manifest(root, verify=verify)
        config = RunConfig(read_json(root / "config.json"))
        overrides: dict[str, Any] = {"device": device, **({"name_or_path": str(llm)} if llm else {})}
        config = config.with_values({"llm": overrides})
        if manifest["method"] != "cf":
            found, recorded = llm_source_identity(config.llm()), manifest["llm"]["identity"]
            if found != recorded:
                raise ArtifactError(f"{root / 'manifest.json'}: the model was exported with LLM {recorded!r} ({manifest['llm']['config']['name_or_path']}), "
                                    f"but {config.llm().name_or_path!r} has hash {found!r}; give that LLM (--llm PATH)")
        dataset, text = read_catalogue(root / "catalogue")
        res = ArtifactResources(config, root, dataset, text)
        out = cls(root, manifest, res, method or manifest["method"], int(seed if seed is not None else config.eval().seed), text)
        added = root / ADDED
        if added.exists():
            out.add_items(read_json(added).get("items", []), persist=False)
        return out

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write this model (with the items added so far) as an artifact folder at ``path``."""
        import shutil
        import tempfile

        out = Path(path).resolve()
        if out == self.root:
            self._persist_added()
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            shutil.copytree(self.root, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ADDED, ".*"))
            if self.added:
                write_json(tmp / ADDED, {"items": self.added})
            replace_dir(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    def _persist_added(self) -> None:
        write_json(self.root / ADDED, {"items": self.added})

    # ---- scoring -----------------------------------------------------------------------------
    def score(self, queries: Queries) -> np.ndarray:
        return self.model.score(queries)

    def cf_score(self, queries: Queries) -> np.ndarray:
        return self.cf.score(queries)

    def queries(self, histories: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], keys: Sequence[str]) -> Queries:
        return Queries(np.zeros(len(histories), dtype=np.int64), [np.asarray(h[-self.history_len :], dtype=np.int64) for h in histories],
                       np.asarray(candidates, dtype=np.int64), list(keys))

    def retrieve(self, histories: Sequence[Sequence[int]], n: int, cold_slots: int = 2) -> list[list[int]]:
        """Per history the ``n`` best items of the catalogue by CF score, history excluded, with up
        to ``cold_slots`` of them kept for the added items closest in text (module docstring)."""
        items = np.arange(1, len(self.catalogue) + 1)
        rows = self.queries(histories, [items] * len(histories), ["retrieve"] * len(histories)) if len(histories) else None
        scores = self.cf_score(rows) if rows is not None else np.zeros((0, len(items)))
        added = np.asarray(self.catalogue.added, dtype=np.int64)
        out = []
        for h, s in zip(histories, scores):
            s = s.copy()
            s[np.asarray(h, dtype=np.int64) - 1] = -np.inf
            cold = self._closest_added(h, added, min(cold_slots, len(added), n))
            s[cold - 1] = -np.inf
            best = np.argsort(-s, kind="stable")[: n - len(cold)] + 1
            out.append([int(i) for i in cold] + [int(i) for i in best if np.isfinite(s[i - 1])])
        return out

    def _closest_added(self, history: Sequence[int], added: np.ndarray, k: int) -> np.ndarray:
        pool = added[~np.isin(added, np.asarray(history, dtype=np.int64))]
        if k <= 0 or len(pool) == 0:
            return np.zeros(0, dtype=np.int64)
        recent = np.asarray(history, dtype=np.int64)[-self.prompt_history_len :]
        q = torch.nn.functional.normalize(self.text_embeddings[torch.as_tensor(recent)].mean(0), dim=0)
        sims = torch.nn.functional.normalize(self.text_embeddings[torch.as_tensor(pool)], dim=1) @ q
        return pool[np.argsort(-sims.numpy(), kind="stable")[:k]]

    @property
    def prompt_history_len(self) -> int:
        return int(self.reader.prompt.history_len) if self.reader is not None else self.history_len

    # ---- new items ---------------------------------------------------------------------------
    def add_items(self, items: Sequence[dict[str, Any]], persist: bool = True) -> list[int]:
        """Add items ``{"item_id", "title", "text"?, "fields"?}`` (text default: the dataset's
        item template over the title and fields); returns their internal ids. ``persist``
        rewrites ``added_items.json`` in the artifact folder (atomically)."""
        if not items:
            return []
        model, encoder, _ = self.resources.stage1
        template = ItemTemplate(str(self.resources.dataset.options.get("template") or "Title: {title}"))
        texts = [str(it.get("text") or template.render({**(it.get("fields") or {}), "title": it["title"]}) or it["title"]) for it in items]
        with torch.no_grad():
            Q = encoder.encode(texts).float()
            q = model.encode_texts(Q.to(next(model.parameters()).device)).float().cpu()
            cf_rows = model.item_decoder(q.to(next(model.parameters()).device)).float().cpu()
        new_cf = with_new_items(self.cf.model, cf_rows)
        fusions = self._fusions()
        if fusions:  # their features read the new items' rows of every item table
            with torch.no_grad():
                e = model.encode_items(cf_rows.to(next(model.parameters()).device)).float().cpu()
            rows = {"text": self.frozen_text_encoder.encode(texts).float().numpy(), "stage1_q": q.numpy(), "stage1_e": e.numpy()}
        ids = self.catalogue.add([str(it["item_id"]) for it in items], [str(it["title"]) for it in items], texts)
        self.text_embeddings = torch.cat([self.text_embeddings, Q], 0)
        for fusion in fusions:
            fusion.add_items({"cf": CFRecommender(new_cf)}, rows)
        self._grow(new_cf, q, [str(it["title"]) for it in items])
        self.added += [{"item_id": str(it["item_id"]), "title": str(it["title"]), "text": t} for it, t in zip(items, texts)]
        if persist:
            self._persist_added()
        return ids

    def _fusions(self) -> list[FusedScorer]:
        """The fitted fusions this model scores with (itself, or its stage 2's prior)."""
        source = getattr(self.reader, "source", None)
        return [m for m in (self.model, getattr(source, "prior", None)) if isinstance(m, FusedScorer)]

    @cached_property
    def frozen_text_encoder(self):
        """The frozen text encoder of the fusions' text table (the run's ``text_encoder``)."""
        from allmrec.text import load_text_encoder

        return load_text_encoder(self.resources.config.text_encoder)

    def _grow(self, new_cf: nn.Module, q: torch.Tensor, titles: list[str]) -> None:
        self.cf.model, self.cf.n_items = new_cf, len(self.catalogue)
        self.n_items = len(self.catalogue)
        self.resources.__dict__["cf"] = new_cf
        if isinstance(self.model, CFRecommender):
            self.model.model, self.model.n_items = new_cf, len(self.catalogue)
            return
        if isinstance(self.model, FusedScorer):  # grown by add_items
            return
        reader = self.reader
        scorer = reader.source
        if scorer is not None:
            scorer.cf_model = new_cf
            scorer.joint_items = torch.cat([scorer.joint_items, q.to(scorer.joint_items)], 0)
        if reader.titles is not self.catalogue.titles:
            reader.titles = self.catalogue.titles
        reader.add_titles(titles)
        self.model.n_items = len(self.catalogue)
