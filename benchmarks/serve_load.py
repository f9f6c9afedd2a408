"""Load test of ``allmrec serve`` on this machine only (127.0.0.1): a bounded number of ranking
requests at each concurrency level, then optionally a soak with the server's memory measured.

    python benchmarks/serve_load.py runs/ml100k-artifact --requests 2000 --concurrency 1 8 32
    python benchmarks/serve_load.py /tmp/walk/artifact --requests 0 --soak 10000     # leak check

It starts ``python -m allmrec serve ARTIFACT --host 127.0.0.1 --port P`` itself, waits for
``/ready``, and for each level sends ``--requests`` requests from ``C`` concurrent clients
(histories: the test histories of the catalogue's users, cycled; candidates retrieved by the
server unless ``--stored-candidates``), stopping a level early after ``--max-seconds``. It
reports requests/s, p50/p95/p99 latency and the status counts; ``--soak N`` then sends N more
requests (concurrency 8) and reports the server's RSS (``/proc/<pid>/status``) before and
after. Nothing is sent anywhere but 127.0.0.1; the server is stopped at the end. Results:
``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # never anything else


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "allmrec", "serve", str(args.artifact), "--host", HOST, "--port", str(port), "--threads", str(args.threads),
           "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms), "--max-concurrency", str(args.max_concurrency),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/ready", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server was not ready after 600 s")


def request_bodies(url: str, n_users: int, stored: bool, top_k: int) -> list[dict]:
    users = httpx.get(url + "/v1/users", params={"limit": n_users}, timeout=30).json()["users"]
    bodies = []
    for u in users:
        info = httpx.get(url + f"/v1/users/{u['user_id']}", timeout=30).json()
        body = {"history": [h["item_id"] for h in info["history"]], "top_k": top_k}
        if stored:
            body["candidates"] = info["candidates"]
        bodies.append(body)
    return bodies


async def run_level(url: str, bodies: list[dict], n: int, concurrency: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    counter = iter(range(n))
    stop_at = time.monotonic() + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        for k in counter:
            if time.monotonic() > stop_at:
                return
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/rank", json=bodies[k % len(bodies)])
                code = str(r.status_code)
            except httpx.HTTPError as err:
                code = type(err).__name__
            latencies.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    pct = {f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)} if len(lat) else {}
    return {"concurrency": concurrency, "requests": len(lat), "seconds": round(wall, 2), "req_per_s": round(len(lat) / wall, 2) if wall else 0.0,
            **pct, "statuses": statuses, "stopped_early": len(lat) < n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-seconds", type=float, default=600, help="a level stops after this long")
    p.add_argument("--soak", type=int, default=0, help="then this many requests (concurrency 8) with the server's RSS measured")
    p.add_argument("--users", type=int, default=200, help="test histories to cycle through")
    p.add_argument("--stored-candidates", action="store_true", help="send each user's 20 stored candidates instead of letting the server retrieve")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = p.parse_args()
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start_server(args, port)
    try:
        bodies = request_bodies(url, args.users, args.stored_candidates, args.top_k)
        results = {"artifact": str(args.artifact), "model": httpx.get(url + "/v1/model").json()["id"], "options": {k: str(v) for k, v in vars(args).items()},
                   "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs), torch threads {args.threads}",
                   "levels": []}
        for c in args.concurrency if args.requests else []:
            level = asyncio.run(run_level(url, bodies, args.requests, c, args.max_seconds))
            results["levels"].append(level)
            print(json.dumps(level), flush=True)
        if args.soak:
            before = rss_mib(proc.pid)
            soak = asyncio.run(run_level(url, bodies, args.soak, 8, 10 * args.max_seconds))
            soak.update(rss_before_mib=round(before, 1), rss_after_mib=round(rss_mib(proc.pid), 1), health=httpx.get(url + "/health").status_code)
            results["soak"] = soak
            print(json.dumps(soak), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
