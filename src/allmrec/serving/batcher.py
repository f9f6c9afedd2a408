"""Micro-batching: ranking rows from concurrent requests are collected for up to
``max_delay_ms`` after the first (or until ``max_batch`` rows) and answered by one call of the
model, in one worker thread (the model is never run by two threads at once, and the event loop
stays free for ``/health``, ``/metrics`` and refusals). :class:`RankEngine` is that call: CF
retrieval for rows without candidates, then one LLM forward per group of rows with the same
number of candidates."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from allmrec.serving.requests import RankRow


class RankEngine:
    """Ranks :class:`RankRow` batches with a :class:`~allmrec.serving.trained.TrainedRecommender`."""

    def __init__(self, model: Any, n_candidates: int = 20, cold_slots: int = 2, max_batch: int = 8) -> None:
        self.model, self.n_candidates, self.cold_slots, self.max_batch = model, n_candidates, cold_slots, max_batch
        if model.reader is not None:
            model.reader.batch_size = max_batch  # a group of rows is one LLM forward

    def __call__(self, rows: Sequence[RankRow]) -> list[dict[str, Any]]:
        need = [r for r in rows if r.candidates is None]
        found = iter(self.model.retrieve([r.history for r in need], self.n_candidates, self.cold_slots)) if need else iter(())
        cands = [r.candidates if r.candidates is not None else next(found) for r in rows]
        out: list[dict[str, Any] | None] = [None] * len(rows)
        groups: dict[int, list[int]] = defaultdict(list)
        for k, c in enumerate(cands):
            if not c:
                out[k] = {"items": [], "retrieved": rows[k].candidates is None}
            else:
                groups[len(c)].append(k)
        for members in groups.values():
            for s in range(0, len(members), self.max_batch):
                chunk = members[s : s + self.max_batch]
                q = self.model.queries([rows[k].history for k in chunk], [cands[k] for k in chunk],
                                       ["serve:" + ",".join(map(str, rows[k].history)) for k in chunk])
                scores, cf = self.model.score(q), self.model.cf_score(q)
                for j, k in enumerate(chunk):
                    out[k] = self._ranked(cands[k], scores[j], cf[j], rows[k])
        return out  # type: ignore[return-value]

    def _ranked(self, cands: list[int], scores: np.ndarray, cf: np.ndarray, row: RankRow) -> dict[str, Any]:
        order = np.argsort(-scores, kind="stable")[: row.top_k]
        cat = self.model.catalogue
        items = [{**cat.describe(int(cands[i])), "score": float(scores[i]), "cf_score": float(cf[i]), "rank": r + 1} for r, i in enumerate(order)]
        return {"items": items, "retrieved": row.candidates is None, "n_candidates": len(cands)}


class MicroBatcher:
    """Collects submitted rows into batches for ``fn(rows) -> results`` (run in one thread)."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch: int = 8, max_delay_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch} and {max_delay_ms}")
        self.fn, self.max_batch, self.delay, self.on_batch = fn, max_batch, max_delay_ms / 1000.0, on_batch
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="allmrec-model")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the model thread (between batches): e.g. adding items."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def submit(self, rows: Sequence[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        for row, fut in zip(rows, futures):
            self.queue.put_nowait((row, fut))
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.delay
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(r, f) for r, f in batch if not f.done()]
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [r for r, _ in live])
            except Exception as err:  # noqa: BLE001 - handed to the waiting requests
                for _, f in live:
                    if not f.done():
                        f.set_exception(err)
                continue
            for (_, f), res in zip(live, results):
                if not f.done():
                    f.set_result(res)
