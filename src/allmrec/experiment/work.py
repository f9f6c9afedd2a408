"""The pieces of work the experiment runner does beyond the pipeline's own steps: the
cross-domain transfer, the efficiency timings and the adapters to the TALLRec, MoRec and
favourite-genre modules (written separately; a missing one makes its units *unavailable*).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any

import numpy as np
import torch

from allmrec.data.dataset import SequenceDataset


class Unavailable(Exception):
    """A unit that cannot run here: a module not written yet, a dataset without the needed
    field, a backbone that cannot transfer. Recorded with its reason, retried on the next run."""


def optional_module(name: str) -> Any:
    """Import ``name`` or raise :class:`Unavailable` naming it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise Unavailable(f"module {name} is not available ({err})") from None


def require_backbone(name: str) -> None:
    from allmrec.cf import get_backbone_class

    try:
        get_backbone_class(name)
    except KeyError as err:
        raise Unavailable(f"CF backbone {name!r} is not registered ({err.args[0]})") from None


# ---- metrics from per-user columns ----------------------------------------------------------------
def metrics_from_columns(columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """Hit@k / NDCG@k / MRR with a Wilson 95% interval on Hit@1, and generation exact match."""
    from allmrec.eval.metrics import hit_interval, ranking_metrics

    out: dict[str, Any] = {}
    if "rank" in columns:
        ranks = np.asarray(columns["rank"], dtype=np.int64)
        out.update(ranking_metrics(ranks))
        out["hit@1_ci95"] = list(hit_interval(ranks == 0))
    if "gen_hit" in columns:
        hits = np.asarray(columns["gen_hit"], dtype=bool)
        out["users"] = float(len(hits))
        out["gen_hit@1"] = float(hits.mean()) if len(hits) else None
        out["gen_no_match"] = float(np.asarray(columns["gen_no_match"], dtype=bool).mean()) if len(hits) else None
    return out


def columns_from_llm_rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-user columns from :func:`allmrec.recommend.evaluate_llm` outputs."""
    out: dict[str, np.ndarray] = {}
    if rows and "rank" in rows[0]:
        out["rank"] = np.array([r["rank"] for r in rows], dtype=np.int64)
    if rows and "gen_hit" in rows[0]:
        out["gen_hit"] = np.array([r["gen_hit"] for r in rows], dtype=bool)
        out["gen_no_match"] = np.array([r["matched"] is None for r in rows], dtype=bool)
    return out


# ---- cross-domain transfer -------------------------------------------------------------------------
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
def text_derived_tables(stage1_dir: Any, dataset: SequenceDataset, items: np.ndarray) -> dict[str, torch.Tensor]:
    """Item tables of a target-domain dataset derived from its item texts with a source stage 1.

    Returns ``q`` (``f_T^enc(Q)``, A-LLMRec (SBERT)), ``cf`` (``f_I^dec(q)``: a CF item table in
    the source CF model's space) and ``e`` (``f_I^enc(f_I^dec(q))``: the joint embedding the
    item encoder gives that table). Rows outside ``items`` (and row 0) are zeros.
    """
    from allmrec.align import load_stage1

    model, encoder, _ = load_stage1(stage1_dir)
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


# ---- efficiency ----------------------------------------------------------------------------------------
def time_stage2_training(dataset, cf_model, joint_items, llm, tokenizer, config, steps: int, batch_size: int) -> dict[str, Any]:
    """Seconds per stage-2 step (``batch_size`` prompts), after a 1-step warm-up run; nothing saved."""
    from allmrec.align import train_stage2

    base = dataclasses.replace(config, batch_size=batch_size, eval_every=0, valid_users=0, max_train_users=None)
    train_stage2(dataset, cf_model, joint_items, llm, tokenizer, dataclasses.replace(base, max_steps=1), None, progress=False)
    _, state = train_stage2(dataset, cf_model, joint_items, llm, tokenizer, dataclasses.replace(base, max_steps=steps), None, progress=False)
    return {"steps": int(state["step"]), "seconds": float(state["seconds"]), "seconds_per_step": float(state["seconds"]) / max(int(state["step"]), 1)}


def time_inference(fn, n_users: int) -> dict[str, Any]:
    """Wall time of ``fn()`` (scoring ``n_users`` users) per user."""
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return {"users": int(n_users), "seconds": seconds, "seconds_per_user": seconds / max(n_users, 1)}


def free_memory() -> None:
    """Collect garbage and free cached accelerator memory (after dropping a model)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
