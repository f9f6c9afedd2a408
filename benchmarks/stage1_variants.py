"""Which stage 1 gives the better fusion, chosen on validation users only.

Each ``--runs`` folder is a run with its fusions fitted (``allmrec fuse``) and the same CF model
and options except ``stage1``. Each run's ``fusion`` (which reads the stage-1 similarities among
its features) is scored on the **validation** items of stage 2's training sample. Those users are
left out of every fusion's fitting, so the scores are out of sample. Gives Hit@1 overall and on cold
and warm items, with paired bootstrap intervals against the first run, and writes JSON::

    python benchmarks/stage1_variants.py --runs runs/q-frozen runs/q-top1 --out benchmarks/results/stage1_variants_ml100k.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from allmrec.align.stage2.examples import training_users
    from allmrec.eval.metrics import paired_bootstrap
    from allmrec.data.scenarios import item_groups
    from allmrec.pipeline.config import RunConfig
    from allmrec.pipeline.resources import Resources, RunFolder
    from allmrec.pipeline.steps import score_method
    from allmrec.utils.io import read_json, write_json
    from roofline import cpu_flags

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--methods", nargs="+", default=["fusion"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    out: dict = {"split": "valid", "machine": cpu_flags(), "runs": {}}
    hits: dict[str, dict[str, np.ndarray]] = {}
    users = None
    for run in args.runs:
        config, run_dir = RunConfig.layered(run, None, {}, [])
        res = Resources(config, RunFolder(run_dir))
        ds = res.dataset
        mine = training_users(ds, config.stage2().train)
        if users is not None and not np.array_equal(users, mine):
            sys.exit(f"{run}: stage 2's sample differs from {args.runs[0]}'s; the runs must share the data and stage-2 options")
        users = mine
        targets = np.array([ds.target(int(u), "valid") for u in users])
        cold, warm = item_groups(ds)
        groups = {"overall": np.ones(len(users), bool), "cold_items": np.isin(targets, cold), "warm_items": np.isin(targets, warm)}
        entry = {"stage1": read_json(run / "stage1" / "model.json")["stage1"], "stage1_epochs": len(read_json(run / "stage1" / "model.json")["history"]),
                 "fusion_fit": {k: read_json(run / "fusion" / "fusion" / "model.json").get(k) for k in ("fit_users", "es_users")}}
        hits[str(run)] = {}
        for method in args.methods:
            t0 = time.perf_counter()
            rank = score_method(res, method, users, "valid", "rank", config.eval().seed)["rank"]
            hit = (np.asarray(rank) == 0).astype(float)
            hits[str(run)][method] = hit
            entry[method] = {g: {"hit@1": round(float(hit[m].mean()), 4), "users": int(m.sum())} for g, m in groups.items()} | {"seconds": round(time.perf_counter() - t0, 1)}
        out["runs"][str(run)] = entry
    base = str(args.runs[0])
    for run in args.runs[1:]:
        out["runs"][str(run)]["vs_first"] = {m: {g: paired_bootstrap(hits[str(run)][m][mask], hits[base][m][mask]) for g, mask in groups.items()} for m in args.methods}
    out["users"] = int(len(users))
    write_json(args.out, out)
    for run, entry in out["runs"].items():
        print(run, {m: {g: v["hit@1"] for g, v in entry[m].items() if g != "seconds"} for m in args.methods}, entry.get("vs_first", ""))


if __name__ == "__main__":
    main()
