"""Cross-domain transfer (paper Table 5): a model trained on one dataset scores another without
training. Target items get their embeddings from their text through the source's stage 1."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from allmrec.data.dataset import SequenceDataset
from allmrec.experiment.plan import Unavailable


def needed_items(dataset: SequenceDataset, users: np.ndarray, split: str, max_len: int) -> np.ndarray:
    """Items a model reads to score ``users`` on ``split``: their recent history and candidates."""
    items: set[int] = set()
    cands = dataset.candidates(split)
    for u in users:
        items.update(int(i) for i in dataset.history(int(u), split)[-max_len:])
        items.update(int(i) for i in cands[int(u)])
    items.discard(0)
    return np.array(sorted(items), dtype=np.int64)


@torch.no_grad()
def text_derived_tables(stage1: tuple[Any, Any, Any], dataset: SequenceDataset, items: np.ndarray) -> dict[str, torch.Tensor]:
    """Item tables of a target-domain dataset derived from its item texts with a source stage 1
    (``(model, text_encoder, config)``).

    Returns ``q`` (``f_T^enc(Q)``, A-LLMRec (SBERT)), ``cf`` (``f_I^dec(q)``: a CF item table in
    the source CF model's space) and ``e`` (``f_I^enc(f_I^dec(q))``: the joint embedding the
    item encoder gives that table). Rows outside ``items`` (and row 0) are zeros.
    """
    model, encoder, _ = stage1
    n = dataset.n_items + 1
    q = torch.zeros(n, model.d_latent)
    cf = torch.zeros(n, model.d_cf)
    e = torch.zeros(n, model.d_latent)
    if len(items):
        idx = torch.as_tensor(items, dtype=torch.long)
        text = encoder.encode([dataset.texts[int(i)] for i in items], batch_size=64).float()
        q_rows = model.encode_texts(text)
        cf_rows = model.item_decoder(q_rows)
        q[idx], cf[idx], e[idx] = q_rows, cf_rows, model.encode_items(cf_rows)
    return {"q": q, "cf": cf, "e": e}


class _TargetTables:
    """What a saved fusion's feature sources are rebuilt from (the ``Resources`` a fusion reads),
    on a target catalogue: the moved CF model, the frozen text encoder's embeddings of the
    needed items, the text-derived stage-1 tables, and no popularity (the source's fusion knows
    none of the target's items)."""

    def __init__(self, source: Any, dataset: SequenceDataset, cf_t: Any, tables: dict[str, torch.Tensor]) -> None:
        from allmrec.text import item_text_embeddings, load_text_encoder

        self.cf, self.tables = cf_t, tables
        self.dataset = dataclasses.replace(dataset, train_users=np.zeros(dataset.n_users, dtype=bool))  # no training interactions
        self.text_table = item_text_embeddings(load_text_encoder(source.config.text_encoder), dataset).numpy()  # every item: the tower centres on them

    def fusion_tables(self, names: list[str]) -> dict[str, np.ndarray]:
        known = {"text": self.text_table, "stage1_q": self.tables["q"].detach().numpy(), "stage1_e": self.tables["e"].detach().numpy()}
        return {name: known[name] for name in names}


def moved_fusion(source: Any, dataset: SequenceDataset, cf_t: Any, tables: dict[str, torch.Tensor]) -> Any:
    """The source run's fitted fusion (a best-mode stage 2's prior) scoring ``dataset``'s items."""
    from allmrec.fusion.scorer import FusedScorer
    from allmrec.fusion.training import load_sources

    meta, tensors = FusedScorer.read(source.folder.fusion / "fusion")
    return FusedScorer.from_saved(meta, tensors, load_sources(_TargetTables(source, dataset, cf_t, tables), meta, tensors))


def transplant_cf(cf_model: Any, dataset: SequenceDataset, item_table: torch.Tensor) -> Any:
    """A copy of a sequential CF model for another catalogue: every weight kept except the item
    table, which becomes ``item_table`` ``(n_items + 1, dim)`` of ``dataset``."""
    if not hasattr(cf_model, "item_emb"):
        raise Unavailable(f"CF backbone {getattr(cf_model, 'name', type(cf_model).__name__)!r} has no item table to swap "
                          "(only sequential backbones transfer across catalogues)")
    config = dataclasses.replace(cf_model.config, n_items=dataset.n_items, n_users=dataset.n_users)
    new = type(cf_model)(config)
    src, dst = cf_model.state_dict(), new.state_dict()
    tied = [k for k in dst if k != "item_emb.weight" and (k not in src or src[k].shape != dst[k].shape)]
    if tied:
        raise Unavailable(f"CF backbone {cf_model.name!r}: parameters tied to the source catalogue or users ({', '.join(tied[:3])})")
    dst.update({k: src[k] for k in dst if k != "item_emb.weight"})
    dst["item_emb.weight"] = item_table.to(dst["item_emb.weight"].dtype)
    new.load_state_dict(dst)
    return new.eval()


def text_model_for(cf_model: Any, dataset: SequenceDataset) -> Any:
    """A copy of a CF model that reads item text (RECFORMER) for another catalogue: the same
    weights, the target's item sentences."""
    if not getattr(cf_model, "needs_item_text", False):
        raise Unavailable(f"CF backbone {cf_model.name!r} has no item table to swap and reads no item text")
    config = dataclasses.replace(cf_model.config, n_items=dataset.n_items, n_users=dataset.n_users, text_fingerprint="")
    new = type(cf_model)(config)
    new.load_state_dict(cf_model.state_dict())
    features, _ = type(cf_model).prepare_item_features(dataset, dataclasses.asdict(config))
    new.set_item_features(features)
    return new.eval()


def cross_recommender(method: str, source: Any, dataset: SequenceDataset, users: np.ndarray, split: str, seed: int, cache: dict[str, Any]):
    """The recommender of ``method`` trained on ``source`` (its :class:`Resources`), moved onto
    ``dataset``'s catalogue. ``cache`` keeps the moved CF model and tables for the same users."""
    from allmrec.align.stage2.scoring import Stage2Scorer
    from allmrec.experiment.store import stable_hash
    from allmrec.llm.reader import PromptReader
    from allmrec.methods.llm_only import text_prompt
    from allmrec.recommend import CFRecommender, LLMRecommender

    if method == "cf" and not hasattr(source.cf, "item_emb"):  # a text model (RECFORMER) reads the target's items through their text
        return CFRecommender(text_model_for(source.cf, dataset))
    llm, tok = source.llm
    if method == "llm-only":
        return LLMRecommender(PromptReader(llm, tok, dataset.titles, dataset.wording, text_prompt(source), seed=seed, progress=True))
    key = f"{source.folder.root}:{stable_hash(users.tolist())}"
    if key not in cache:
        cf = source.cf
        tables = text_derived_tables(source.stage1, dataset, needed_items(dataset, users, split, int(getattr(cf.config, "max_len", 50))))
        cache.clear()
        cache[key] = (transplant_cf(cf, dataset, tables["cf"]), tables)
    cf_t, tables = cache[key]
    if method == "cf":
        return CFRecommender(cf_t)
    from allmrec.align.stage2 import load_stage2

    stage2 = load_stage2(source.folder.stage2, llm=llm)
    prior = moved_fusion(source, dataset, cf_t, tables) if stage2.residual and stage2.config.prior == "fusion" else None
    scorer = Stage2Scorer(stage2, tables["e"] if method == "allmrec" else tables["q"], cf_t, prior=prior)
    return LLMRecommender(PromptReader(llm, tok, dataset.titles, dataset.wording, stage2.prompt_config(), scorer, seed=seed, progress=True))
