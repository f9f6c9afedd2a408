"""Scoring evaluation units: the per-user columns of one method of one variant, reusing every
user the same model already scored (:class:`~allmrec.experiment.store.UnitStore` rows keyed by
variant, method, mode, split, seed and the model files' hashes)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from allmrec.eval.evaluate import evaluate_users
from allmrec.eval.metrics import metrics_from_columns
from allmrec.experiment.plan import EvalSpec
from allmrec.experiment.resources import SharedResources
from allmrec.experiment.store import UnitStore, stable_hash
from allmrec.llm.reader import PromptReader
from allmrec.pipeline.steps import score_method
from allmrec.recommend.llm import LLMRecommender

log = logging.getLogger(__name__)
Columns = dict[str, np.ndarray]


def _py(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


class UnitScorer:
    def __init__(self, shared: SharedResources, store: UnitStore) -> None:
        self.shared, self.store, self.cfg = shared, store, shared.cfg

    # ---- keys -----------------------------------------------------------------------------------------
    def train_uid(self, s: EvalSpec) -> str | None:
        if s.method == "tallrec":
            return f"train/{s.variant}"
        if s.method == "llm-only":
            return None
        return f"train/{self.shared.actual(s.variant).name}"

    def mode(self, s: EvalSpec) -> str:
        return "rank" if s.method == "cf" else self.cfg.eval.mode

    def stamp(self, s: EvalSpec) -> dict[str, Any]:
        uid = self.train_uid(s)
        if uid is None:  # LLM-Only: the LLM and the prompt settings
            run = self.shared.run(s.variant)
            model = run.config.stage2().model
            return {"llm": run.config.section("llm"), "history_len": model.history_len, "max_title_tokens": model.max_title_tokens}
        stamp = dict((self.store.get(uid) or {}).get("stamp") or {})
        return {"cf": stamp.get("cf")} if s.method == "cf" else stamp

    def score_key(self, s: EvalSpec, target: str = "base") -> str:
        actual = s.variant if s.method == "tallrec" else self.shared.actual(s.variant).name
        return stable_hash({"variant": actual, "method": s.method, "mode": self.mode(s), "split": self.cfg.eval.split,
                            "seed": self.cfg.eval.seed, "stamp": self.stamp(s), "target": target})

    # ---- records -------------------------------------------------------------------------------------
    def evaluate(self, s: EvalSpec, users: np.ndarray, score_key: str, score: Callable[[np.ndarray], Columns]) -> dict[str, Any]:
        """Score the users not yet scored by the same model, then the metrics of the whole sample
        from the per-user rows."""
        t0 = time.perf_counter()
        rows, missing = self.scored_rows(score_key, users, score)
        seconds = time.perf_counter() - t0
        names = sorted({c for u in users for c in rows[int(u)]})
        columns = {c: np.array([rows[int(u)][c] for u in users]) for c in names}
        out: dict[str, Any] = {"score_key": score_key, "mode": self.mode(s), "split": self.cfg.eval.split, "metrics": metrics_from_columns(columns),
                               "scored_users": int(len(missing)), "reused_users": int(len(users) - len(missing)), "scoring_seconds": round(seconds, 3),
                               "seconds_per_user": round(seconds / len(missing), 4) if len(missing) else None, "users": [int(u) for u in users]}
        out.update({c: [_py(x) for x in columns[c]] for c in names})
        return out

    def scored_rows(self, score_key: str, users: np.ndarray, score: Callable[[np.ndarray], Columns]):
        """The store's per-user rows under ``score_key`` after scoring the ``users`` not there yet;
        returns them and the users scored now."""
        rows = self.store.rows(score_key)
        missing = np.array([u for u in users if int(u) not in rows], dtype=np.int64)
        if len(missing):
            cols = score(missing)
            for i, u in enumerate(missing):
                rows[int(u)] = {c: _py(cols[c][i]) for c in cols}
        return rows, missing

    # ---- scoring ------------------------------------------------------------------------------------
    def score(self, s: EvalSpec, users: np.ndarray) -> Columns:
        if s.method == "tallrec":
            return self.score_tallrec(s.variant, self.shared.main.dataset, users)
        if s.method == "allmrec-sbert":
            return self.score_sbert(s, users)
        run = self.shared.run(s.variant)
        return score_method(run, s.method, users, self.cfg.eval.split, self.mode(s), self.cfg.eval.seed)

    def score_sbert(self, s: EvalSpec, users: np.ndarray) -> Columns:
        """A-LLMRec (SBERT) differs from A-LLMRec only in the rows of items without training
        interactions (q_i instead of e_i). A user whose prompt shows none of them gets exactly
        A-LLMRec's scores, so those users share A-LLMRec's rows (scored once); only the others
        run with the SBERT table. On 5-core data no item lacks training interactions."""
        from allmrec.align.stage1 import untrained_item_mask

        run, split, mode, seed = self.shared.run(s.variant), self.cfg.eval.split, self.mode(s), self.cfg.eval.seed
        ds = run.dataset
        untrained = untrained_item_mask(ds)
        shown = run.config.stage2().model.history_len
        cands = ds.candidates(split)
        own = np.array([bool(untrained[cands[u]].any() or untrained[ds.history(int(u), split)[-shown:]].any()) for u in users], dtype=bool)
        plain = self.score_key(EvalSpec(s.table, s.variant, "allmrec", s.row, s.label, s.sample, s.n_users))
        shared, _ = self.scored_rows(plain, users[~own], lambda todo: score_method(run, "allmrec", todo, split, mode, seed))
        rows = {int(u): shared[int(u)] for u in users[~own]}
        if own.any():
            sbert = score_method(run, "allmrec-sbert", users[own], split, mode, seed)
            rows.update({int(u): {c: _py(sbert[c][i]) for c in sbert} for i, u in enumerate(users[own])})
        log.info("%s: %d of %d users see an item without training interactions (scored with q_i); the others share A-LLMRec's rows",
                 s.uid, int(own.sum()), len(users))
        names = sorted({c for row in rows.values() for c in row})
        return {c: np.array([rows[int(u)][c] for u in users]) for c in names}

    def score_tallrec(self, name: str, ds: Any, users: np.ndarray) -> Columns:
        from allmrec.baselines.tallrec import tallrec_prompt_config

        model = self.shared.tallrec_model(name)
        tok = self.shared.main.llm[1]
        reader = PromptReader(model, tok, ds.titles, ds.wording, tallrec_prompt_config(model), seed=self.cfg.eval.seed, progress=True)
        return evaluate_users(LLMRecommender(reader), ds, self.cfg.eval.split, users, self.cfg.eval.mode)
