"""Batch-scoring throughput of a trained run on its whole test split (users/s, 1 + 19 stored
candidates per user), per method, in this process.

    python benchmarks/batch_scoring.py --run runs/allround-beauty [--methods cf fusion allmrec] [--llm-users 100]

Methods without an LLM forward score every test user. A method with one (A-LLMRec with its
LLM path, forced on when the run's check did not adopt it) is timed on the first
``--llm-users`` seeded test users and its whole-split time extrapolated (one forward per user).
Writes ``benchmarks/results/batch_scoring_<run name>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from allround import forced_llm_recommender

    from allmrec.eval.evaluate import evaluate_users
    from allmrec.eval.report import machine_description
    from allmrec.eval.users import sample_users, split_users
    from allmrec.methods import get_method
    from allmrec.pipeline.config import RunConfig
    from allmrec.pipeline.resources import Resources, RunFolder
    from allmrec.utils.io import write_json
    from roofline import cpu_flags

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--methods", nargs="+", default=["cf", "fusion"])
    ap.add_argument("--llm-users", type=int, default=100, help="test users timed with the LLM path (0: skip)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    config, run_dir = RunConfig.layered(args.run, None, {}, [])
    res = Resources(config, RunFolder(run_dir))
    ds = res.dataset
    users = split_users(ds, "test")
    out = {"run": str(args.run), "data": ds.name, "test_users": int(len(users)), "machine": machine_description(), "cpu_flags": cpu_flags(),
           "threads": os.environ.get("OMP_NUM_THREADS", "torch default"), "methods": {}}
    for name in args.methods:
        rec = get_method(name).build(res, config.eval().seed)
        t = time.perf_counter()
        cols = evaluate_users(rec, ds, "test", users)
        dt = time.perf_counter() - t
        out["methods"][get_method(name).label(res)] = {"users": int(len(users)), "seconds": round(dt, 2), "users_per_s": round(len(users) / dt, 1),
                                                       "hit@1": round(float((cols["rank"] == 0).mean()), 4)}
        print(name, out["methods"][get_method(name).label(res)], flush=True)
    if args.llm_users:
        sub = sample_users(users, args.llm_users, config.eval().seed)
        rec = forced_llm_recommender(res)
        evaluate_users(rec, ds, "test", sub[:2])  # warm-up: the LLM loaded, the first forward paid
        t = time.perf_counter()
        evaluate_users(rec, ds, "test", sub)
        dt = time.perf_counter() - t
        per_user = dt / len(sub)
        out["methods"]["A-LLMRec, LLM path forced"] = {"users": int(len(sub)), "seconds": round(dt, 2), "users_per_s": round(1 / per_user, 3),
                                                      "whole_split_hours_extrapolated": round(per_user * len(users) / 3600, 2)}
        print(out["methods"]["A-LLMRec, LLM path forced"], flush=True)
    dest = args.out or ROOT / "benchmarks" / "results" / f"batch_scoring_{args.run.name}.json"
    write_json(dest, out)
    print(dest)


if __name__ == "__main__":
    main()
