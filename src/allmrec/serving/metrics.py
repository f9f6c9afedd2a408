"""The server's Prometheus metrics, written in the text exposition format (version 0.0.4)
without a client library: request latency histogram and request counts by route and status,
the sizes of the batches the model ran, requests in flight, items in the catalogue."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for k, b in enumerate(self.buckets):
            if value <= b:
                self.counts[k] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}" if labels else f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.total}" if labels else f"{name}_count {self.total}")
        return out


class Metrics:
    """Counters and histograms of one server process (updated from the event loop and the model thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.in_flight = 0
        self.rejected = 0
        self.items = 0

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(method, route, status)] += 1
            self.latency.setdefault((method, route), Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch_size(self, n: int) -> None:
        with self.lock:
            self.batch.observe(n)

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP allmrec_requests_total Requests answered, by method, route and status.", "# TYPE allmrec_requests_total counter"]
            lines += [f'allmrec_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}' for (m, r, s), n in sorted(self.requests.items())]
            lines += ["# HELP allmrec_request_duration_seconds Request latency.", "# TYPE allmrec_request_duration_seconds histogram"]
            for (m, r), h in sorted(self.latency.items()):
                lines += h.lines("allmrec_request_duration_seconds", f'method="{m}",route="{r}"')
            lines += ["# HELP allmrec_batch_size Rows per model forward (micro-batches).", "# TYPE allmrec_batch_size histogram"]
            lines += self.batch.lines("allmrec_batch_size", "")
            lines += ["# HELP allmrec_requests_in_flight Ranking requests being answered.", "# TYPE allmrec_requests_in_flight gauge",
                      f"allmrec_requests_in_flight {self.in_flight}",
                      "# HELP allmrec_rejected_total Requests refused with 429 (concurrency limit).", "# TYPE allmrec_rejected_total counter",
                      f"allmrec_rejected_total {self.rejected}",
                      "# HELP allmrec_catalogue_items Items in the served catalogue.", "# TYPE allmrec_catalogue_items gauge", f"allmrec_catalogue_items {self.items}"]
        return "\n".join(lines) + "\n"
