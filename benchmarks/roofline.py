"""How close the hot paths run to this machine's own peak.

    python benchmarks/roofline.py [--data ../shared/data/amazon-beauty] [--threads 1 2] [--quick]

1. Peak: matmul GFLOP/s at the LLM's shapes (the bundled SmolLM2: a prompt of T tokens times its
   576x576, 576x1536 and 1536x576 projections) in float32 and bfloat16, with 1 and 2 threads; the
   best of the shapes is the peak.
2. FLOPs of each hot path, counted from the model configs and token counts (2 FLOPs per
   multiply-add; attention QK^T and AV over the whole prompt):
   * best-mode forward per user (the LLM body over one prompt, no vocabulary projection);
   * paper-mode step (4 prompts + their targets: forward, then the backward through the frozen
     LLM to the soft tokens, which costs about one more forward: no weight gradients);
   * stage-1 step (MiniLM forward + backward, weights trained: ~3 forwards, on 64 item texts);
   * a SASRec epoch (6 x non-embedding parameters x trained positions).
3. Each path timed with the real models and the library's own code at those shapes; the
   achieved GFLOP/s over the measured peak of the same dtype and thread count is the fraction.

Prompts are real: Beauty users' test prompts with 10 history items and 20 candidates, titles cut
as the CPU configs cut them (12 tokens). Writes ``benchmarks/results/roofline.json`` and prints a
table. The machine's flags (AVX512 / AMX / native bf16) are recorded with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> dict[str, object]:
    from allmrec.utils.runtime import cpu_has_fast_bf16

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    except (OSError, IndexError):
        flags = set()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "native_bf16": cpu_has_fast_bf16(),
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def timed(fn, min_seconds: float = 1.0, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` (at least 3 calls and ``min_seconds`` in all)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < 3 or sum(times) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(tokens: int, dtypes: list[str], threads: list[int]) -> dict[str, dict[str, float]]:
    shapes = [(tokens, 576, 576), (tokens, 576, 1536), (tokens, 1536, 576), (4 * tokens, 576, 1536)]
    out: dict[str, dict[str, float]] = {}
    for dtype in dtypes:
        dt = getattr(torch, dtype)
        for n in threads:
            torch.set_num_threads(n)
            best = 0.0
            for m, k, nn in shapes:
                a, b = torch.randn(m, k, dtype=dt), torch.randn(k, nn, dtype=dt)
                s = timed(lambda: a @ b, min_seconds=0.5 if dtype == "float32" else 2.0)
                best = max(best, 2 * m * k * nn / s / 1e9)
            out[f"{dtype}/{n}"] = {"gflops": round(best, 2)}
    return out


# ---- FLOP counts --------------------------------------------------------------------------------
def llm_forward_flops(cfg, tokens: int) -> float:
    """One forward of the LLM body over ``tokens`` positions (no vocabulary projection)."""
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    per_token = layers * (2 * d * d + 2 * 2 * d * kv + 2 * d * d + 3 * 2 * d * f)  # q, k+v, o, gate/up/down
    attention = layers * 4 * tokens * tokens * d  # QK^T and AV, whole prompt
    return float(per_token * tokens + attention)


def encoder_forward_flops(cfg, tokens: int, texts: int) -> float:
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token = layers * (4 * 2 * d * d + 2 * 2 * d * f)
    return float(texts * (per_token * tokens + layers * 4 * tokens * tokens * d))


def sasrec_epoch_flops(model, positions: int) -> float:
    params = sum(p.numel() for n, p in model.named_parameters() if "emb" not in n)
    return float(6 * params * positions)


# ---- the hot paths, timed ---------------------------------------------------------------------------
class MeanCF(torch.nn.Module):
    """A stand-in CF model (mean of random item vectors): the LLM's cost does not depend on it."""

    padding_invariant = False

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        from allmrec.cf.base import CFConfig

        self.config = CFConfig(n_items=n_items, dim=dim, max_len=50)
        self.dim = dim
        self.items = torch.nn.Parameter(torch.randn(n_items + 1, dim, generator=torch.Generator().manual_seed(0)), requires_grad=False)

    def user_representation(self, users, histories):
        mask = (histories != 0).float().unsqueeze(-1)
        return (self.items[histories] * mask).sum(1) / mask.sum(1).clamp(min=1)

    def score(self, users, histories, candidates):
        return torch.einsum("bd,bcd->bc", self.user_representation(users, histories), self.items[candidates])


def beauty_prompts(data: Path, n_users: int):
    """A prepared Beauty dataset and ``n_users`` seeded test users' A-LLMRec prompts' parts."""
    from allmrec.data import load_preset, prepare
    from allmrec.eval.users import sample_users, split_users

    ds = prepare(load_preset("amazon-beauty", path=str(data)))
    users = sample_users(split_users(ds, "test"), n_users, 2024, "eval-users", "test")
    return ds, users


def time_llm_paths(ds, users, dtype: str, threads: int) -> dict[str, object]:
    from allmrec.align.stage2 import Stage2Model, Stage2ModelConfig, Stage2Scorer
    from allmrec.data.queries import Queries
    from allmrec.llm import LLMConfig, load_llm
    from allmrec.llm.reader import PromptReader
    from allmrec.llm.scoring import target_loss
    from allmrec.llm.splice import splice
    torch.set_num_threads(threads)
    llm, tok = load_llm(LLMConfig(dtype=dtype, device="cpu"))
    cf = MeanCF(ds.n_items, 50)
    joint = torch.randn(ds.n_items + 1, 128, generator=torch.Generator().manual_seed(0))
    model = Stage2Model(50, 128, llm.config.hidden_size, Stage2ModelConfig(max_title_tokens=12), seed=0)
    reader = PromptReader(llm, tok, ds.titles, ds.wording, model.prompt_config(), Stage2Scorer(model, joint, cf))
    queries = Queries.from_split(ds, "test", users)
    perms, shown = reader.shown(queries)
    prompts = reader.prompts(queries, shown, range(len(users)))
    lengths = [int(splice([p], tok, llm.get_input_embeddings(), reader.source.soft_vectors([p], [0], [queries.histories[i]])).lengths[0])
               for i, p in enumerate(prompts)]
    tokens = int(np.mean(lengths))
    t_forward = timed(lambda: reader.score(queries.rows([0])), min_seconds=3.0)
    four = list(range(4))
    targets = [int(ds.test_candidates[u, 0]) for u in users[:4]]
    train_prompts = [reader.prompts(queries, shown, [i])[0] for i in four]
    for p, t in zip(train_prompts, targets):
        p.target = f' "{reader.shown_titles[t]}"'
    soft_model = Stage2Model(50, 128, llm.config.hidden_size, Stage2ModelConfig(objective="lm", residual=False, max_title_tokens=12), seed=0)

    def paper_step():
        soft = soft_model.soft_vectors(train_prompts, cf.user_representation(torch.zeros(4, dtype=torch.long), torch.ones(4, 10, dtype=torch.long)), joint)
        batch = splice(train_prompts, tok, llm.get_input_embeddings(), soft, targets=[p.target for p in train_prompts], padding_side="right")
        target_loss(llm, batch).backward()

    t_paper = timed(paper_step, min_seconds=3.0)
    return {"dtype": dtype, "threads": threads, "prompt_tokens_mean": tokens, "prompt_tokens": [min(lengths), max(lengths)],
            "best_forward_s": t_forward, "best_forward_gflop": llm_forward_flops(llm.config, tokens) / 1e9,
            "paper_step_s": t_paper, "paper_step_gflop": 4 * 2 * llm_forward_flops(llm.config, tokens + 12) / 1e9}


def time_stage1_step(ds, threads: int, max_len: int = 32) -> dict[str, object]:
    from allmrec.text import load_text_encoder

    torch.set_num_threads(threads)
    enc = load_text_encoder("default", max_seq_length=max_len)
    enc.unfreeze().train()
    gen = np.random.default_rng(0)
    texts = [ds.texts[int(i)] for i in gen.integers(1, ds.n_items + 1, size=64)]
    tokens = int(enc._features(texts)["input_ids"].shape[1])  # padded to the batch's longest (cut at max_len)

    def step():
        enc(texts).sum().backward()

    s = timed(step, min_seconds=3.0)
    cfg = enc.model[0].auto_model.config
    return {"threads": threads, "max_len": max_len, "tokens_per_text": tokens, "stage1_step_s": s,
            "stage1_step_gflop": 3 * encoder_forward_flops(cfg, tokens, 64) / 1e9, "examples_per_epoch_beauty": int(ds.train_users.sum())}


def time_sasrec_epoch(ds, threads: int) -> dict[str, object]:
    from allmrec.cf.registry import build_backbone
    from allmrec.cf.sampling import make_sampler

    torch.set_num_threads(threads)
    model = build_backbone("sasrec", n_items=ds.n_items, n_users=ds.n_users)
    sampler = make_sampler(model, ds, 128, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    positions = int(sum((b["positives"] != 0).sum() for b in sampler.epoch(1)))
    model.train()

    def epoch():
        for batch in sampler.epoch(1):
            loss = model.training_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

    s = timed(epoch, min_seconds=1.0, warmup=0)
    return {"threads": threads, "sasrec_epoch_s": s, "sasrec_epoch_gflop": sasrec_epoch_flops(model, positions) / 1e9, "positions": positions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="fewer paths (the LLM ones at the native dtype only)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "roofline.json"))
    args = ap.parse_args()
    from allmrec.utils.runtime import cpu_has_fast_bf16

    flags = cpu_flags()
    native = "bfloat16" if cpu_has_fast_bf16() else "float32"
    dtypes = [native] if args.quick else ["float32", "bfloat16"]
    results: dict[str, object] = {"machine": flags, "peak": matmul_peak(577, dtypes, args.threads), "paths": []}
    ds, users = beauty_prompts(Path(args.data), args.users)
    for n in args.threads:
        for dtype in ([native] if args.quick or native == "float32" else dtypes):
            results["paths"].append(time_llm_paths(ds, users, dtype, n))
        results["paths"].append(time_stage1_step(ds, n))
        results["paths"].append(time_sasrec_epoch(ds, n))
    rows = fractions(results)
    results["fractions"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(flags))
    for k, v in results["peak"].items():
        print(f"peak {k}: {v['gflops']} GFLOP/s")
    for r in rows:
        print(f"{r['path']:<32} {r['dtype']:<9} {r['threads']} thr  {r['seconds']:.3f} s  {r['gflop']:.1f} GFLOP  {r['gflops']:.1f} GFLOP/s  {100 * r['fraction']:.0f}% of peak")


def fractions(results: dict[str, object]) -> list[dict[str, object]]:
    peak = results["peak"]
    rows = []
    for p in results["paths"]:
        dtype = p.get("dtype", "float32")
        for name in ("best_forward", "paper_step", "stage1_step", "sasrec_epoch"):
            if f"{name}_s" in p:
                gflops = p[f"{name}_gflop"] / p[f"{name}_s"]
                ref = peak.get(f"{dtype}/{p['threads']}", {}).get("gflops")
                rows.append({"path": name, "dtype": dtype, "threads": p["threads"], "seconds": p[f"{name}_s"], "gflop": p[f"{name}_gflop"],
                             "gflops": gflops, "fraction": gflops / ref if ref else None})
    return rows


if __name__ == "__main__":
    main()
