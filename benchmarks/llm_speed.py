"""Stage-2 step time and LLM inference time per user with the bundled SmolLM2, bf16 vs fp32.

Usage::

    python benchmarks/llm_speed.py --data ../shared/data/amazon-beauty [--threads 2] \
        [--dtypes bfloat16 float32] [--steps 4] [--users 4] [--device cpu]

Realistic prompts: real Amazon Beauty sequences and titles (cut to 16 tokens), 10 history items,
20 candidates (the truth + 19 untouched items), batch 4 for training. The CF model is a stand-in
(mean of random item vectors, dim 50) and the joint table random (d' = 128): neither changes the
LLM's cost. Prints one JSON line per dtype.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from allmrec.align import Stage2Config, Stage2Model, train_stage2
from allmrec.data.dataset import SequenceDataset
from allmrec.llm import LLMConfig, build_prompt, display_titles, load_llm, sequence_logprobs, splice
from allmrec.llm.testing import TinyCF
from allmrec.cf.base import CFConfig
from allmrec.recommend import InferenceConfig, evaluate_llm


def beauty_subset(folder: Path, n_users: int, seed: int = 0) -> SequenceDataset:
    items: dict[str, str] = {}
    with open(folder / "items.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            items[row["item_id"]] = row.get("title") or row["item_id"]
    ids = sorted(items)
    index = {a: i + 1 for i, a in enumerate(ids)}
    seqs, users = [], []
    with open(folder / "sequences.txt") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) - 1 >= 13:  # enough history for 10 shown items
                users.append(parts[0])
                seqs.append(np.array([index[a] for a in parts[1:]], dtype=np.int64))
            if len(seqs) == n_users:
                break
    gen = np.random.default_rng(seed)

    def cands(pos: int) -> np.ndarray:
        out = np.zeros((len(seqs), 20), dtype=np.int64)
        for u, s in enumerate(seqs):
            out[u, 0] = s[pos]
            negs: list[int] = []
            while len(negs) < 19:
                i = int(gen.integers(1, len(ids) + 1))
                if i not in s and i not in negs:
                    negs.append(i)
            out[u, 1:] = negs
        return out

    titles = [""] + [items[a] for a in ids]
    return SequenceDataset(
        name="beauty-bench", item_ids=np.array(["<pad>", *ids]), titles=titles, texts=titles, user_ids=np.array(users),
        sequences=seqs, valid_candidates=cands(-2), test_candidates=cands(-1), train_users=np.ones(len(seqs), bool), fingerprint=f"bench-{n_users}",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/amazon-beauty")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = beauty_subset(Path(args.data), max(64, args.users))
    cf = TinyCF(CFConfig(n_items=ds.n_items, n_users=ds.n_users, dim=50, max_len=50)).eval()
    joint = torch.randn(ds.n_items + 1, 128, generator=torch.Generator().manual_seed(0))
    for dtype in args.dtypes:
        llm, tok = load_llm(LLMConfig(dtype=dtype, device=args.device))
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        titles = display_titles(ds.titles, tok, 16)
        title_tokens = float(np.mean([len(t) for t in tok([titles[i] for i in range(1, ds.n_items + 1)], add_special_tokens=False)["input_ids"]]))
        cfg = Stage2Config(max_steps=args.steps + 1, batch_size=4, checkpoint_every=10**6)
        # Warm-up step, then timed steps (train_stage2 reports seconds spent in its loop).
        train_stage2(ds, cf, joint, llm, tok, Stage2Config(max_steps=1, batch_size=4), None, progress=False)
        sync()
        t = time.perf_counter()
        _, state = train_stage2(ds, cf, joint, llm, tok, cfg, None, progress=False)
        sync()
        step_s = (time.perf_counter() - t) / cfg.max_steps
        model = Stage2Model(50, 128, 576, seed=0).to(llm.device)
        users = np.arange(args.users)
        prompt_len = []
        for u in users:
            p = build_prompt(ds.history(int(u), "test"), ds.test_candidates[u], titles, ds.wording, cfg.prompt_config())
            prompt_len.append(int(splice([p], tok, llm.get_input_embeddings(), torch.zeros(len(p.soft_tokens), 576) + 0.1).lengths[0]))
        timings = {}
        for mode, bs in (("rank", 1), ("rank", 2), ("generate", 1), ("generate", 4)):
            evaluate_llm(ds, llm, tok, "test", users[:1], stage2=model, cf_model=cf, joint_items=joint, config=InferenceConfig(mode=mode, batch_size=bs))
            sync()
            t = time.perf_counter()
            evaluate_llm(ds, llm, tok, "test", users, stage2=model, cf_model=cf, joint_items=joint, config=InferenceConfig(mode=mode, batch_size=bs))
            sync()
            timings[f"{mode}_bs{bs}_s_per_user"] = round((time.perf_counter() - t) / len(users), 3)
        # Naive ranking for comparison: one full forward per (user, candidate).
        u = 0
        p = build_prompt(ds.history(u, "test"), ds.test_candidates[u], titles, ds.wording, cfg.prompt_config())
        soft = torch.randn(len(p.soft_tokens), 576) * 0.15
        t = time.perf_counter()
        with torch.no_grad():
            for k in range(0, 20, 4):
                b = splice([p] * 4, tok, llm.get_input_embeddings(), soft.repeat(4, 1), targets=p.answers[k : k + 4], padding_side="right")
                sequence_logprobs(llm, b)
        sync()
        timings["rank_naive_s_per_user"] = round(time.perf_counter() - t, 3)
        print(json.dumps({
            "dtype": dtype, "device": args.device, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "train_step_s(batch4)": round(step_s, 3), "prompt_tokens_mean": float(np.mean(prompt_len)), "title_tokens_mean": round(title_tokens, 1),
            **timings,
        }), flush=True)
        del llm


if __name__ == "__main__":
    main()
