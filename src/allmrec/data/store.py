"""Prepared-dataset store: ``prepare`` (raw files -> a cached :class:`SequenceDataset`) and ``load_prepared``.

The prepared folder ``<cache_root>/<name>-<fingerprint>/`` holds

* ``items.parquet``: one row per item id ``0..n_items`` (row 0 = padding): ``item`` (int),
  ``item_id`` (original), ``title``, ``text`` (rendered template) and the other text columns;
* ``sequences.parquet``: ``user``, ``position``, ``item`` (chronological);
* ``users.parquet``: ``user``, ``user_id``, ``train_user``, ``kind``;
* ``valid_candidates.npy`` / ``test_candidates.npy``: ``(n_users, n_candidates)`` int64,
  column 0 = truth (byte-identical for the same inputs and options);
* ``meta.json``: options, input files, statistics, fingerprint, wording.

The fingerprint is a short sha256 of the canonical JSON of every option plus each input
file's size and content hash, so changing either prepares anew, while copying, moving or
re-mounting the files (new paths and modification times) keeps every cache and checkpoint. The
folder is written under a temporary name and renamed into place: a crash never leaves a
half-written dataset, and an existing one is only replaced (``force``) once the new one is
complete. Bad input fails while reading, before anything is written: a failed ``prepare``
leaves the cache as it was (``tests/data/test_fuzz.py`` checks it for every fuzz case).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from allmrec.data.candidates import sample_candidates
from allmrec.data.config import PrepareConfig
from allmrec.data.dataset import SequenceDataset
from allmrec.data.preprocess import build
from allmrec.data.raw import InsufficientDataError
from allmrec.data.readers import input_files, read_raw
from allmrec.utils.io import read_json, write_json
from allmrec.utils.paths import cache_dir
from allmrec.utils.seed import rng

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the prepared files' meaning changes
_PATH_OPTIONS = ("path", "interactions_file", "items_file")  # replaced by the resolved input files


def fingerprint(config: PrepareConfig, files: dict[str, Path] | None = None) -> str:
    """12 hex digits identifying the prepared result of ``config`` on its current input files."""
    files = input_files(config) if files is None else files
    options = {k: v for k, v in config.to_dict().items() if k not in _PATH_OPTIONS}
    inputs = {role: {k: v for k, v in d.items() if k != "path"} for role, d in _describe_inputs(files).items()}
    payload = {"format_version": FORMAT_VERSION, "options": options, "inputs": inputs}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _describe_inputs(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for role, p in sorted(files.items()):
        st = p.stat()
        out[role] = {"path": str(p), "size": st.st_size, "sha256": _content_hash(str(p.resolve()), st.st_size, st.st_mtime_ns)}
    return out


@functools.lru_cache(maxsize=64)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes; memoised on (path, size, mtime) so one process reads each file once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_dir(config: PrepareConfig, cache_root: str | Path | None = None) -> Path:
    """Where ``prepare(config, cache_root)`` stores (or finds) its result."""
    root = Path(cache_root) if cache_root is not None else cache_dir("datasets")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", config.name) or "dataset"
    return root / f"{safe}-{fingerprint(config)}"


def prepare(config: PrepareConfig, cache_root: str | Path | None = None, force: bool = False) -> SequenceDataset:
    """Prepare the dataset ``config`` describes, or load it from the cache.

    Parameters
    ----------
    config : PrepareConfig
    cache_root : folder of prepared datasets (default ``allmrec.utils.paths.cache_dir("datasets")``).
    force : prepare again even if a cached copy exists (it is replaced only once the new
        copy is complete).
    """
    final = dataset_dir(config, cache_root)
    if (final / "meta.json").exists() and not force:
        log.info("loading prepared %s from %s", config.name, final)
        return load_prepared(final)
    files = input_files(config)
    t0 = time.perf_counter()
    raw = read_raw(config)
    prep = build(raw, config)
    n_items = len(prep.items) - 1
    seqs = prep.sequences
    _check_candidates(prep.seen, prep.user_ids, n_items, config.n_candidates, raw.files[0])
    valid_t = np.fromiter((s[-2] for s in seqs), dtype=np.int64, count=len(seqs))
    test_t = np.fromiter((s[-1] for s in seqs), dtype=np.int64, count=len(seqs))
    valid = sample_candidates(valid_t, prep.seen, n_items, config.n_candidates, rng(config.seed, "candidates", "valid"))
    test = sample_candidates(test_t, prep.seen, n_items, config.n_candidates, rng(config.seed, "candidates", "test"))
    stats = dict(prep.stats, prepare_seconds=round(time.perf_counter() - t0, 3))

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        items = prep.items.copy()
        items.insert(0, "item", np.arange(len(items), dtype=np.int64))
        items.to_parquet(tmp / "items.parquet", index=False)
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        pd.DataFrame({
            "user": np.repeat(np.arange(len(seqs), dtype=np.int64), lens),
            "position": np.concatenate([np.arange(n, dtype=np.int64) for n in lens]),
            "item": np.concatenate(seqs).astype(np.int64),
        }).to_parquet(tmp / "sequences.parquet", index=False)
        pd.DataFrame({
            "user": np.arange(len(seqs), dtype=np.int64),
            "user_id": pd.Series(prep.user_ids, dtype=str),
            "train_user": prep.train_users,
            "kind": pd.Series(prep.user_kind, dtype=str),
        }).to_parquet(tmp / "users.parquet", index=False)
        np.save(tmp / "valid_candidates.npy", valid)
        np.save(tmp / "test_candidates.npy", test)
        write_json(tmp / "meta.json", {
            "name": config.name,
            "fingerprint": final.name.rsplit("-", 1)[1],
            "format_version": FORMAT_VERSION,
            "options": config.to_dict(),
            "inputs": _describe_inputs(files),
            "item_fields": [c for c in prep.items.columns if c not in ("item_id", "title", "text")],
            "stats": stats,
            "wording": dict(config.wording),
        })
        _make_readable(tmp)
        _publish(tmp, final, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s in %.1fs -> %s", config.name, stats["prepare_seconds"], final)
    return load_prepared(final)


def _check_candidates(seen: list[np.ndarray], user_ids: np.ndarray, n_items: int, n_candidates: int, source: Path) -> None:
    """Every user must leave ``n_candidates - 1`` items unseen to draw negatives from."""
    unseen = n_items - np.fromiter((len(np.unique(s)) for s in seen), dtype=np.int64, count=len(seen))
    short = np.flatnonzero(unseen < n_candidates - 1)
    if short.size:
        u = int(short[0])
        raise InsufficientDataError(source, None, None, f"user {str(user_ids[u])!r} has seen {n_items - unseen[u]} of the {n_items} "
                                                        f"items, too few are left for {n_candidates - 1} negative candidates "
                                                        f"(lower n_candidates)")


def _make_readable(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give them the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _publish(tmp: Path, final: Path, force: bool) -> None:
    """Move the complete ``tmp`` folder to ``final`` without ever losing a complete copy."""
    if final.exists():
        if not force:  # another process finished the same preparation first: keep theirs
            return
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise


def load_prepared(path: str | Path) -> SequenceDataset:
    """Read a folder written by :func:`prepare`."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path}: not a prepared dataset (no meta.json)")
    meta = read_json(path / "meta.json")
    items = pd.read_parquet(path / "items.parquet")
    seq = pd.read_parquet(path / "sequences.parquet")
    users = pd.read_parquet(path / "users.parquet")
    seq = seq.sort_values(["user", "position"], kind="stable")
    n_users = len(users)
    counts = np.bincount(seq["user"].to_numpy(), minlength=n_users)
    sequences = np.split(seq["item"].to_numpy(dtype=np.int64), np.cumsum(counts)[:-1])
    fields = meta.get("item_fields", [])
    return SequenceDataset(
        name=meta["name"],
        item_ids=items["item_id"].to_numpy(dtype=str),
        titles=items["title"].astype(str).tolist(),
        texts=items["text"].astype(str).tolist(),
        user_ids=users["user_id"].to_numpy(dtype=str),
        sequences=sequences,
        valid_candidates=np.load(path / "valid_candidates.npy"),
        test_candidates=np.load(path / "test_candidates.npy"),
        train_users=users["train_user"].to_numpy(dtype=bool),
        item_fields={c: items[c].astype(str).tolist() for c in fields},
        stats=meta.get("stats", {}),
        options=meta.get("options", {}),
        fingerprint=meta.get("fingerprint", ""),
        wording=meta.get("wording", {}),
    )
