"""The paper's modality-aware baselines CTRL and RECFORMER on Amazon Beauty.

    python benchmarks/baselines_beauty.py --data ../shared/data/amazon-beauty --out runs/bench-baselines \\
        [--preset recommended|smoke] [--methods ctrl recformer] [--users 2000] \\
        [--set recformer.max_train_users=8000 --set ctrl.backbone_options.pretrain_epochs=10]

Each method trains with :func:`allmrec.cf.train_cf` into ``OUT/<method>/`` (an interrupted run
resumes, pre-training included) and is scored on the stored 1 + 19 test candidates of a seeded
sample of ``--users`` test users: the users ``allmrec evaluate`` samples with the default
evaluation seed (2024), i.e. the same users as the all-round benchmark. Reported:
Hit@1 (Wilson 95 % interval), NDCG@10 and the rest overall and for cold / warm test items (bottom
/ top 35 % of items by training count), each user's rank, paired-bootstrap differences of Hit@1
against the all-round benchmark's methods on the same users (``--reference``: its run's
``results/test.json``, when it holds these users), training time (pre-training steps, fine-tuning epochs,
validation, and the wall time of this call) and inference cost (item table and users). Results
are merged into ``--results`` (default ``benchmarks/results/baselines_beauty.json``) after each
method. ``--set METHOD.KEY=VALUE`` overrides a preset's TrainCFConfig field (YAML value; dotted
keys reach into ``backbone_options``).

The ``recommended`` preset is the size meant for the 2-core CPU (see ``RECOMMENDED``); ``smoke``
only checks that everything runs (minutes, meaningless numbers).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from allmrec.cf import TrainCFConfig, score_candidates, train_cf
from allmrec.checkpoint import latest_checkpoint
from allmrec.data import load_preset, prepare
from allmrec.data.scenarios import item_groups
from allmrec.eval.metrics import hit_interval, paired_bootstrap, ranking_metrics, target_ranks
from allmrec.eval.report import machine_description
from allmrec.eval.users import sample_users, split_users
from allmrec.utils.io import read_json, write_json
from allmrec.utils.seed import rng

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 2024  # allmrec.pipeline.EvalOptions.seed

# Sized for the 2-core CPU; measured with this preset (1 thread, other jobs on the cores;
# benchmarks/results/baselines_beauty.json):
# CTRL (35 min): MiniLM encodes the 22k training users' prompts once (most of the time),
#   20 pre-training epochs (8.8 min), SASRec's training with the paper's settings (5.3 min).
# RECFORMER (~52 min): MiniLM at 256 tokens; 40 pre-training steps of 16 users (~30 s each with
#   three jobs on the cores; 19.8 min), one fine-tuning epoch of 100 steps (~17 s each; 28 min),
#   ~3 min per encoding of the 12,101-item table (the validation and the test need one),
#   ~0.1 s per test user.
RECOMMENDED = {
    "ctrl": dict(backbone="ctrl", backbone_options=dict(pretrain_epochs=20, pretrain_batch_size=128, pretrain_users=0), epochs=200, patience=20),
    "recformer": dict(backbone="recformer", backbone_options=dict(max_tokens=256, pretrain_epochs=1, pretrain_users=640, pretrain_batch_size=16, save_every=25),
                      epochs=1, batch_size=16, lr=5e-5, patience=0, max_train_users=1600, max_valid_users=300),
}
SMOKE = {
    "ctrl": dict(backbone="ctrl", backbone_options=dict(pretrain_epochs=2, pretrain_users=2000), epochs=3, patience=0, max_valid_users=1000),
    "recformer": dict(backbone="recformer", backbone_options=dict(max_tokens=128, pretrain_epochs=1, pretrain_users=32, pretrain_batch_size=16, save_every=1),
                      epochs=1, batch_size=16, lr=5e-5, patience=0, max_train_users=32, max_valid_users=50),
}


def benchmark_users(ds, n: int, seed: int = EVAL_SEED) -> np.ndarray:
    """The seeded test users ``allmrec evaluate`` scores (``--max-users n``, default seed)."""
    return sample_users(split_users(ds, "test"), n, seed, "eval-users", "test")


def apply_overrides(presets: dict, items: list[str]) -> dict:
    """``METHOD.KEY=VALUE`` (``METHOD.backbone_options.KEY=VALUE``) into a copy of ``presets``."""
    presets = copy.deepcopy(presets)
    for item in items:
        path, sep, value = item.partition("=")
        keys = path.split(".")
        if not sep or len(keys) < 2 or keys[0] not in presets:
            raise SystemExit(f"--set {item!r}: expected METHOD.KEY=VALUE with METHOD in {', '.join(presets)}")
        target = presets[keys[0]]
        for k in keys[1:-1]:
            target = target.setdefault(k, {})
        target[keys[-1]] = yaml.safe_load(value)
    return presets


def summary(ranks: np.ndarray) -> dict:
    m = ranking_metrics(ranks)
    m["hit@1_ci95"] = list(hit_interval(ranks == 0))
    m["users"] = int(len(ranks))
    return m


def run_method(ds, name: str, options: dict, users: np.ndarray, groups: dict, out: Path, progress: bool) -> dict:
    config = TrainCFConfig(**options)
    t0 = time.perf_counter()
    model, history = train_cf(ds, config, out / name, resume=True, progress=progress)
    wall = time.perf_counter() - t0
    pretrain_ckpt = latest_checkpoint(out / name / "pretrain")
    pretrain = read_json(pretrain_ckpt / "trainer_state.json") if pretrain_ckpt else {}
    t1 = time.perf_counter()
    model.item_embeddings()  # RECFORMER encodes (and caches) its item table here; free for CTRL
    t2 = time.perf_counter()
    ranks = target_ranks(score_candidates(model, ds, "test", users))
    t3 = time.perf_counter()
    validated = [h for h in history if "valid" in h]
    best = max(validated, key=lambda h: h["valid"]["ndcg@10"]) if validated else None
    return {
        "ranks": ranks.tolist(),
        "config": asdict(config),
        "backbone_config": asdict(model.config),
        "metrics": {g: summary(ranks[mask]) for g, mask in groups.items()},
        "training": {
            "pretrain_steps": pretrain.get("step"), "pretrain_epochs": pretrain.get("epoch"), "pretrain_seconds": pretrain.get("seconds"),
            "epochs_run": len(history), "best_epoch": best["epoch"] if best else None,
            "train_seconds": sum(h["train_seconds"] for h in history), "valid_seconds": sum(h.get("eval_seconds", 0.0) for h in history),
            "wall_seconds_this_call": wall,
        },
        "inference": {"item_table_seconds": t2 - t1, "user_seconds": t3 - t2, "seconds_per_user": (t3 - t2) / max(len(users), 1),
                      "seconds_per_user_with_table": (t3 - t1) / max(len(users), 1)},
    }


def paired_with_reference(ranks: np.ndarray, users: np.ndarray, groups: dict, reference: dict) -> dict:
    """Hit@1 differences (paired bootstrap) against every method of an all-round ``test.json``."""
    order = {int(u): i for i, u in enumerate(reference["per_user"]["users"])}
    if any(int(u) not in order for u in users):
        return {}
    rows = np.array([order[int(u)] for u in users])
    out = {}
    for method, label in reference["labels"].items():
        theirs = np.asarray(reference["per_user"][method]["rank"])[rows]
        out[f"vs {label}"] = {g: paired_bootstrap(ranks[m] == 0, theirs[m] == 0) for g, m in groups.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--out", default="runs/bench-baselines", help="run folders, one per method")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "baselines_beauty.json"))
    ap.add_argument("--preset", choices=["recommended", "smoke"], default="recommended")
    ap.add_argument("--methods", nargs="+", choices=["ctrl", "recformer"], default=["ctrl", "recformer"])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE")
    ap.add_argument("--reference", default="runs/allround-beauty/results/test.json",
                    help="the all-round benchmark's per-user results on the same users (paired intervals)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    presets = apply_overrides(RECOMMENDED if args.preset == "recommended" else SMOKE, args.set)
    ds = prepare(load_preset("amazon-beauty", path=str(Path(args.data).resolve())))
    users = benchmark_users(ds, args.users)
    cold, warm = item_groups(ds)
    targets = ds.test_candidates[users, 0]
    groups = {"overall": np.ones(len(users), bool), "cold_items": np.isin(targets, cold), "warm_items": np.isin(targets, warm)}
    results_path = Path(args.results)
    results = read_json(results_path) if results_path.exists() else {"methods": {}}
    results.update({"dataset": ds.name, "fingerprint": ds.fingerprint, "users": len(users), "eval_seed": EVAL_SEED, "preset": args.preset,
                    "machine": machine_description(), "group_sizes": {g: int(m.sum()) for g, m in groups.items()}})
    reference_path = ROOT / "benchmarks" / "results" / "allround_beauty.json"
    if reference_path.exists() and read_json(reference_path).get("users") == len(users):
        sas = read_json(reference_path)["methods"]["SASRec"]
        if {g: int(sas[g]["users"]) for g in groups} != results["group_sizes"]:
            raise SystemExit(f"the user sample differs from {reference_path.name}'s (group sizes {results['group_sizes']})")
        results["reference_sasrec_same_users"] = {g: {k: sas[g][k] for k in ("hit@1", "ndcg@10")} for g in groups}
    reference = read_json(args.reference) if Path(args.reference).exists() else None
    out = Path(args.out)
    for name in args.methods:
        print(f"== {name} ({args.preset})", flush=True)
        previous = results["methods"].get(name) or {}
        row = results["methods"][name] = run_method(ds, name, presets[name], users, groups, out, not args.no_progress)
        resumed = previous.get("config") == json.loads(json.dumps(row["config"]))  # the same run: its earlier calls did the work
        earlier = previous.get("training", {}).get("wall_seconds_calls", []) if resumed else []
        row["training"]["wall_seconds_calls"] = earlier + [row["training"]["wall_seconds_this_call"]]
        if reference is not None:
            row["paired_hit@1"] = paired_with_reference(np.asarray(row["ranks"]), users, groups, reference)
        write_json(results_path, results)
        m = row["metrics"]
        print(f"{name}: Hit@1 {m['overall']['hit@1']:.4f} NDCG@10 {m['overall']['ndcg@10']:.4f} "
              f"cold Hit@1 {m['cold_items']['hit@1']:.4f} warm Hit@1 {m['warm_items']['hit@1']:.4f}", flush=True)
    print(json.dumps({k: {"metrics": v["metrics"]["overall"], "training": v["training"], "inference": v["inference"],
                          "paired_hit@1": {ref: d["overall"] for ref, d in v.get("paired_hit@1", {}).items()}} for k, v in results["methods"].items()}, indent=1))


if __name__ == "__main__":
    main()
