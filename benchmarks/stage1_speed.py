"""Stage-1 speed on a prepared dataset: seconds per epoch with the text encoder fine-tuned or frozen.

Usage::

    python benchmarks/stage1_speed.py --data ../shared/data/amazon-beauty --cf runs/cf/sasrec \
        [--users 640] [--threads 2] [--device cpu] [--mode both|finetune|frozen]

``--users N`` trains on the first N training users only and extrapolates to all of them (a full
fine-tuned epoch on 2 CPU cores takes a long time); the frozen mode is cheap enough for a full
epoch (``--users 0``). Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch

from allmrec.align import Stage1Config, train_stage1
from allmrec.align.stage1.training import _build_examples
from allmrec.cf import load_cf
from allmrec.data import load_preset, prepare
from allmrec.text import load_text_encoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/amazon-beauty")
    ap.add_argument("--preset", default="amazon-beauty")
    ap.add_argument("--cf", required=True, help="CF run folder (model.json + model.safetensors)")
    ap.add_argument("--users", type=int, default=640, help="training users to time (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="both", choices=["both", "finetune", "frozen"])
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
        cfg = Stage1Config(epochs=1, threads=args.threads, device=args.device, positions=args.positions, freeze_text_encoder=mode == "frozen")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train_stage1(sub, cf, copy.deepcopy(base), cfg, tmp, resume=False, progress=False)
            total = time.perf_counter() - t0
        h = res.history[0]
        per_example = h["train_seconds"] / h["examples"]
        print(json.dumps({
            "mode": mode, "device": args.device, "threads": args.threads, "positions": args.positions,
            "timed_examples": h["examples"], "batches": h["batches"], "epoch_loop_s": h["train_seconds"],
            "s_per_batch": round(h["train_seconds"] / h["batches"], 4), "cpu_s_per_batch": round(h["cpu_seconds"] / h["batches"], 4),
            "full_epoch_examples": full_examples, "est_full_epoch_min": round(per_example * full_examples / 60, 2),
            "est_full_epoch_min_idle": round(h["cpu_seconds"] / h["examples"] / args.threads * full_examples / 60, 2),
            "setup_and_checkpoint_s": round(total - h["train_seconds"], 2),
            "losses": {k: round(h[k], 5) for k in ("loss", "matching", "item_recon", "text_recon", "rec")},
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k in ("batch_size", "max_text_len", "lr")},
        }), flush=True)


if __name__ == "__main__":
    main()
