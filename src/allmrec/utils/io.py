"""Atomic file writes and safetensors + JSON checkpoints (never pickle)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save

from allmrec.utils.faults import fault_point


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A crash mid-write leaves the previous file intact (``os.replace`` is atomic on POSIX) and at
    most a ``.<name>.*.tmp`` file beside it, which nothing reads (a training run's folder is
    cleared of them when it resumes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        fault_point(f"write:{path.parent.name}/{path.name}", partial=Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def clear_temporary(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files and folders :func:`atomic_path` (and folder writers
    named like it) left in ``folder`` when a crash cut a write short; call it only where one
    process writes (a run folder it owns). Returns what was deleted."""
    import shutil

    folder = Path(folder)
    found = [p for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"))]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from err


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (64 hex digits) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_checksum(obj: Any) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys, no spaces): a JSON file's own checksum,
    stable across a write and a read (Python's floats round-trip through JSON exactly)."""
    plain = json.loads(json.dumps(obj, default=_json_default))  # as a reader will see it (tuples as lists, ...)
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save a flat dict of tensors as safetensors, atomically; the same tensors and metadata give
    the same bytes in every process (see :func:`canonical_safetensors`)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = canonical_safetensors(save(tensors, metadata=metadata))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its header's metadata in sorted key order.

    The safetensors writer keeps the metadata in a hash map whose order is seeded per process,
    so the same model written by two processes (an interrupted run and its resumption) gave
    different bytes, hence different file hashes (which the experiment store keys units on).
    The tensor entries keep their (deterministic) order; the header is padded with spaces to a
    multiple of 8 bytes, as the format allows.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def tensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (``{}`` when it has none), read without its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def check_weights_counter(weights: str | os.PathLike, name: str, described: Any) -> None:
    """Refuse a weights file whose recorded counter ``name`` (``step``, ``epoch``) differs from the
    one its description (``model.json``) gives: the two were written by different saves (an
    interrupted write)."""
    saved = tensors_metadata(weights).get(name)
    if saved is not None and described is not None and int(saved) != int(described):
        raise ValueError(f"{weights}: holds {name} {saved} but its description says {name} {described} (interrupted write?)")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into safetensors-ready tensors and a JSON-ready rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, json.loads(json.dumps({"param_groups": groups, "scalars": scalars}, default=_json_default))


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors`: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
