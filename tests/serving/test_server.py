"""``allmrec serve`` on 127.0.0.1 (uvicorn in a thread, the walk-through's tiny model): the API,
every documented refusal (a bounded matrix of bad requests, issue 14), bursts past the
concurrency limit, micro-batching, a short soak with RSS measured, read-only by default."""

from __future__ import annotations

import concurrent.futures
import json
import re

import httpx
import pytest

from serving_helpers import LiveServer

HISTORY = ["I01", "I02", "I03"]


@pytest.fixture(scope="module")
def server(walkthrough, loaded):
    with LiveServer(walkthrough[2], model=loaded, max_batch=4, max_delay_ms=2) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_rank_with_and_without_candidates(client, loaded):
    r = client.post("/v1/rank", json={"history": HISTORY, "candidates": ["I04", "I10", "I20"], "top_k": 2})
    body = r.json()
    assert r.status_code == 200 and body["candidates"] == "given" and body["model"] == loaded.manifest["id"] and body["latency_ms"] > 0
    assert [i["rank"] for i in body["items"]] == [1, 2] and body["items"][0]["score"] >= body["items"][1]["score"]
    assert {i["item_id"] for i in body["items"]} <= {"I04", "I10", "I20"} and body["items"][0]["title"]
    # The same scores as the model gives in Python (the server adds nothing of its own).
    q = loaded.queries([loaded.catalogue.lookup(HISTORY)[0]], [loaded.catalogue.lookup(["I04", "I10", "I20"])[0]], ["serve:" + ",".join(map(str, loaded.catalogue.lookup(HISTORY)[0]))])
    expected = sorted(zip(loaded.score(q)[0], ["I04", "I10", "I20"]), reverse=True)[:2]
    assert [i["item_id"] for i in body["items"]] == [e[1] for e in expected]
    r = client.post("/v1/rank", json={"history": HISTORY})  # two-stage: CF retrieval, A-LLMRec re-ranks
    body = r.json()
    assert r.status_code == 200 and body["candidates"] == "retrieved" and body["n_candidates"] == min(20, len(loaded.catalogue) - len(HISTORY))
    assert len(body["items"]) == 10 and not {i["item_id"] for i in body["items"]} & set(HISTORY)


def test_batch_equals_single_requests(client):
    reqs = [{"history": HISTORY, "top_k": 3}, {"history": ["I07", "I08"], "candidates": ["I09", "I00", "I15"]}, {"history": ["I20"]}]
    batch = client.post("/v1/rank:batch", json={"requests": reqs}).json()["results"]
    for req, res in zip(reqs, batch):
        single = client.post("/v1/rank", json=req).json()
        assert [i["item_id"] for i in res["items"]] == [i["item_id"] for i in single["items"]]
        assert [i["score"] for i in res["items"]] == pytest.approx([i["score"] for i in single["items"]], abs=1e-4)


def test_over_long_history_is_truncated_and_said(client, loaded):
    history = [f"I{i:02d}" for i in range(15)]
    body = client.post("/v1/rank", json={"history": history, "candidates": ["I20", "I21"]}).json()
    assert body["history"] == {"given": 15, "used": loaded.history_len, "truncated": True}
    assert client.post("/v1/rank", json={"history": HISTORY, "candidates": ["I20"]}).json()["history"]["truncated"] is False


def test_search_model_health_users(client, loaded):
    assert client.get("/v1/items", params={"q": "creme brulee"}).json()["items"] == [{"item_id": "I05", "title": "Crème brûlée «apple» 東京"}]
    assert client.get("/v1/items", params={"q": "東京"}).json()["items"][0]["item_id"] == "I05"
    found = client.get("/v1/items", params={"q": "RED", "limit": 2}).json()["items"]
    assert len(found) == 2 and all(i["title"].startswith("red ") for i in found)
    assert client.get("/health").json() == {"status": "ok"} and client.get("/ready").json()["model"] == loaded.manifest["id"]
    manifest = client.get("/v1/model").json()
    assert manifest["id"] == loaded.manifest["id"] and manifest["llm"]["identity"].startswith("tiny-gpt2")
    user = client.get("/v1/users/U3").json()
    assert user["truth"] == user["candidates"][0] and len(user["history"]) >= 2
    assert client.get("/").headers["content-type"].startswith("text/html")


CT = {"content-type": "application/json"}
BAD = [  # (method, path, json body or raw bytes, headers, status, field)
    ("POST", "/v1/rank", b"{not json", CT, 400, "body"),
    ("POST", "/v1/rank", b"\xff\xfe\x00", CT, 400, "body"),
    ("POST", "/v1/rank", b"[" * 50_000 + b"]" * 50_000, CT, 400, "body"),
    ("POST", "/v1/rank", b"[1, 2]", CT, 422, "body"),
    ("POST", "/v1/rank", json.dumps({"history": HISTORY}).encode(), {"content-type": "text/plain"}, 415, "Content-Type"),
    ("POST", "/v1/rank", json.dumps({"history": HISTORY}).encode(), {}, 415, "Content-Type"),
    ("POST", "/v1/rank", b"x" * (2 << 20), CT, 413, "body"),
    ("POST", "/v1/rank", json.dumps({"history": ["I01"] * 300_000}).encode(), CT, 413, "body"),
    ("POST", "/v1/rank", {}, None, 422, "history"),
    ("POST", "/v1/rank", {"history": []}, None, 422, "history"),
    ("POST", "/v1/rank", {"history": "I01"}, None, 422, "history"),
    ("POST", "/v1/rank", {"history": [1.5]}, None, 422, "history[0]"),
    ("POST", "/v1/rank", {"history": ["I01", True]}, None, 422, "history[1]"),
    ("POST", "/v1/rank", {"history": [None]}, None, 422, "history[0]"),
    ("POST", "/v1/rank", {"history": [["I01"]]}, None, 422, "history[0]"),
    ("POST", "/v1/rank", {"history": ["x" * 300]}, None, 422, "history[0]"),
    ("POST", "/v1/rank", {"history": ["NOPE", "I01", "東京"]}, None, 422, "history"),
    ("POST", "/v1/rank", {"history": ["I01"], "candidates": ["I02", "ZZZ"]}, None, 422, "candidates"),
    ("POST", "/v1/rank", {"history": ["I01"], "candidates": [f"I{k}" for k in range(10_000)]}, None, 422, "candidates"),
    ("POST", "/v1/rank", {"history": ["I01"], "candidates": ["I02", "I03", "I02"]}, None, 422, "candidates"),
    ("POST", "/v1/rank", {"history": ["I01"], "candidates": []}, None, 422, "candidates"),
    ("POST", "/v1/rank", {"history": ["I01"], "candidates": "I02"}, None, 422, "candidates"),
    ("POST", "/v1/rank", {"history": ["I01"], "top_k": -3}, None, 422, "top_k"),
    ("POST", "/v1/rank", {"history": ["I01"], "top_k": 0}, None, 422, "top_k"),
    ("POST", "/v1/rank", {"history": ["I01"], "top_k": 10**12}, None, 422, "top_k"),
    ("POST", "/v1/rank", {"history": ["I01"], "top_k": "5"}, None, 422, "top_k"),
    ("POST", "/v1/rank", {"history": ["I01"], "user": 3}, None, 422, "user"),
    ("POST", "/v1/rank:batch", {"requests": []}, None, 422, "requests"),
    ("POST", "/v1/rank:batch", {"requests": "x"}, None, 422, "requests"),
    ("POST", "/v1/rank:batch", {"requests": [{"history": HISTORY}] * 65}, None, 422, "requests"),
    ("POST", "/v1/rank:batch", {"requests": [{"history": HISTORY}, {"history": []}]}, None, 422, "requests[1].history"),
    ("POST", "/v1/rank:batch", {"requests": [{"history": HISTORY}, 7]}, None, 422, "requests[1]"),
    ("POST", "/v1/items", {"items": [{"item_id": "N9", "title": "new"}]}, None, 403, None),
    ("GET", "/v1/items?limit=abc", None, None, 422, "limit"),
    ("GET", "/v1/items?limit=0", None, None, 422, "limit"),
    ("GET", "/v1/items?q=" + "x" * 2000, None, None, 422, "q"),
    ("GET", "/v1/users/NOPE", None, None, 404, "user_id"),
    ("GET", "/v1/nothing", None, None, 404, "path"),
    ("GET", "/v1/rank", None, None, 405, "method"),
]


def test_bad_requests_get_their_documented_4xx_and_the_server_stays_healthy(client):
    before = client.get("/metrics").text
    for method, path, body, headers, status, field in BAD:
        kwargs = {"content": body, "headers": headers} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
        r = client.request(method, path, **kwargs)
        assert r.status_code == status, (path, str(body)[:80], r.status_code, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == status and error["field"] == field and error["message"], (path, error)
    r = client.post("/v1/rank", json={"history": ["NOPE", "I01", "東京", "NOPE"]})
    assert r.json()["error"]["ids"] == ["NOPE", "東京"]
    after = client.get("/metrics").text
    assert metric(after, "allmrec_requests_total", status="500") == 0
    assert metric(after, "allmrec_requests_total") - metric(before, "allmrec_requests_total") >= len(BAD)
    assert client.get("/health").status_code == 200 and client.post("/v1/rank", json={"history": HISTORY}).status_code == 200


def test_burst_past_the_concurrency_limit_gets_429_then_recovers(walkthrough, loaded):
    with LiveServer(walkthrough[2], model=loaded, max_concurrency=2, max_batch=8, max_delay_ms=400) as live:
        def post(_):
            return httpx.post(live.url + "/v1/rank", json={"history": HISTORY}, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = [r.status_code for r in pool.map(post, range(12))]
        assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
        assert post(0).status_code == 200  # one at a time is within the limit again
        text = httpx.get(live.url + "/metrics").text
        assert metric(text, "allmrec_rejected_total") == codes.count(429)
        assert httpx.get(live.url + "/health").status_code == 200


def test_concurrent_requests_share_one_forward(walkthrough, loaded):
    with LiveServer(walkthrough[2], model=loaded, max_batch=8, max_delay_ms=500) as live:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: httpx.post(live.url + "/v1/rank", json={"history": HISTORY, "candidates": ["I20", "I21"]}, timeout=60).status_code, range(6)))
        text = httpx.get(live.url + "/metrics").text
    assert codes == [200] * 6
    assert metric(text, "allmrec_batch_size_count") < 6 and metric(text, "allmrec_batch_size_sum") == 6  # fewer forwards than requests
    assert metric(text, "allmrec_request_duration_seconds_count", route="/v1/rank") == 6


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def test_short_soak_no_errors_no_memory_growth(client):
    bodies = [{"history": HISTORY}, {"history": ["I07", "I08"], "candidates": ["I09", "I00", "I15"], "top_k": 2}, {"history": ["I20", "I05"], "top_k": 5}]
    for k in range(30):  # warm-up
        client.post("/v1/rank", json=bodies[k % 3])
    start = rss_mib()
    codes = [client.post("/v1/rank", json=bodies[k % 3]).status_code for k in range(300)]
    growth = rss_mib() - start
    assert codes == [200] * 300
    assert growth < 25, f"RSS grew {growth:.1f} MiB over 300 requests"


def snapshot(*roots):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*") if p.is_file()}


def test_read_only_by_default(walkthrough, loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLMREC_HOME", str(tmp_path / "home"))
    artifact = walkthrough[2]
    before = snapshot(artifact)
    with LiveServer(artifact) as live:  # loads from disk
        assert httpx.post(live.url + "/v1/rank", json={"history": HISTORY}).status_code == 200
        assert httpx.post(live.url + "/v1/items", json={"items": [{"item_id": "N1", "title": "x"}]}).status_code == 403
    assert snapshot(artifact) == before and not (tmp_path / "home").exists()
