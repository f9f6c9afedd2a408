"""Step checkpoints of the LLM-side trainers (stage 2, TALLRec).

Layout of a run folder::

    checkpoints/step-00000200/   <weights>.safetensors, optimizer.safetensors, trainer_state.json
    latest.json                  {"step": ..., "path": "checkpoints/step-..."} (atomic pointer)

A checkpoint folder is written under a temporary name and renamed; ``latest.json`` is replaced
atomically after that, so a crash at any point leaves the previous checkpoint usable.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allmrec.utils.io import optimizer_to_tensors, read_json, save_tensors, write_json


def save_step_checkpoint(out_dir: Path, weights_name: str, weights: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
                         state: dict[str, Any], keep: int, fmt: str) -> Path:
    """Write ``checkpoints/step-<state['step']>/`` and point ``latest.json`` at it; keep the
    newest ``keep`` checkpoint folders."""
    ckpt_root = out_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:08d}"
    final = ckpt_root / name
    if (final / "trainer_state.json").exists():  # this step is saved already (a finished run re-opened)
        write_json(out_dir / "latest.json", {"step": state["step"], "path": f"checkpoints/{name}"})
        return final
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}."))
    try:
        save_tensors(tmp / weights_name, weights, metadata={"format": fmt, "step": str(state["step"])})
        tensors, opt_meta = optimizer_to_tensors(opt)
        save_tensors(tmp / "optimizer.safetensors", tensors)
        write_json(tmp / "trainer_state.json", {**state, "optimizer": opt_meta})
        if final.exists():  # a partial folder from a crash (no trainer_state.json): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(out_dir / "latest.json", {"step": state["step"], "path": f"checkpoints/{name}"})
    kept = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def record_step(state: dict[str, Any], window: list[float], epoch: int, loss: float, log_every: int, total: int) -> None:
    """Count one optimiser step in a trainer state: ``step``, the per-epoch loss sums
    (``epoch_loss[epoch] = [sum, n]``) and the loss log (mean over each ``log_every`` steps and
    at the last step); ``window`` holds the losses not yet logged."""
    state["step"] += 1
    window.append(loss)
    ep = state["epoch_loss"].setdefault(str(epoch), [0.0, 0])
    ep[0] += loss
    ep[1] += 1
    if len(window) >= log_every or state["step"] == total:
        state["loss_log"].append([state["step"], float(np.mean(window))])
        window.clear()


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint folder ``latest.json`` points to, or ``None`` when there is none yet."""
    pointer = out_dir / "latest.json"
    if not pointer.exists():
        return None
    info = read_json(pointer)
    path = out_dir / str(info.get("path", ""))
    if not (path / "trainer_state.json").exists():
        raise ValueError(f"{pointer}: field 'path' points to {path}, which holds no checkpoint (deleted?)")
    return path


def clear_run(out_dir: Path, names: Iterable[str]) -> None:
    """Delete the checkpoints, ``latest.json`` and the given files of a run folder."""
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in ("latest.json", *names):
        (out_dir / name).unlink(missing_ok=True)


def check_resumable(saved: dict[str, Any], config: Any, resumable: set[str], where: Path, what: str) -> None:
    """Refuse to resume when a field outside ``resumable`` differs from the checkpoint's."""
    new = dataclasses.asdict(config)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {new.get(k)!r}" for k in sorted(new) if k not in resumable and saved.get(k) != new.get(k)]
    if diffs:
        raise ValueError(f"{where}: cannot resume, the {what} config differs ({'; '.join(diffs)}). Use another out_dir or resume=False.")
