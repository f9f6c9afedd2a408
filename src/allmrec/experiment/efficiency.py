"""Efficiency (paper Table 8): A-LLMRec vs TALLRec wall time on the same LLM, data, batch size
and machine, in one process. Training: seconds per step after a 1-step warm-up (nothing saved);
inference: ranking the candidates of a few test users. Training time *to a validation Hit@1*
from learning curves: :func:`timeline` and :func:`time_to_reach` (``benchmarks/efficiency.py``)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from allmrec.eval.evaluate import evaluate_users
from allmrec.experiment.resources import SharedResources, free_memory


def timeline(state: dict[str, Any], offset: float = 0.0) -> list[tuple[float, float]]:
    """``(training seconds, validation Hit@1)`` at each learning-curve point of a trainer state
    (:func:`allmrec.training.run_training` with ``validate_every_steps``), ``offset`` seconds
    (the training before this run: stage 1 and the fusion before stage 2) added."""
    seconds = dict((int(step), float(s)) for step, s in state.get("curve_seconds", []))
    missing = [int(p[0]) for p in state.get("curve", []) if int(p[0]) not in seconds]
    if missing:
        raise ValueError(f"the learning curve has no training time for steps {missing[:5]} (a run from before curve_seconds was recorded)")
    return [(offset + seconds[int(p[0])], float(p[1])) for p in state.get("curve", [])]


def time_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The training seconds of the first point whose Hit@1 is at least ``target`` (``None``: never)."""
    return next((t for t, hit in sorted(points) if hit >= target - 1e-12), None)


def time_stage2_training(res: Any, steps: int, batch_size: int) -> dict[str, Any]:
    """Seconds per stage-2 step (``batch_size`` prompts) of a run's config, after a 1-step warm-up."""
    from allmrec.align.stage2 import train_stage2

    cfg = res.config.stage2()
    base = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size, eval_every=0, valid_users=0, max_train_users=None))
    table = res.item_table(cfg.model.item_table, cfg.train.seed)
    llm, tok = res.llm
    prior = res.fusion if cfg.model.residual and cfg.model.prior == "fusion" else None  # fitted with the run's stage 2
    for n in (1, steps):  # warm-up, then the timed run
        run = dataclasses.replace(base, train=dataclasses.replace(base.train, max_steps=n))
        _, state = train_stage2(res.dataset, res.cf, table, llm, tok, run, None, progress=False, prior=prior)
    return {"steps": int(state["step"]), "seconds": float(state["seconds"]), "seconds_per_step": float(state["seconds"]) / max(int(state["step"]), 1)}


def time_inference(fn: Callable[[], Any], n_users: int) -> dict[str, Any]:
    """Wall time of ``fn()`` (scoring ``n_users`` users) per user."""
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return {"users": int(n_users), "seconds": seconds, "seconds_per_user": seconds / max(n_users, 1)}


def efficiency(shared: SharedResources, users: np.ndarray, names: list[str]) -> dict[str, Any]:
    from allmrec.methods import get_method

    cfg = shared.cfg
    e, split, seed = cfg.efficiency, cfg.eval.split, cfg.eval.seed
    ds = shared.main.dataset
    out: dict[str, Any] = {"batch_size": e.batch_size, "train_steps": e.train_steps, "users": len(users), "train": {}, "inference": {}, "notes": []}
    for name in names:
        key = f"allmrec-{'paper' if name == 'paper' else 'best'}"
        res = shared.run(name)
        out["train"][key] = time_stage2_training(res, e.train_steps, e.batch_size)
        rec = get_method("allmrec").build(res, seed)
        out["inference"][key] = time_inference(lambda: evaluate_users(rec, ds, split, users, "rank"), len(users))
    rec = get_method("llm-only").build(shared.main, seed)
    out["inference"]["llm-only"] = time_inference(lambda: evaluate_users(rec, ds, split, users, "rank"), len(users))
    if cfg.baselines.enabled and cfg.baselines.tallrec:
        out.update(_time_tallrec(shared, users, out))
    ratios: dict[str, float] = {}
    for key in [k for k in out["train"] if k.startswith("allmrec")]:
        if "tallrec" in out["train"]:
            ratios[f"train: TALLRec / {key}"] = out["train"]["tallrec"]["seconds_per_step"] / out["train"][key]["seconds_per_step"]
        if "tallrec" in out["inference"]:
            ratios[f"inference: TALLRec / {key}"] = out["inference"]["tallrec"]["seconds_per_user"] / out["inference"][key]["seconds_per_user"]
    out["ratios"] = ratios
    llm = shared.main.llm[0]
    out["device"] = str(llm.get_input_embeddings().weight.device)
    out["llm"] = getattr(llm, "allmrec_identity", "")
    return out


def _time_tallrec(shared: SharedResources, users: np.ndarray, out: dict[str, Any]) -> dict[str, Any]:
    from allmrec.baselines.tallrec import tallrec_prompt_config, train_tallrec
    from allmrec.llm.reader import PromptReader
    from allmrec.recommend.llm import LLMRecommender

    cfg, e = shared.cfg, shared.cfg.efficiency
    ds, (llm, tok) = shared.main.dataset, shared.main.llm
    base = dataclasses.replace(shared.tallrec_config(), batch_size=e.batch_size, epochs=max(shared.tallrec_config().epochs, 1000), checkpoint_every=10**9)
    shared.drop_tallrec()
    train_tallrec(ds, llm, tok, dataclasses.replace(base, max_steps=1), None, progress=False)  # warm-up, as for A-LLMRec
    model, state = train_tallrec(ds, llm, tok, dataclasses.replace(base, max_steps=e.train_steps), None, progress=False)
    out["train"]["tallrec"] = {"steps": int(state["step"]), "seconds": float(state["seconds"]), "seconds_per_step": float(state["seconds"]) / max(int(state["step"]), 1)}
    rec = LLMRecommender(PromptReader(model, tok, ds.titles, ds.wording, tallrec_prompt_config(model), seed=cfg.eval.seed))
    out["inference"]["tallrec"] = time_inference(lambda: evaluate_users(rec, ds, cfg.eval.split, users, "rank"), len(users))
    del model, rec
    free_memory()
    return {}
