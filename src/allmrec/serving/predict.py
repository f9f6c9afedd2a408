"""``allmrec predict``: top-k recommendations for many users, written to Parquet
(``user, rank, item_id, score``), sharded across processes with Accelerate.

Each user's history is their whole sequence (the next item after everything the data holds);
the CF model retrieves ``n_candidates`` items of the catalogue (history excluded) and the
exported method (A-LLMRec) re-ranks them, as ``POST /v1/rank`` does without candidates.

Users are cut into fixed shards of ``shard_size`` (in the order asked); under
``accelerate launch --num_processes N`` (or ``torchrun``) each process takes a contiguous share
of the shards (``PartialState.split_between_processes``). A shard is written atomically as
``part-NNNNN.parquet`` with a key (model id, its users, the options) in its metadata; a rerun
skips the shards whose key matches. Once every process is done, the main process merges the
shards into ``recommendations.parquet``. A shard's rows depend only on its users and the
options (same batches, same thread count), so the merged file is the same for any number of
processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from allmrec.utils.io import atomic_path, clear_temporary, write_json

MERGED = "recommendations.parquet"


def read_users(spec: str, dataset: Any) -> list[int]:
    """Internal user ids: ``"all"`` (every user with a history) or a file with one original
    user id per line (blank lines and ``#`` comments ignored)."""
    if spec == "all":
        return [u for u in range(dataset.n_users) if len(dataset.sequences[u])]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--users: {spec!r} is neither 'all' nor a file of user ids")
    index = {str(u): k for k, u in enumerate(dataset.user_ids)}
    wanted = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    wanted = [w for w in wanted if w]
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} unknown user id(s): {unknown[:10]}")
    return [index[w] for w in dict.fromkeys(wanted)]


def shard_key(model_id: str, users: list[int], options: dict[str, Any]) -> str:
    payload = json.dumps({"model": model_id, "users": users, "options": options}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _shard_done(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - an unreadable shard is redone
        return False
    return meta.get(b"allmrec_shard_key", b"").decode() == key


def _write_shard(path: Path, rows: dict[str, list[Any]], key: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"user": pa.array(rows["user"], pa.string()), "rank": pa.array(rows["rank"], pa.int32()),
                      "item_id": pa.array(rows["item_id"], pa.string()), "score": pa.array(rows["score"], pa.float64())})
    table = table.replace_schema_metadata({"allmrec_shard_key": key})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def predict_shard(model: Any, engine: Any, users: list[int], top_k: int) -> dict[str, list[Any]]:
    from allmrec.serving.requests import RankRow

    ds = model.resources.dataset
    rows = [RankRow(list(map(int, ds.sequences[u][-model.history_len :])), None, top_k, given=len(ds.sequences[u]), used=0) for u in users]
    out: dict[str, list[Any]] = {"user": [], "rank": [], "item_id": [], "score": []}
    for u, res in zip(users, engine(rows)):
        for item in res["items"]:
            out["user"].append(str(ds.user_ids[u]))
            out["rank"].append(int(item["rank"]))
            out["item_id"].append(item["item_id"])
            out["score"].append(float(item["score"]))
    return out


def predict(artifact: str | os.PathLike, users: str = "all", out_dir: str | os.PathLike = "recs", top_k: int = 10, n_candidates: int = 20,
            cold_slots: int = 2, shard_size: int = 64, batch_size: int = 1, threads: int = 1, llm: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Write the recommendations (see the module docstring); returns a summary (on every process)."""
    import torch
    from accelerate import PartialState

    from allmrec.serving.batcher import RankEngine
    from allmrec.serving.trained import TrainedRecommender

    state = PartialState(cpu=device == "cpu")
    if threads > 0:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = TrainedRecommender.from_pretrained(artifact, llm=llm, device=device)
    engine = RankEngine(model, n_candidates, cold_slots, max_batch=batch_size)
    wanted = read_users(users, model.resources.dataset)
    options = {"top_k": top_k, "n_candidates": n_candidates, "cold_slots": cold_slots, "batch_size": batch_size, "threads": threads}
    shards = [wanted[s : s + shard_size] for s in range(0, len(wanted), shard_size)]
    out = Path(out_dir)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        clear_temporary(out)  # what a killed run's shard writes left
    state.wait_for_everyone()  # before any process writes a shard
    done = skipped = 0
    with state.split_between_processes(list(range(len(shards)))) as mine:
        for s in mine:
            path, key = out / f"part-{s:05d}.parquet", shard_key(model.manifest["id"], shards[s], options)
            if _shard_done(path, key):
                skipped += 1
                continue
            _write_shard(path, predict_shard(model, engine, shards[s], top_k), key)
            done += 1
    seconds = time.perf_counter() - t0
    state.wait_for_everyone()
    summary = {"model": model.manifest["id"], "users": len(wanted), "shards": len(shards), "processes": state.num_processes, "top_k": top_k,
               "written_by_this_process": done, "skipped_by_this_process": skipped, "seconds_this_process": round(seconds, 2)}
    if state.is_main_process:
        merge_shards(out, len(shards))
        write_json(out / "predict.json", {k: v for k, v in summary.items() if not k.endswith("this_process")} | {"options": options, "file": MERGED})
    state.wait_for_everyone()
    return summary


def merge_shards(out: Path, n_shards: int) -> Path:
    """Concatenate ``part-00000 ... part-<n-1>`` into ``recommendations.parquet`` (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [out / f"part-{s:05d}.parquet" for s in range(n_shards)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{out}: shard(s) missing after every process finished: {missing[:5]}")
    tables = [pq.read_table(p).replace_schema_metadata(None) for p in parts]
    merged = pa.concat_tables(tables) if tables else pa.table({"user": pa.array([], pa.string()), "rank": pa.array([], pa.int32()),
                                                               "item_id": pa.array([], pa.string()), "score": pa.array([], pa.float64())})
    with atomic_path(out / MERGED) as tmp:
        pq.write_table(merged, tmp)
    return out / MERGED


def users_per_second(summary: dict[str, Any]) -> float:
    return float(np.round(summary["users"] / max(summary["seconds_this_process"], 1e-9), 3))
