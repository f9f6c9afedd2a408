"""A-LLMRec vs SASRec vs LLM-only on Amazon Beauty, on the same test users and stored candidates.

    python benchmarks/allmrec_beauty.py --data ../shared/data/amazon-beauty \
        [--config benchmarks/configs/allmrec_beauty_cpu.yaml] [--run runs/bench-allmrec-beauty] [--cf-from runs/bench-cf/sasrec]

Runs every step through ``allmrec.pipeline`` (each one resumes), evaluates in both inference
modes, and copies the results to ``benchmarks/results/allmrec_beauty.{json,md}``.
``--config benchmarks/configs/allmrec_beauty_gpu.yaml`` is the paper's full protocol.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from allmrec.pipeline import steps
from allmrec.pipeline.config import RunConfig
from allmrec.pipeline.resources import Resources, RunFolder
from allmrec.training import DONE
from allmrec.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "allmrec_beauty_cpu.yaml"))
    ap.add_argument("--run", default=str(ROOT / "runs" / "bench-allmrec-beauty"))
    ap.add_argument("--cf-from", default=None, help="reuse a trained CF run folder (e.g. from benchmarks/cf_beauty.py)")
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    args = ap.parse_args()

    config, run_dir = RunConfig.layered(Path(args.run), Path(args.config), {"data.path": str(Path(args.data).resolve())}, args.set)
    res = Resources(config, RunFolder(run_dir))
    if args.cf_from and not (res.folder.cf / "model.safetensors").exists():
        res.folder.cf.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "model.json"):
            shutil.copy2(Path(args.cf_from) / name, res.folder.cf / name)
        write_json(res.folder.cf / DONE, {"copied_from": str(Path(args.cf_from).resolve())})
    timings = {}
    for name, step in (("cf", steps.train_cf), ("stage1", steps.align), ("stage2", steps.train_stage2), ("evaluate", steps.evaluate)):
        t0 = time.perf_counter()
        step(res)
        timings[name] = round(time.perf_counter() - t0, 1)
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = res.folder.results
    shutil.copy2(results / "test.json", out_dir / "allmrec_beauty.json")
    md = (results / "test.md").read_text()
    md += f"\nStep wall times (s): {timings}. Config: `{Path(args.config).name}` plus overrides {args.set or 'none'}.\n"
    (out_dir / "allmrec_beauty.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
