"""``allmrec serve``: a trained A-LLMRec behind HTTP (FastAPI + uvicorn), on the conventions of
vLLM's, llama.cpp's and Triton's servers: ``/health`` (liveness), ``/ready`` (503 until the
model is loaded), ``/metrics`` (Prometheus), versioned JSON routes, JSON errors.

==========================  ==========================================================
``GET /``                   the web page (search titles or pick a test user, ranked candidates, scores)
``POST /v1/rank``           ``{"history", "candidates" | null, "top_k"}`` -> ranked items
``POST /v1/rank:batch``     ``{"requests": [...]}`` -> ``{"results": [...]}``
``GET /v1/items?q=&limit=`` title search
``POST /v1/items``          add items (``--allow-writes`` only; persisted in the artifact)
``GET /v1/users``           test users; ``GET /v1/users/{id}``: a user's test history and candidates
``GET /v1/model``           the manifest
==========================  ==========================================================

Errors are ``{"error": {"code", "type", "field", "message"}}`` (:mod:`allmrec.serving.requests`).
The server writes nothing but its log unless ``allow_writes`` (then only ``added_items.json``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from allmrec.serving.batcher import MicroBatcher, RankEngine
from allmrec.serving.metrics import CONTENT_TYPE, Metrics
from allmrec.serving.requests import ApiError, Limits, RankRow, check_content_type, parse_batch, parse_items, parse_json, parse_rank

log = logging.getLogger("allmrec.serve")


@dataclass
class ServeOptions:
    """How ``allmrec serve`` runs (each is a command-line option of the same name)."""

    llm: str | None = None  # another location of the recorded LLM (its hash must match)
    device: str = "cpu"
    threads: int = 0  # torch threads of the model (0: leave as is)
    max_batch: int = 8  # rows per model forward
    max_delay_ms: float = 5.0  # how long the first row of a batch waits for others
    max_concurrency: int = 64  # ranking requests in flight; more get 429
    n_candidates: int = 20  # retrieved candidates when a request gives none
    cold_slots: int = 2  # of those, kept for added items closest in text
    allow_writes: bool = False  # POST /v1/items (writes added_items.json in the artifact)
    limits: Limits = field(default_factory=Limits)


class ServerState:
    def __init__(self, root: Path, options: ServeOptions) -> None:
        self.root, self.options = root, options
        self.metrics = Metrics()
        self.model: Any = None
        self.engine: RankEngine | None = None
        self.batcher = MicroBatcher(self._rank, options.max_batch, options.max_delay_ms, self.metrics.batch_size)
        self.error: str | None = None

    def _rank(self, rows: list[RankRow]) -> list[dict[str, Any]]:
        return self.engine(rows)

    def load(self, model: Any = None) -> None:
        import torch

        from allmrec.serving.trained import TrainedRecommender

        if self.options.threads > 0:
            torch.set_num_threads(self.options.threads)
        t0 = time.perf_counter()
        model = model or TrainedRecommender.from_pretrained(self.root, llm=self.options.llm, device=self.options.device)
        self.engine = RankEngine(model, self.options.n_candidates, self.options.cold_slots, self.options.max_batch)
        self.model = model
        self.metrics.items = len(model.catalogue)
        log.info("loaded %s (%d items) in %.1f s", model.manifest["id"], len(model.catalogue), time.perf_counter() - t0)

    async def load_async(self, model: Any = None) -> None:
        try:
            await self.batcher.call(lambda: self.load(model))
        except Exception as err:  # noqa: BLE001 - reported by /ready
            self.error = f"{type(err).__name__}: {err}"
            log.error("could not load %s: %s", self.root, self.error)

    def ready(self) -> Any:
        if self.model is None:
            raise ApiError(503, "not_ready", self.error or "the model is loading", None)
        return self.model

    @asynccontextmanager
    async def slot(self):
        m = self.metrics
        if m.in_flight >= self.options.max_concurrency:
            m.rejected += 1
            raise ApiError(429, "too_many_requests", f"{m.in_flight} ranking requests in flight (limit {self.options.max_concurrency}); retry later", None)
        m.in_flight += 1
        try:
            yield
        finally:
            m.in_flight -= 1


async def read_body(request: Any, limits: Limits) -> dict[str, Any]:
    """The JSON object of a request: 413 over the size limit, 415 not JSON, 400 not parseable."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
        raise ApiError(413, "payload_too_large", f"the body has {length} bytes; at most {limits.max_body_bytes}", "body")
    check_content_type(request.headers.get("content-type"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise ApiError(413, "payload_too_large", f"the body is over {limits.max_body_bytes} bytes", "body")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _answer(result: dict[str, Any], row: RankRow, model: Any) -> dict[str, Any]:
    return {"items": result["items"], "candidates": "retrieved" if result["retrieved"] else "given", "n_candidates": result.get("n_candidates", 0),
            "history": {"given": row.given, "used": row.used, "truncated": row.used < row.given}, "model": model.manifest["id"]}


def _query_int(request: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_type", f"{name} must be an integer, got {raw[:40]!r}", name) from None
    if not lo <= value <= hi:
        raise ApiError(422, "out_of_range", f"{name} must be in {lo}..{hi}, got {value}", name)
    return value


def create_app(artifact: str | Path, options: ServeOptions | None = None, model: Any = None):
    """The FastAPI application serving artifact folder ``artifact`` (the model loads in the
    background once the server starts: ``/ready`` says when); ``model``: a
    :class:`~allmrec.serving.trained.TrainedRecommender` already loaded from it."""
    state = ServerState(Path(artifact).resolve(), options or ServeOptions())

    @asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        loading = asyncio.get_running_loop().create_task(state.load_async(model))
        yield
        loading.cancel()
        await state.batcher.stop()

    app = FastAPI(title="allmrec", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.allmrec = state
    _errors(app, state)
    _routes(app, state)
    _item_routes(app, state)
    return app


def _errors(app: Any, state: ServerState) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse(ApiError(err.status_code, kind, str(err.detail), "path" if err.status_code == 404 else "method").body(), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err: RequestValidationError):
        first = (err.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")) or None
        return JSONResponse(ApiError(422, "invalid_value", str(first.get("msg", "invalid request")), where).body(), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request, err: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(ApiError(500, "internal_error", f"{type(err).__name__}: {err}", None).body(), status_code=500)

    @app.middleware("http")
    async def measure(request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        state.metrics.request(request.method, route, response.status_code, time.perf_counter() - t0)
        return response


def _routes(app: Any, state: ServerState) -> None:
    page = (package_files.files("allmrec.serving") / "static" / "index.html").read_text(encoding="utf-8")
    limits = state.options.limits

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        model = state.ready()
        return {"status": "ready", "model": model.manifest["id"]}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/model")
    async def model_info():
        return state.ready().manifest

    @app.post("/v1/rank")
    async def rank(request: Request):
        t0 = time.perf_counter()
        model = state.ready()
        async with state.slot():
            row = parse_rank(await read_body(request, limits), model.catalogue, limits, model.history_len)
            [result] = await state.batcher.submit([row])
        return JSONResponse({**_answer(result, row, model), "latency_ms": round((time.perf_counter() - t0) * 1000, 3)})

    @app.post("/v1/rank:batch")
    async def rank_batch(request: Request):
        t0 = time.perf_counter()
        model = state.ready()
        async with state.slot():
            rows = parse_batch(await read_body(request, limits), model.catalogue, limits, model.history_len)
            results = await state.batcher.submit(rows)
        return JSONResponse({"results": [_answer(r, row, model) for r, row in zip(results, rows)], "model": model.manifest["id"],
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 3)})


def _item_routes(app: Any, state: ServerState) -> None:
    limits = state.options.limits

    @app.get("/v1/items")
    async def search(request: Request):
        model = state.ready()
        limit = _query_int(request, "limit", 20, 1, 100)
        query = request.query_params.get("q", "")
        if len(query) > limits.max_title_chars:
            raise ApiError(422, "too_long", f"q has {len(query)} characters; at most {limits.max_title_chars}", "q")
        return {"items": [model.catalogue.describe(i) for i in model.catalogue.search(query, limit)]}

    @app.post("/v1/items")
    async def add(request: Request):
        if not state.options.allow_writes:
            raise ApiError(403, "read_only", "this server is read-only; start it with --allow-writes to add items", None)
        model = state.ready()
        items = parse_items(await read_body(request, limits), model.catalogue, limits)

        def add_now() -> list[int]:
            taken = [it["item_id"] for it in items if it["item_id"] in model.catalogue.index]
            if taken:  # added by a concurrent request since the check
                raise ApiError(409, "item_exists", f"item id(s) already in the catalogue: {taken[:5]}", "items", ids=taken)
            try:
                return model.add_items(items, persist=True)
            except ValueError as err:
                raise ApiError(409, "cannot_add", str(err), "items") from None

        ids = await state.batcher.call(add_now)
        state.metrics.items = len(model.catalogue)
        return JSONResponse({"added": [model.catalogue.describe(i) for i in ids], "n_items": len(model.catalogue)}, status_code=201)

    @app.get("/v1/users")
    async def users(request: Request):
        ds = state.ready().resources.dataset
        limit, offset = _query_int(request, "limit", 50, 1, 1000), _query_int(request, "offset", 0, 0, 10**9)
        eligible = [u for u in range(ds.n_users) if len(ds.sequences[u]) >= 3]
        return {"users": [{"user_id": str(ds.user_ids[u]), "n_items": int(len(ds.sequences[u]))} for u in eligible[offset : offset + limit]],
                "total": len(eligible)}

    @app.get("/v1/users/{user_id}")
    async def user(user_id: str):
        model = state.ready()
        ds = model.resources.dataset
        index = {str(u): k for k, u in enumerate(ds.user_ids)}
        if user_id not in index or len(ds.sequences[index[user_id]]) < 3:
            raise ApiError(404, "unknown_user", f"no test user {user_id[:80]!r}", "user_id")
        u = index[user_id]
        cat = model.catalogue
        return {"user_id": user_id, "history": [cat.describe(int(i)) for i in ds.history(u, "test")],
                "candidates": [cat.item_ids[int(i)] for i in ds.test_candidates[u]], "truth": cat.item_ids[ds.target(u, "test")]}


def serve(artifact: str | Path, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted (binds 127.0.0.1 unless told otherwise)."""
    import uvicorn

    logging.getLogger("allmrec").setLevel(log_level.upper())
    uvicorn.run(create_app(artifact, options), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
