"""The training loop's checkpoints on disk: write, point at, verify, prune (:mod:`allmrec.training`).

A run folder holds::

    checkpoints/step-00000200/   weights.safetensors, optimizer.safetensors, trainer_state.json
    latest.json                  {"step": 200, "path": "checkpoints/step-00000200"}
    done.json                    training finished (written last)

What holds after a crash at any moment (``tests/test_crash_resume.py`` kills every long step at
seeded fault points and checks it):

* ``latest.json`` always points to a complete checkpoint folder. A checkpoint is written into a
  temporary ``.step-*`` folder, renamed into place, and only then pointed at (an atomic
  replace). A step saved twice (the last step of a run is saved at its epoch's end and again
  when training ends; a finished run re-opened saves it again) holds the same tensors, so only
  its ``trainer_state.json`` is replaced, in one atomic rename: the folder ``latest.json`` points
  to is never taken apart.
* A checkpoint is verified before use: ``trainer_state.json`` records the SHA-256 of the two
  tensor files and a checksum of its own content; a mismatch (a damaged disk, a file edited or
  copied in half) is refused with a message naming the file, not loaded.
* Leftovers of a crash (temporary ``.step-*`` folders, ``.<name>.*.tmp`` files, checkpoint folders
  of steps later than the pointed one, left by a run killed before it moved the pointer) are never
  read; resuming deletes them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from allmrec.utils.faults import fault_point
from allmrec.utils.io import clear_temporary, file_sha256, json_checksum, optimizer_to_tensors, read_json, save_tensors, write_json

DONE = "done.json"
POINTER = "latest.json"
STATE = "trainer_state.json"
TENSOR_FILES = ("weights.safetensors", "optimizer.safetensors")


def save_checkpoint(out_dir: Path, task: Any, state: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoints/step-<step>/`` for ``task`` (a :class:`~allmrec.training.TrainingTask`)
    and point ``latest.json`` at it; keep the newest ``keep`` checkpoint folders."""
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        save_tensors(tmp / TENSOR_FILES[0], task.trained_state(), metadata={"format": task.format, "step": str(state["step"])})
        tensors, opt_meta = optimizer_to_tensors(task.optimizer)
        save_tensors(tmp / TENSOR_FILES[1], tensors)
        body = {**state, "identity": task.identity(), "optimizer": opt_meta, "files": {f: file_sha256(tmp / f) for f in TENSOR_FILES}}
        write_json(tmp / STATE, {**body, "checksum": json_checksum(body)})
        fault_point(f"checkpoint:{name}:written")
        final = _publish(tmp, root, name)
        fault_point(f"checkpoint:{name}:renamed")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(out_dir / POINTER, {"step": state["step"], "path": f"checkpoints/{final.name}"})
    fault_point(f"checkpoint:{name}:pointed")
    _prune(root, final, keep)
    return final


def _publish(tmp: Path, root: Path, name: str) -> Path:
    """Move the complete folder ``tmp`` to ``root/name``. A folder already there for the same
    step with the same tensors gets only the new ``trainer_state.json`` (one atomic rename);
    with other tensors (not expected: nothing trains between two saves of a step) the new
    checkpoint goes to ``name.1`` (``.2``, ...) and the old one is pruned once unpointed."""
    final = root / name
    if not final.exists():
        os.replace(tmp, final)
        return final
    if all((final / f).is_file() and file_sha256(final / f) == file_sha256(tmp / f) for f in TENSOR_FILES):
        os.replace(tmp / STATE, final / STATE)
        return final
    k = 1
    while (root / f"{name}.{k}").exists():
        k += 1
    os.replace(tmp, root / f"{name}.{k}")
    return root / f"{name}.{k}"


def _folder_step(path: Path) -> int | None:
    try:
        return int(path.name[len("step-"):].split(".", 1)[0])
    except ValueError:
        return None


def _prune(root: Path, current: Path, keep: int) -> None:
    """Delete the checkpoint folders other than ``current``: those of its step or later ones
    (left by a run killed before it moved the pointer) and all but the newest ``keep - 1`` earlier ones."""
    step = _folder_step(current)
    others = [(s, p) for p in root.glob("step-*") if p.is_dir() and p != current and (s := _folder_step(p)) is not None]
    later = [p for s, p in others if s >= step]
    earlier = [p for s, p in sorted((s, p) for s, p in others if s < step)]
    for old in later + earlier[: max(0, len(earlier) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
        fault_point(f"checkpoint:{current.name}:pruned-{old.name}")


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint folder ``latest.json`` points to, or ``None`` when there is none yet."""
    out_dir = Path(out_dir)
    pointer = out_dir / POINTER
    if not pointer.exists():
        return None
    path = out_dir / str(read_json(pointer).get("path", ""))
    if not (path / STATE).exists():
        raise ValueError(f"{pointer}: field 'path' points to {path}, which holds no checkpoint (deleted?)")
    return path


def verified_state(ckpt: Path) -> dict[str, Any]:
    """``trainer_state.json`` of checkpoint folder ``ckpt``, after checking its checksum and the
    SHA-256 of its tensor files (checkpoints written before these were recorded are read as they are)."""
    path = ckpt / STATE
    hint = f"delete {ckpt.parent} and {ckpt.parent.parent / POINTER} to start over (or copy the file back from a backup)"
    try:
        saved = read_json(path)
    except ValueError as err:
        raise ValueError(f"corrupt checkpoint: {err}; {hint}") from None
    checksum = saved.pop("checksum", None)
    if checksum is not None and json_checksum(saved) != checksum:
        raise ValueError(f"{path}: corrupt checkpoint: the content does not match its recorded checksum (damaged or edited); {hint}")
    for name, digest in (saved.get("files") or {}).items():
        actual = file_sha256(ckpt / name) if (ckpt / name).is_file() else "missing"
        if actual != digest:
            raise ValueError(f"{ckpt / name}: corrupt checkpoint: SHA-256 {actual[:16]}... but {STATE} records {digest[:16]}...; {hint}")
    return saved


def clear_leftovers(out_dir: Path) -> list[Path]:
    """Delete what a crash left in a run folder that nothing reads: temporary checkpoint folders,
    atomic writes' ``.<name>.*.tmp`` files and folders (returns them)."""
    found = [p for p in (out_dir / "checkpoints").glob(".step-*") if p.is_dir()]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found + clear_temporary(out_dir)


def clear_checkpoints(out_dir: Path) -> None:
    """Forget a previous run in ``out_dir``: its checkpoints, pointer and finished marker."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in (POINTER, DONE):
        (out_dir / name).unlink(missing_ok=True)
