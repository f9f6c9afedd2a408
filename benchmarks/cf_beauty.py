"""Benchmark the CF backbones on Amazon Beauty: training throughput, evaluation speed, accuracy.

    python benchmarks/cf_beauty.py --data ../shared/data/amazon-beauty \\
        --backbones sasrec gru4rec nextitnet ncf --out runs/bench-cf

Each backbone trains with the paper's settings (Adam lr 1e-3, betas (0.9, 0.98), batch 128,
dim 50, max_len 50; early stopping on validation NDCG@10 only) into ``OUT/<backbone>/`` (an
interrupted run resumes), then is scored once on the test split: every user's 1 + 19 stored
candidates. Results are merged into ``OUT/results.json`` and ``OUT/results.md`` after each
backbone. Reference for SASRec on this split: pmixer/SASRec.pytorch reaches Hit@1 0.344 and
NDCG@10 0.551 (80 epochs).
"""

from __future__ import annotations

import argparse

import numpy as np
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from allmrec.cf import TrainCFConfig, evaluate_cf, train_cf
from allmrec.eval.users import evaluable
from allmrec.data import load_preset, prepare
from allmrec.utils.io import atomic_path, read_json, write_json

TARGET = {"sasrec": {"hit@1": 0.344, "ndcg@10": 0.551}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder of the amazon-beauty copy (sequences.txt, items.jsonl)")
    p.add_argument("--backbones", nargs="+", default=["sasrec", "gru4rec", "nextitnet", "ncf"])
    p.add_argument("--out", default="runs/bench-cf")
    p.add_argument("--cache", default=None, help="prepared-dataset cache folder (default: ALLMREC_HOME)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20, help="validations without a better NDCG@10 before stopping")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def run_one(ds, name: str, args: argparse.Namespace, out: Path) -> dict:
    config = TrainCFConfig(
        backbone=name,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        eval_every=args.eval_every,
        seed=args.seed,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    model, history = train_cf(ds, config, out / name, resume=True, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    train_s = sum(h["train_seconds"] for h in history)
    eval_s = sum(h.get("eval_seconds", 0.0) for h in history)
    seqs_per_s = [h["sequences_per_s"] for h in history]
    users = evaluable(ds, np.arange(ds.n_users))
    t1 = time.perf_counter()
    test = evaluate_cf(model, ds, "test", users)
    test_s = time.perf_counter() - t1
    best = max((h for h in history if "valid" in h), key=lambda h: h["valid"]["ndcg@10"])
    result = {
        "backbone": name,
        "config": asdict(config),
        "backbone_config": asdict(model.config),
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "valid_at_best": best["valid"],
        "test": test,
        "test_users": len(users),
        "train_seconds_total": train_s,
        "valid_seconds_total": eval_s,
        "wall_seconds_this_call": wall,
        "train_sequences_per_s_median": sorted(seqs_per_s)[len(seqs_per_s) // 2],
        "eval_users_per_s": len(users) / test_s,
        "test_eval_seconds": test_s,
    }
    if name in TARGET:
        result["target"] = TARGET[name]
        result["meets_target"] = all(test[k] >= v for k, v in TARGET[name].items())
    return result


def markdown(results: dict, meta: dict) -> str:
    lines = [
        "# CF backbones on Amazon Beauty (test: 1 + 19 stored candidates per user)",
        "",
        f"Dataset: {meta['dataset']} ({meta['n_users']} users, {meta['n_items']} items), fingerprint {meta['fingerprint']}.",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s). The CPU was shared with other jobs,",
        "so the timings are pessimistic.",
        "",
        "| backbone | Hit@1 | NDCG@10 | Hit@10 | MRR | best epoch / run | train seq/s | eval users/s | train+valid time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results.values():
        t = r["test"]
        total = (r["train_seconds_total"] + r["valid_seconds_total"]) / 60
        lines.append(
            f"| {r['backbone']} | {t['hit@1']:.4f} | {t['ndcg@10']:.4f} | {t['hit@10']:.4f} | {t['mrr']:.4f} | "
            f"{r['best_epoch']} / {r['epochs_run']} | {r['train_sequences_per_s_median']:.0f} | {r['eval_users_per_s']:.0f} | {total:.1f} min |"
        )
    targets = [r for r in results.values() if "target" in r]
    if targets:
        lines.append("")
        for r in targets:
            tgt = ", ".join(f"{k} >= {v}" for k, v in r["target"].items())
            lines.append(f"Target for {r['backbone']} ({tgt}, pmixer/SASRec.pytorch on this split): {'met' if r['meets_target'] else 'NOT met'}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = prepare(load_preset("amazon-beauty", path=str(Path(args.data).resolve())), cache_root=args.cache)
    meta = {
        "dataset": ds.name,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "fingerprint": ds.fingerprint,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, python {sys.version.split()[0]}",
        "torch": torch.__version__,
        "threads": args.threads,
    }
    results_path = out / "results.json"
    results = read_json(results_path).get("results", {}) if results_path.exists() else {}
    for name in args.backbones:
        print(f"== {name}", flush=True)
        results[name] = run_one(ds, name, args, out)
        t = results[name]["test"]
        print(f"{name}: test Hit@1 {t['hit@1']:.4f} NDCG@10 {t['ndcg@10']:.4f} (best epoch {results[name]['best_epoch']})", flush=True)
        write_json(results_path, {"meta": meta, "results": results})
        with atomic_path(out / "results.md") as tmp:
            tmp.write_text(markdown(results, meta))
    print(json.dumps({k: {m: round(v, 4) for m, v in r["test"].items()} for k, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
