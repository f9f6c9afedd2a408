"""Units of work and their records: one JSON file per finished (or failed) unit.

A unit is identified by a path-like id (``train/main``, ``eval/overall/main/allmrec``) and a
*key*: the hash of everything that defines its result (the variant's config, the users, the
inference mode, the hashes of the model files it reads). ``units/<id>.json`` holds the record;
a rerun skips a unit whose record is ``done`` with the same key, and redoes it otherwise.

Evaluation records keep the per-user ranks, so every metric in the report can be recomputed
from them, and so a user already scored by the same model (same variant, method, mode and model
files) is never scored twice: a smaller user sample is a prefix of a larger one and cold/warm
users overlap the overall sample.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from allmrec.utils.io import read_json, write_json

STATUSES = ("done", "unavailable", "skipped", "failed")


def stable_hash(obj: Any) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: str | Path) -> str | None:
    """SHA-256 (16 hex digits) of a file's bytes; ``None`` if it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def invocations(results: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{started, seconds}]`` of the invocations recorded in a ``results.json`` (files written
    before the list existed hold only their last invocation: ``started`` / ``this_run_seconds``)."""
    runs = results.get("invocations")
    if runs is None and results.get("started"):
        runs = [{"started": results["started"], "seconds": results.get("this_run_seconds", 0.0)}]
    return [r for r in runs or [] if isinstance(r, dict)]


class UnitStore:
    """The records of one experiment folder (``<root>/units``)."""

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root) / "units"
        self.records: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}
        if self.dir.exists():
            for path in sorted(self.dir.rglob("*.json")):
                rec = read_json(path)
                if isinstance(rec, dict) and "id" in rec:
                    self.records[rec["id"]] = rec
                    self._index(rec)

    def path(self, uid: str) -> Path:
        return self.dir / f"{uid}.json"

    def get(self, uid: str) -> dict[str, Any] | None:
        return self.records.get(uid)

    def is_done(self, uid: str, key: str) -> bool:
        rec = self.records.get(uid)
        return bool(rec) and rec.get("status") == "done" and rec.get("key") == key

    def write(self, uid: str, record: dict[str, Any]) -> dict[str, Any]:
        if record.get("status") not in STATUSES:
            raise ValueError(f"unit {uid}: status must be one of {STATUSES}, got {record.get('status')!r}")
        record = {"id": uid, **record, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path(uid), record)
        self.records[uid] = record
        self._index(record)
        return record

    # ---- per-user rows shared between evaluation units of the same model --------------------------
    def rows(self, score_key: str) -> dict[int, dict[str, Any]]:
        """Per-user rows already computed under ``score_key`` (variant, method, mode, model hashes)."""
        return self._rows.setdefault(score_key, {})

    def _index(self, rec: dict[str, Any]) -> None:
        if rec.get("status") != "done" or "score_key" not in rec or "users" not in rec:
            return
        rows = self._rows.setdefault(rec["score_key"], {})
        columns = [c for c in ("rank", "gen_hit", "gen_no_match") if c in rec]
        for i, u in enumerate(rec["users"]):
            rows.setdefault(int(u), {c: rec[c][i] for c in columns})
