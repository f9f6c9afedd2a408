"""Stage-1 speed on a prepared dataset: seconds per epoch with the text encoder fine-tuned or frozen.

Usage::

    python benchmarks/stage1_speed.py --data ../shared/data/amazon-beauty --cf runs/cf/sasrec \
        [--users 640] [--threads 2] [--device cpu] [--mode both|finetune|frozen|top] [--finetune-layers 1]

Modes: ``finetune`` (all of MiniLM, the paper), ``top`` (only its top ``--finetune-layers``
layers, the lower ones run once per item text), ``frozen`` (the "SBERT frozen" ablation).
``--users N`` trains on the first N training users only and extrapolates the per-batch time to
all of them (a fully fine-tuned epoch on 2 CPU cores takes a long time). What a run computes
once (the CF users' states, the frozen table or the frozen layers' pass) is timed apart, as
``once_per_run_s``. Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time

import numpy as np
import torch

from allmrec.align import Stage1Config
from allmrec.align.stage1.training import Stage1Task, _build_examples
from allmrec.cf import load_cf
from allmrec.data import load_preset, prepare
from allmrec.text import load_text_encoder
from roofline import cpu_flags  # same folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/amazon-beauty")
    ap.add_argument("--preset", default="amazon-beauty")
    ap.add_argument("--cf", required=True, help="CF run folder (model.json + model.safetensors)")
    ap.add_argument("--users", type=int, default=640, help="training users to time (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="both", choices=["both", "finetune", "frozen", "top"])
    ap.add_argument("--finetune-layers", type=int, default=1, help="top layers fine-tuned in --mode top")
    ap.add_argument("--positions", default="last", choices=["last", "all"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = prepare(load_preset(args.preset, path=args.data))
    cf = load_cf(args.cf)
    full_examples = len(_build_examples(ds, args.positions, cf.config.max_len).users)
    sub = ds
    if args.users > 0:
        sub = copy.copy(ds)
        mask = np.zeros_like(ds.train_users)
        mask[np.flatnonzero(ds.train_users)[: args.users]] = True
        sub.train_users = mask
    base = load_text_encoder("default")
    modes = ["finetune", "frozen"] if args.mode == "both" else [args.mode]
    for mode in modes:
        cfg = Stage1Config(epochs=1, threads=args.threads, device=args.device, positions=args.positions, freeze_text_encoder=mode == "frozen",
                           finetune_layers=args.finetune_layers if mode == "top" else 0)
        enc = copy.deepcopy(base)
        enc.max_seq_length = cfg.max_text_len
        task = Stage1Task(sub, cf, enc, cfg, None)
        with task.session():
            t0, c0 = time.perf_counter(), time.process_time()
            task.inputs()  # once per run: CF user states, and the frozen table or the frozen layers' pass over every item text
            once, once_cpu = time.perf_counter() - t0, time.process_time() - c0
            task.start_epoch(0)
            t0, c0 = time.perf_counter(), time.process_time()
            losses = [task.step(0, i) for i in range(task.steps_per_epoch())]
            loop, loop_cpu = time.perf_counter() - t0, time.process_time() - c0
            parts = task.end_epoch(0)
        n = len(losses)
        full_batches = -(-full_examples // cfg.batch_size)
        print(json.dumps({
            "mode": mode, "device": args.device, "threads": args.threads, "positions": args.positions,
            "timed_examples": len(task.examples.users), "batches": n, "epoch_loop_s": round(loop, 2),
            "s_per_batch": round(loop / n, 4), "cpu_s_per_batch": round(loop_cpu / n, 4),
            "full_epoch_examples": full_examples, "est_full_epoch_min": round(loop / n * full_batches / 60, 2),
            "est_full_epoch_min_idle": round(loop_cpu / n / args.threads * full_batches / 60, 2),
            "once_per_run_s": round(once, 2), "once_per_run_cpu_s": round(once_cpu, 2),
            "losses": {"loss": round(float(np.mean(losses)), 5), **{k: round(parts[k], 5) for k in ("matching", "item_recon", "text_recon", "rec")}},
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k in ("batch_size", "max_text_len", "lr", "finetune_layers")},
            "cpu_flags": cpu_flags(), "omp_threads_env": os.environ.get("OMP_NUM_THREADS"),
        }), flush=True)


if __name__ == "__main__":
    main()
