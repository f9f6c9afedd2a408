"""The README's "your own data" walk-through on a tiny CSV: the fixture runs prepare, train-cf,
align, train, evaluate and export through the command line; here ``allmrec serve`` runs as its
own process on 127.0.0.1 and answers what ``curl`` would send, and ``allmrec predict`` writes
the recommendations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pyarrow.parquet as pq

from serving_helpers import free_port, predict_cli


def test_serve_as_a_process_answers_curl_and_predict_writes_parquet(walkthrough, tmp_path):
    _, _, artifact = walkthrough
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "allmrec", "serve", str(artifact), "--port", str(port), "--threads", "1", "--log-level", "warning"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read()
            time.sleep(0.2)
        # curl -X POST 127.0.0.1:PORT/v1/rank -H 'Content-Type: application/json' -d '{"history": [...]}'
        r = httpx.post(url + "/v1/rank", content=b'{"history": ["I01", "I02", "I03"], "top_k": 3}', headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and [i["rank"] for i in r.json()["items"]] == [1, 2, 3] and all(i["title"] for i in r.json()["items"])
        assert httpx.get(url + "/v1/model").json()["dataset"]["name"] == "mycsv"
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out
    assert "serving mycsv-allmrec" in out and "read-only" in out
    predict_cli(artifact, tmp_path / "recs")
    assert pq.read_table(tmp_path / "recs" / "recommendations.parquet").num_rows == 4 * 40
