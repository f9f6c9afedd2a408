"""The pipeline's steps on one run folder; each reuses or resumes what is already there and
returns its result (the CLI prints).

    raw data -> prepared dataset (cache) -> CF model (run/cf) -> stage 1 (run/stage1)
             -> fusions (run/fusion) -> stage 2 (run/stage2) -> evaluation (run/results)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np

from allmrec.pipeline.resources import Resources

log = logging.getLogger(__name__)

MIN_FIT_USERS = 50  # a fusion fits a few hundred weights: this many users are enough to leave stage 2's sample out


def prepare(res: Resources, force: bool = False):
    """The prepared dataset (from the cache unless ``force``)."""
    if force:
        from allmrec.data import prepare as prepare_data

        prepare_data(res.config.data(), force=True)
        res.forget("dataset")
    return res.dataset


def train_cf(res: Resources) -> tuple[Any, bool]:
    """``(model, reused)``: the CF model, trained (or resumed) unless a finished run with the
    same options is there."""
    from allmrec.cf import train_cf as train

    ds, folder = res.dataset, res.folder
    folder.save_config(res.config)
    if folder.finished("cf"):
        _check_finished_cf(res)
        return res.cf, True
    model, _ = train(ds, res.config.cf(), folder.cf, resume=True, progress=True)
    res.forget("cf")
    return model, False


def _check_finished_cf(res: Resources) -> None:
    """A finished CF run is reused only for the options it was trained with."""
    import dataclasses

    from allmrec.config import resumable_fields
    from allmrec.training import latest_checkpoint
    from allmrec.utils.io import read_json

    ckpt = latest_checkpoint(res.folder.cf)
    if ckpt is None:  # a model copied in from elsewhere
        return
    saved = (read_json(ckpt / "trainer_state.json").get("identity") or {}).get("config", {})
    asked = json.loads(json.dumps(dataclasses.asdict(res.config.cf()), default=list))
    free = resumable_fields(type(res.config.cf()))
    for key, value in asked.items():
        if key not in free and saved.get(key) != value:
            raise ValueError(f"{res.folder.cf}: the CF model there was trained with cf.{key}={saved.get(key)!r}, "
                             f"but cf.{key}={value!r} is asked for; use another --run folder")


def align(res: Resources):
    """Stage 1 (resumes an interrupted run; a finished one is returned as it is)."""
    from allmrec.align.stage1 import train_stage1

    ds = res.dataset
    cf, _ = train_cf(res)
    res.folder.save_config(res.config)
    result = train_stage1(ds, cf, res.config.text_encoder, res.config.stage1(), res.folder.stage1, resume=True, progress=True)
    res.forget("stage1")
    return result


def fuse(res: Resources) -> dict[str, Any]:
    """Fit the run's two fusions (trains the CF model and stage 1 first when missing): ``fusion``
    (the best mode's prior, ``fusion`` config section) and ``control`` (SASRec + text, no LLM).
    Both leave out stage 2's held-out users and, when stage 2 trains on a sample of users, that
    sample, unless that would leave fewer than ``MIN_FIT_USERS`` users (and fewer than the sample
    has: few-shot data), when they fit on it too; one already fitted for the same CF model,
    options and users is kept.
    Returns ``{name: model.json}`` of each."""
    from allmrec.align.stage2.examples import curve_users, training_users
    from allmrec.fusion.training import control_config, fit_run_fusion
    from allmrec.utils.fingerprint import cf_identity
    from allmrec.utils.io import read_json

    ds = res.dataset
    cf, _ = train_cf(res)
    cfg = res.config.fusion()
    if {"stage1_q", "stage1_e"} & set(cfg.tables) and not res.folder.finished("stage1"):
        align(res)
    res.folder.save_config(res.config)
    s2 = res.config.stage2().train
    excluded = curve_users(ds, s2)  # the LLM-path check's users: unseen by the fusion and by stage 2
    if s2.max_train_users is not None:  # stage 2 trains on a sample: the fusion leaves it out too (out-of-sample prior scores)
        sample = training_users(ds, s2)
        left = np.setdiff1d(np.flatnonzero(np.asarray(ds.train_users, dtype=bool)), np.union1d(excluded, sample))
        if len(left) >= min(MIN_FIT_USERS, len(sample)):
            excluded = np.union1d(excluded, sample)
        else:  # few training users (few-shot): the fusion also fits on stage 2's; the LLM path's check stays out-of-sample
            log.warning("fusion: leaving out stage 2's %d training users would leave %d to fit on; fitting on them too", len(sample), len(left))
    control = control_config(seed=cfg.seed, max_users=cfg.max_users, es_fraction=cfg.es_fraction)
    out = {}
    for name, config in (("fusion", cfg), ("control", control)):
        where = res.folder.fusion / name
        wanted = {"cf": cf_identity(cf), "fusion": dataclasses.asdict(config), "excluded": int(len(excluded))}
        if not (res.folder.finished(f"fusion/{name}") and read_json(where / "done.json").get("inputs") == wanted):
            fit_run_fusion(res, config, excluded, where, inputs=wanted)
        out[name] = read_json(where / "model.json")
    res.forget("fusion", "control", "stage2")
    return out


def prior(res: Resources, cfg) -> Any:
    """The fitted fusion a ``prior: fusion`` stage 2 adds its LLM path to (fitted when missing)."""
    if not (cfg.model.residual and cfg.model.prior == "fusion"):
        return None
    fuse(res)
    return res.fusion


def train_stage2(res: Resources):
    """Stage 2 (trains the CF model, stage 1 and the fusion first when they are missing)."""
    from allmrec.align.stage2 import train_stage2 as train

    ds = res.dataset
    cf, _ = train_cf(res)
    cfg = res.config.stage2()
    if cfg.model.item_table == "joint" and not res.folder.finished("stage1"):
        align(res)
    fusion = prior(res, cfg)
    res.folder.save_config(res.config)
    table = res.item_table(cfg.model.item_table, cfg.train.seed)
    llm, tok = res.llm
    model, state = train(ds, cf, table, llm, tok, cfg, res.folder.stage2, resume=True, progress=True, prior=fusion)
    res.forget("stage2")
    return model, state


# ---- evaluation -----------------------------------------------------------------------------------
def evaluation_users(res: Resources, split: str, max_users: int | None = None) -> np.ndarray:
    """The users ``allmrec evaluate`` scores: the split's evaluable users, or a seeded sample of
    ``max_users`` (default ``eval.max_users``) of them, the same for every method."""
    from allmrec.eval.users import sample_users, split_users

    opts = res.config.eval()
    limit = max_users if max_users is not None else opts.max_users
    return sample_users(split_users(res.dataset, split), limit, opts.seed, "eval-users", split)


def score_method(res: Resources, name: str, users: np.ndarray, split: str, mode: str, seed: int,
                 outputs: list[dict[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """Per-user columns (``rank``; ``gen_hit``/``gen_no_match`` in generation mode) of method ``name``."""
    from allmrec.eval.evaluate import evaluate_users
    from allmrec.methods import get_method

    recommender = get_method(name).build(res, seed)
    return evaluate_users(recommender, res.dataset, split, users, mode if get_method(name).uses_llm else "rank", outputs)


def evaluate(res: Resources) -> dict[str, Any]:
    """Score every method in ``eval.methods`` on the same users and stored candidates; report
    overall and per scenario; write ``results/<split>.json`` and ``.md``."""
    from allmrec.data import get_scenario
    from allmrec.eval.metrics import metrics_from_columns
    from allmrec.eval.report import write_results
    from allmrec.methods import get_method

    opts, ds = res.config.eval(), res.dataset
    users = evaluation_users(res, opts.split)
    scenarios = {name: np.isin(users, get_scenario(ds, name).eval_users) for name in opts.scenarios}
    results: dict[str, Any] = {"dataset": ds.name, "fingerprint": ds.fingerprint, "split": opts.split, "users": int(len(users)),
                               "user_sample_seed": opts.seed if opts.max_users else None, "config": res.config.values, "methods": {},
                               "labels": {}, "per_user": {"users": users.tolist()}}
    for name in opts.methods:
        t0 = time.perf_counter()
        outputs: list[dict[str, Any]] = []
        columns = score_method(res, name, users, opts.split, opts.mode, opts.seed, outputs)
        seconds = time.perf_counter() - t0
        entry: dict[str, Any] = {"seconds": round(seconds, 2), "seconds_per_user": round(seconds / max(len(users), 1), 4)}
        for scenario, mask in scenarios.items():
            entry[scenario] = metrics_from_columns({c: v[mask] for c, v in columns.items()})
        results["methods"][name] = entry
        results["labels"][name] = get_method(name).label(res)
        results["per_user"][name] = {c: v.tolist() for c, v in columns.items()}
        if outputs:
            _write_generations(res, name, outputs)
    rows = {f"{results['labels'][m]} / {s}": results["methods"][m][s] for m in opts.methods for s in scenarios}
    columns = ["hit@1", "hit@5", "hit@10", "ndcg@10", "mrr", "gen_hit@1", "gen_no_match", "users"]
    json_path, md_path = write_results(res.folder.results, opts.split, results, rows, columns,
                                       title=f"{ds.name}: {opts.split} users, 1 + {ds.test_candidates.shape[1] - 1} stored candidates")
    results["files"] = {"json": str(json_path), "markdown": str(md_path)}
    return results


def _write_generations(res: Resources, method: str, rows: list[dict[str, Any]]) -> None:
    from allmrec.utils.io import atomic_path

    path = res.folder.results / f"generations-{method}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps({k: r[k] for k in ("user", "target", "generated", "answer", "matched", "gen_hit")}) + "\n" for r in rows))


# ---- recommend ----------------------------------------------------------------------------------------
def recommend(res: Resources, history: list[str], candidates: list[str] | None, top: int = 10, method: str = "allmrec") -> list[dict[str, Any]]:
    """Rank ``candidates`` (original item ids; default: 19 seeded random unseen items) for a
    history of original item ids; the best ``top`` as ``{"item_id", "title", "score"}``."""
    from allmrec.methods import get_method
    from allmrec.utils.seed import rng

    ds = res.dataset
    index = {str(iid): i for i, iid in enumerate(ds.item_ids) if i > 0}
    unknown = [h for h in history + (candidates or []) if h not in index]
    if unknown:
        raise KeyError(f"unknown item id(s) for dataset {ds.name}: {', '.join(unknown[:5])}")
    hist = [index[h] for h in history]
    if candidates:
        cands = [index[c] for c in candidates]
    else:
        pool = np.setdiff1d(np.arange(1, ds.n_items + 1), hist)
        cands = rng(0, "recommend").choice(pool, size=min(19, len(pool)), replace=False).tolist()
    ranked = get_method(method).build(res, res.config.eval().seed).recommend(hist, cands)[:top]
    return [{"item_id": str(ds.item_ids[i]), "title": ds.titles[i], "score": s} for i, s in ranked]


def demo(res: Resources) -> tuple[dict[str, Any], dict[str, float]]:
    """Every step on the configured dataset; returns the evaluation results and step times (s)."""
    timings: dict[str, float] = {}
    for name, step in (("prepare", prepare), ("CF model", train_cf), ("stage 1", align), ("stage 2", train_stage2)):
        t0 = time.perf_counter()
        step(res)
        timings[name] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    results = evaluate(res)
    timings["evaluate"] = round(time.perf_counter() - t0, 1)
    return results, timings

