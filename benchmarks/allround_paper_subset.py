"""The paper-mode row of the all-round comparison, on a stated subset: the all-round run's
SASRec and stage 1 (copied, not retrained), stage 2 in the paper's mode (next-token loss on
the target title) on a seeded sample of training users, ranked by title likelihood on the first
``--users`` of the all-round benchmark's 2,000 test users. Merged into
``benchmarks/results/allround_beauty.json`` as ``paper_mode_subset``.

    python benchmarks/allround_paper_subset.py --run runs/allround-beauty [--users 250] [--train-users 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from allmrec.eval.evaluate import evaluate_users
    from allmrec.eval.metrics import hit_interval, paired_bootstrap
    from allmrec.data import get_scenario
    from allmrec.methods import get_method
    from allmrec.pipeline import steps
    from allmrec.pipeline.config import RunConfig
    from allmrec.pipeline.resources import Resources, RunFolder
    from allmrec.utils.io import read_json, write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "allround-beauty")
    ap.add_argument("--users", type=int, default=250)
    ap.add_argument("--train-users", type=int, default=400)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "allround_beauty.json")
    args = ap.parse_args()

    paper_dir = args.run.with_name(args.run.name + "-paper")
    for step in ("cf", "stage1"):  # the same frozen models as every other row
        if not (paper_dir / step / "done.json").exists():
            shutil.rmtree(paper_dir / step, ignore_errors=True)
            shutil.copytree(args.run / step, paper_dir / step)
    sets = ["stage2.mode=paper", f"stage2.train.max_train_users={args.train_users}", "stage2.train.epochs=1"]
    config, run_dir = RunConfig.layered(paper_dir, args.run / "config.yaml", {}, sets)
    res = Resources(config, RunFolder(run_dir))
    t0 = time.perf_counter()
    steps.train_stage2(res)
    train_s = time.perf_counter() - t0

    test = read_json(args.run / "results" / "test.json")
    users = np.asarray(test["per_user"]["users"])[: args.users]
    sasrec = np.asarray(test["per_user"]["cf"]["rank"])[: args.users]
    best = np.asarray(test["per_user"]["allmrec"]["rank"])[: args.users]
    t0 = time.perf_counter()
    ranks = evaluate_users(get_method("allmrec").build(res, config.eval().seed), res.dataset, "test", users)["rank"]
    eval_s = time.perf_counter() - t0
    label = get_method("allmrec").label(res)
    row = {}
    for s in ("overall", "cold_items", "warm_items"):
        m = np.isin(users, get_scenario(res.dataset, s).eval_users)
        row[s] = {"hit@1": float((ranks[m] == 0).mean()) if m.any() else None, "users": int(m.sum()), "hit@1_ci": list(hit_interval(ranks[m] == 0)),
                  "SASRec hit@1 same users": float((sasrec[m] == 0).mean()) if m.any() else None,
                  "vs SASRec": paired_bootstrap(ranks[m] == 0, sasrec[m] == 0), "vs best mode": paired_bootstrap(ranks[m] == 0, best[m] == 0)}
    out = read_json(args.results)
    out["paper_mode_subset"] = {"label": label, "users": int(len(users)), "which": f"the first {len(users)} of the benchmark's test users",
                                "train_users": args.train_users, "epochs": 1, "train_seconds": round(train_s, 1),
                                "eval_seconds_per_user": round(eval_s / len(users), 3), **row}
    write_json(args.results, out)
    print(json.dumps(out["paper_mode_subset"], indent=1))


if __name__ == "__main__":
    main()
