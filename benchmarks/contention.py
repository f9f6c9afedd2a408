"""A best-mode forward on an idle machine and beside one other CPU-bound process.

    python benchmarks/contention.py [--tokens 577] [--repeats 5]

Each setting runs in a fresh process (OpenMP reads its environment once, at start): the
library's defaults (``import allmrec`` first: ``OMP_WAIT_POLICY=PASSIVE`` unless set, threads as
torch picks them), PyTorch's defaults (OpenMP threads spin-wait), ``OMP_NUM_THREADS=1``. Each
times the bundled SmolLM2's body (float32, or bfloat16 where the CPU runs it natively) over one
prompt of ``--tokens`` random token ids, idle and then while a busy process (a Python spin loop)
holds one core. Writes ``benchmarks/results/contention.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "library (import allmrec first)": {},
    "pytorch defaults (spin-wait)": {"ALLMREC_OMP_DEFAULTS": "1"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}
CHILD = r"""
import json, os, sys, time
if os.environ.get("ALLMREC_OMP_DEFAULTS"):
    import torch  # before allmrec: its wait policy does not apply
import allmrec  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE unless already set)
import torch
from allmrec.llm import LLMConfig, load_llm
llm, _ = load_llm(LLMConfig(device="cpu"))
body = llm.base_model
ids = torch.randint(0, llm.config.vocab_size, (1, int(sys.argv[1])), generator=torch.Generator().manual_seed(0))
times = []
with torch.no_grad():
    body(input_ids=ids)
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter()
        body(input_ids=ids)
        times.append(time.perf_counter() - t0)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "threads": torch.get_num_threads(), "dtype": str(next(llm.parameters()).dtype),
                  "wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def run(env: dict[str, str], tokens: int, repeats: int) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tokens), str(repeats)], env={**full, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=577)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "contention.json"))
    args = ap.parse_args()
    from roofline import cpu_flags  # noqa: E402  (same folder)

    results: dict[str, object] = {"machine": cpu_flags(), "tokens": args.tokens, "settings": {}}
    for name, env in SETTINGS.items():
        idle = run(env, args.tokens, args.repeats)
        busy_proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)
            busy = run(env, args.tokens, args.repeats)
        finally:
            busy_proc.kill()
            busy_proc.wait()
        results["settings"][name] = {"idle": idle, "busy": busy, "slowdown": busy["seconds"] / idle["seconds"]}
        print(f"{name:<34} idle {idle['seconds']:.3f} s ({idle['threads']} thr)  busy {busy['seconds']:.3f} s  x{busy['seconds'] / idle['seconds']:.2f}", flush=True)
    best_idle = min(s["idle"]["seconds"] for s in results["settings"].values())
    results["library_busy_vs_best_idle"] = results["settings"]["library (import allmrec first)"]["busy"]["seconds"] / best_idle
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"library default beside a busy process vs the best idle setting: x{results['library_busy_vs_best_idle']:.2f}")


if __name__ == "__main__":
    main()
