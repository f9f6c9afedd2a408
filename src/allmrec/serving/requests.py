"""Request bodies of the server, checked field by field: every refusal is an :class:`ApiError`
with an HTTP status and the field it names, answered as
``{"error": {"code", "type", "field", "message", ...}}``.

Statuses: 400 body is not JSON (or not UTF-8); 413 body over the size limit; 415 content type
is not ``application/json``; 422 a field is missing, of the wrong type, out of range, a
duplicate, an unknown item id (the ids are listed) or an unknown field; 409 an added item's id
is taken; 403 writes are not enabled; 429 too many requests in flight; 503 not ready.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from allmrec.serving.catalogue import Catalogue


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field, self.extra = status, kind, message, field, extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "type": self.kind, "field": self.field, "message": self.message, **self.extra}}


@dataclass
class Limits:
    """What the server accepts (``allmrec serve`` options)."""

    max_candidates: int = 100
    max_top_k: int = 100
    max_batch_requests: int = 64
    max_new_items: int = 100
    max_history_input: int = 10_000
    max_body_bytes: int = 1 << 20
    max_id_chars: int = 256
    max_title_chars: int = 1_000
    max_text_chars: int = 10_000


@dataclass
class RankRow:
    """One ranking question in internal ids."""

    history: list[int]
    candidates: list[int] | None
    top_k: int
    given: int  # history length as sent
    used: int  # history length the model reads (the most recent items)
    extra: dict[str, Any] = field(default_factory=dict)


def check_content_type(value: str | None) -> None:
    kind = (value or "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "unsupported_media_type", f"Content-Type must be application/json, got {value or 'none'!r}", "Content-Type")


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ApiError(400, "invalid_json", f"the body is not UTF-8 ({err.reason} at byte {err.start})", "body") from None
    except json.JSONDecodeError as err:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", "body") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply", "body") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_type", f"the body must be a JSON object, got {type(data).__name__}", "body")
    return data


def _fields(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s) {unknown[:5]}; allowed: {sorted(allowed)}", f"{where}{unknown[0]}")


def _int(data: dict[str, Any], key: str, default: int, lo: int, hi: int, where: str) -> int:
    value = data.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, "invalid_type", f"{key} must be an integer, got {type(value).__name__}", f"{where}{key}")
    if not lo <= value <= hi:
        raise ApiError(422, "out_of_range", f"{key} must be in {lo}..{hi}, got {value}", f"{where}{key}")
    return value


def _ids(value: Any, name: str, limits: Limits, max_len: int) -> list[str]:
    if not isinstance(value, list):
        raise ApiError(422, "invalid_type", f"{name} must be a list of item ids, got {type(value).__name__}", name)
    if len(value) > max_len:
        raise ApiError(422, "too_many", f"{name} has {len(value)} entries; at most {max_len}", name)
    out = []
    for k, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ApiError(422, "invalid_type", f"{name}[{k}] must be a string or integer item id, got {type(v).__name__}", f"{name}[{k}]")
        s = str(v)
        if not s or len(s) > limits.max_id_chars:
            raise ApiError(422, "invalid_value", f"{name}[{k}] must be 1..{limits.max_id_chars} characters", f"{name}[{k}]")
        out.append(s)
    return out


def _known(ids: list[str], catalogue: Catalogue, name: str) -> list[int]:
    internal, unknown = catalogue.lookup(ids)
    if unknown:
        shown = list(dict.fromkeys(unknown))
        raise ApiError(422, "unknown_items", f"{len(shown)} unknown item id(s) in {name}: {shown[:20]}", name, ids=shown[:100])
    return internal


def parse_rank(data: dict[str, Any], catalogue: Catalogue, limits: Limits, history_len: int, where: str = "") -> RankRow:
    """A ``/v1/rank`` body: ``history`` (non-empty; the most recent ``history_len`` are used),
    ``candidates`` (null: retrieved; else distinct known ids, at most ``max_candidates``),
    ``top_k`` (1..``max_top_k``, default 10)."""
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_type", f"{where.rstrip('.') or 'body'} must be a JSON object", where.rstrip(".") or "body")
    _fields(data, {"history", "candidates", "top_k"}, where)
    if "history" not in data:
        raise ApiError(422, "missing_field", "history is required (a list of item ids, oldest first)", f"{where}history")
    history = _ids(data["history"], f"{where}history", limits, limits.max_history_input)
    if not history:
        raise ApiError(422, "empty", "history must hold at least one item id", f"{where}history")
    top_k = _int(data, "top_k", 10, 1, limits.max_top_k, where)
    cands = None
    if data.get("candidates") is not None:
        raw = _ids(data["candidates"], f"{where}candidates", limits, limits.max_candidates)
        if not raw:
            raise ApiError(422, "empty", "candidates must hold at least one item id, or be null to retrieve them", f"{where}candidates")
        dup = sorted({c for c in raw if raw.count(c) > 1}) if len(set(raw)) < len(raw) else []
        if dup:
            raise ApiError(422, "duplicate_items", f"candidates repeat item id(s) {dup[:20]}", f"{where}candidates", ids=dup[:100])
        cands = _known(raw, catalogue, f"{where}candidates")
    hist = _known(history, catalogue, f"{where}history")
    used = hist[-history_len:]
    return RankRow(used, cands, top_k, given=len(hist), used=len(used))


def parse_batch(data: dict[str, Any], catalogue: Catalogue, limits: Limits, history_len: int) -> list[RankRow]:
    _fields(data, {"requests"}, "")
    reqs = data.get("requests")
    if not isinstance(reqs, list):
        raise ApiError(422, "invalid_type" if "requests" in data else "missing_field", "requests must be a list of rank requests", "requests")
    if not 1 <= len(reqs) <= limits.max_batch_requests:
        raise ApiError(422, "out_of_range", f"requests must hold 1..{limits.max_batch_requests} entries, got {len(reqs)}", "requests")
    return [parse_rank(r, catalogue, limits, history_len, where=f"requests[{k}].") for k, r in enumerate(reqs)]


def parse_items(data: dict[str, Any], catalogue: Catalogue, limits: Limits) -> list[dict[str, Any]]:
    """A ``POST /v1/items`` body: ``{"items": [{"item_id", "title", "text"?, "fields"?}]}``."""
    _fields(data, {"items"}, "")
    items = data.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= limits.max_new_items:
        raise ApiError(422, "invalid_type" if not isinstance(items, list) else "out_of_range", f"items must be a list of 1..{limits.max_new_items} items", "items")
    out, seen = [], set()
    for k, it in enumerate(items):
        where = f"items[{k}]"
        if not isinstance(it, dict):
            raise ApiError(422, "invalid_type", f"{where} must be an object", where)
        _fields(it, {"item_id", "title", "text", "fields"}, f"{where}.")
        iid = _ids([it.get("item_id")], f"{where}.item_id", limits, 1)[0] if it.get("item_id") is not None else None
        if iid is None:
            raise ApiError(422, "missing_field", f"{where}.item_id is required", f"{where}.item_id")
        if iid in catalogue.index:
            raise ApiError(409, "item_exists", f"item id {iid!r} is already in the catalogue", f"{where}.item_id", ids=[iid])
        if iid in seen:
            raise ApiError(422, "duplicate_items", f"item id {iid!r} appears twice in items", f"{where}.item_id", ids=[iid])
        seen.add(iid)
        out.append({"item_id": iid, "title": _text(it, "title", where, limits.max_title_chars, True), "text": _text(it, "text", where, limits.max_text_chars, False),
                    "fields": _string_map(it.get("fields"), f"{where}.fields", limits.max_text_chars)})
    return out


def _text(it: dict[str, Any], key: str, where: str, max_chars: int, required: bool) -> str:
    value = it.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_type" if not isinstance(value, str) else "empty", f"{where}.{key} must be a non-empty string", f"{where}.{key}")
    if len(value) > max_chars:
        raise ApiError(422, "too_long", f"{where}.{key} has {len(value)} characters; at most {max_chars}", f"{where}.{key}")
    return value


def _string_map(value: Any, where: str, max_chars: int) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) <= max_chars for k, v in value.items()):
        raise ApiError(422, "invalid_type", f"{where} must map field names to strings (at most {max_chars} characters)", where)
    return dict(value)
