"""``allmrec predict`` throughput (users/s) with 1 and with N processes, and whether the merged
recommendations are the same.

    python benchmarks/predict_throughput.py runs/ml100k-artifact --users 200 --processes 1 2

For each process count it runs ``allmrec predict ARTIFACT --users FILE`` (the first ``--users``
users; 0 = all) into a fresh folder, timing the whole command (model loading included, as a
user sees it) and reading the merged ``recommendations.parquet``. N > 1 runs under ``accelerate
launch --multi_gpu --num_processes N`` (on a CPU that starts N processes on gloo). Results:
``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--users", type=int, default=200, help="the first N users of the catalogue (0: all)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/predict_throughput.json"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="allmrec-predict-bench-"))
    ids = json.loads((args.artifact / "catalogue" / "users.json").read_text())["user_ids"]
    ids = ids[: args.users] if args.users else ids
    (work / "users.txt").write_text("\n".join(ids) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs, tables = [], {}
    for n in args.processes:
        out = work / f"recs-{n}"
        launch = [sys.executable, "-m", "allmrec"] if n == 1 else [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
                                                                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "allmrec"]
        cmd = [*launch, "predict", str(args.artifact), "--users", str(work / "users.txt"), "--out", str(out), "--threads", str(args.threads),
               "--shard-size", str(args.shard_size)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        tables[n] = pq.read_table(out / "recommendations.parquet")
        runs.append({"processes": n, "users": len(ids), "seconds": round(seconds, 1), "users_per_s": round(len(ids) / seconds, 2)})
        print(json.dumps(runs[-1]), flush=True)
    first = tables[args.processes[0]]
    result = {"artifact": str(args.artifact), "runs": runs, "same_recommendations": all(t.equals(first) for t in tables.values()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs), {args.threads} torch thread(s) per process"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
