"""The one training loop every trained part of the library plugs into (CF backbones, stage 1,
stage 2, TALLRec), with one checkpoint layout, one resume rule and one "finished" marker.

A model's training is a :class:`TrainingTask`: it knows how many optimiser steps an epoch has,
draws each epoch's seeded plan (order, negatives) in :meth:`~TrainingTask.start_epoch`, runs one
step in :meth:`~TrainingTask.step`, and may validate. :func:`run_training` owns the rest:

* epochs and steps (``epochs``, ``max_steps``), the loss log and per-epoch losses;
* validation at epoch ends (``validate_every_epochs``, with early stopping on ``patience``
  validations without a better ``select`` metric; the task keeps the best model) and/or every
  ``validate_every_steps`` steps (a learning curve, ``curve``: ``[step, hit@1, ndcg@10]``, with
  the training seconds spent to reach each point in ``curve_seconds``: ``[step, seconds]``; the
  validations' own time is not training time);
* checkpoints and exact resume.

Run folder (``out_dir``)::

    checkpoints/step-00000200/   weights.safetensors, optimizer.safetensors, trainer_state.json
    latest.json                  {"step": ..., "path": "checkpoints/step-..."} (atomic pointer)
    model.safetensors, model.json, ...   the final (or best-so-far) model, written by the task
    done.json                    training finished (the loop writes it last)

A checkpoint folder is written under a temporary name and renamed; ``latest.json`` is replaced
atomically after that, so a crash at any point leaves a complete, verified checkpoint to resume
from (the layout, its SHA-256 checks and what holds after a crash: :mod:`allmrec.checkpoint`).
An epoch's last step is checkpointed once, after the epoch's bookkeeping (its history record,
validation, best model), so a crash cannot separate the two. Resuming continues from ``latest.json`` when the task's identity (its defining options and the
identities of its inputs) equals the checkpoint's; otherwise it is an error that names what
differs. Every epoch's plan derives from ``(seed, epoch)`` and random state is re-seeded per
epoch (or step) by the task, so a resumed run computes exactly what the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch

from allmrec import distributed
from allmrec.checkpoint import DONE, clear_checkpoints, clear_leftovers, latest_checkpoint, save_checkpoint, verified_state
from allmrec.utils.faults import fault_point
from allmrec.utils.io import load_tensors, optimizer_from_tensors, write_json
from allmrec.utils.progress import progress_bar

__all__ = ["DONE", "LoopOptions", "TrainingTask", "clear_checkpoints", "is_finished", "latest_checkpoint", "run_training", "save_checkpoint"]


@dataclass
class LoopOptions:
    """How long to train and when to validate and checkpoint.

    ``checkpoint_every``: steps between checkpoints (0: at epoch ends only). ``patience``:
    validations at epoch ends without a better ``select`` metric before stopping (0: never stop
    early). ``validate_every_steps`` also validates at step 0 and at the end.
    """

    epochs: int
    max_steps: int | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    log_every: int = 10
    validate_every_epochs: int = 0
    validate_every_steps: int = 0
    patience: int = 0
    select: str = ""
    progress: bool = True


class TrainingTask(ABC):
    """One model's training, as the loop sees it."""

    name: str = "training"  # progress-bar label
    format: str = ""  # checkpoint format tag
    optimizer: torch.optim.Optimizer

    @abstractmethod
    def steps_per_epoch(self) -> int: ...

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (defining options, input identities)."""

    def check_resume(self, saved: dict[str, Any], where: Path) -> None:
        """Refuse a checkpoint whose :meth:`identity` differs (override for clearer messages)."""
        mine = self.identity()
        diffs = [k for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]
        if diffs:
            raise ValueError(f"{where}: cannot resume, the checkpoint was made for other {', '.join(diffs)}; use another folder or start over")

    @abstractmethod
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tensors training changes (what a checkpoint keeps besides the optimizer)."""

    @abstractmethod
    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def session(self) -> ContextManager[Any]:
        """Process settings held for the whole run (threads, a forked RNG, ...)."""
        return nullcontext()

    @abstractmethod
    def start_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s plan (0-based) and seed its random state."""

    @abstractmethod
    def step(self, epoch: int, index: int) -> float:
        """Run optimiser step ``index`` of ``epoch``; return the loss."""

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Called after an epoch's last step; returns extra fields of its history record."""
        return {}

    def validate(self) -> dict[str, float]:
        """Validation metrics of the current model."""
        raise NotImplementedError(f"{type(self).__name__} does not validate")

    def keep_best(self, epoch: int, metrics: dict[str, float]) -> None:
        """A new best validation result at the end of ``epoch`` (1-based): keep that model."""

    def finish(self, state: dict[str, Any]) -> None:
        """Training is over: write the final model (the loop writes ``done.json`` after it)."""


def run_training(task: TrainingTask, options: LoopOptions, out_dir: str | Path | None, resume: bool = True) -> dict[str, Any]:
    """Train ``task``; checkpoints go to ``out_dir`` (``None``: nothing saved). Returns the
    trainer state: ``step``, ``epoch``, ``history`` (one record per epoch), ``loss_log``,
    ``epoch_loss``, ``curve``, ``curve_seconds``, ``seconds`` (training time of all sessions), ``best``."""
    out = Path(out_dir) if out_dir is not None else None
    distributed.init_from_env()  # under torchrun / accelerate launch: data-parallel, rank 0 writes
    with task.session():
        steps_per_epoch = task.steps_per_epoch()
        total = steps_per_epoch * options.epochs
        if options.max_steps is not None:
            total = min(total, options.max_steps)
        state = _fresh_state(task)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            if not resume and distributed.is_main():
                clear_checkpoints(out)
            distributed.barrier()
            state = _resume(task, out, state)
            if state["step"] > total:
                raise ValueError(f"{out}: the checkpoint holds {state['step']} steps ({state['epoch']} epochs) but only {total} steps "
                                 f"({options.epochs} epochs) were asked for; ask for more, or start over in another folder")
            distributed.barrier()  # every process has read the checkpoint before rank 0 replaces it
            if distributed.is_main():
                (out / DONE).unlink(missing_ok=True)
        _Loop(task, options, out, state, steps_per_epoch, total).run()
        task.finish(state)
    fault_point("training:finished")
    if out is not None and distributed.is_main():
        write_json(out / DONE, {"format": task.format, "step": state["step"], "epoch": state["epoch"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return state


def is_finished(out_dir: str | Path) -> bool:
    """Whether a training run in ``out_dir`` ran to its end."""
    return (Path(out_dir) / DONE).is_file()


def _fresh_state(task: TrainingTask) -> dict[str, Any]:
    return {"format": task.format, "step": 0, "epoch": 0, "history": [], "loss_log": [], "epoch_loss": {}, "curve": [], "curve_seconds": [], "seconds": 0.0,
            "best": None, "bad_evals": 0, "log_window": []}


class _Loop:
    """One session of :func:`run_training` (a story in chapters: steps, validation, checkpoints)."""

    def __init__(self, task: TrainingTask, options: LoopOptions, out: Path | None, state: dict[str, Any], steps_per_epoch: int, total: int) -> None:
        self.task, self.opt, self.out, self.state = task, options, out, state
        self.steps_per_epoch, self.total = steps_per_epoch, total
        self.started = time.perf_counter() - float(state["seconds"])

    def run(self) -> None:
        st, opt = self.state, self.opt
        bar = progress_bar(total=self.total, initial=st["step"], desc=self.task.name, disable=not opt.progress or not distributed.is_main())
        try:
            if opt.validate_every_steps and st["step"] == 0:  # a resumed run has its points up to its checkpoint
                self.curve_point()
            while st["step"] < self.total and not self.stopped():
                epoch, within = divmod(st["step"], self.steps_per_epoch)
                epoch_started = time.perf_counter()
                self.task.start_epoch(epoch)
                for index in range(within, self.steps_per_epoch):
                    if st["step"] >= self.total:
                        break
                    loss = self.task.step(epoch, index)
                    self.record_step(epoch, loss)
                    fault_point(f"step:{st['step']}")
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", refresh=False)
                    if opt.validate_every_steps and st["step"] % opt.validate_every_steps == 0:
                        self.curve_point()
                    if opt.checkpoint_every and st["step"] % opt.checkpoint_every == 0 and st["step"] < self.total and index + 1 < self.steps_per_epoch:
                        self.checkpoint()  # (an epoch's last step is saved after the epoch's bookkeeping, below)
                if st["step"] % self.steps_per_epoch == 0:  # the epoch is complete
                    self.end_epoch(epoch, time.perf_counter() - epoch_started)
                    fault_point(f"epoch:{epoch + 1}")
                    self.checkpoint()
            if opt.validate_every_steps:
                self.curve_point()
        finally:
            bar.close()
        self.state["seconds"] = time.perf_counter() - self.started
        self.checkpoint()

    def stopped(self) -> bool:
        """Early stopping: ``patience`` validations in a row without a better result."""
        return self.opt.patience > 0 and self.state["bad_evals"] >= self.opt.patience

    def record_step(self, epoch: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(f"{self.task.name}: non-finite loss {loss} at step {self.state['step']}")
        st = self.state
        st["step"] += 1
        window = st["log_window"]  # losses not logged yet (kept in checkpoints, so a resumed log is the same)
        window.append(loss)
        ep = st["epoch_loss"].setdefault(str(epoch), [0.0, 0])
        ep[0] += loss
        ep[1] += 1
        if len(window) >= self.opt.log_every or st["step"] == self.total:
            st["loss_log"].append([st["step"], float(np.mean(window))])
            window.clear()
        st["seconds"] = time.perf_counter() - self.started

    def end_epoch(self, epoch: int, seconds: float) -> None:
        st, opt = self.state, self.opt
        total, n = st["epoch_loss"].get(str(epoch), [0.0, 0])
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(n, 1), "train_seconds": seconds}
        record.update(self.task.end_epoch(epoch))
        last = st["step"] >= self.total
        if opt.validate_every_epochs and ((epoch + 1) % opt.validate_every_epochs == 0 or last):
            t0 = time.perf_counter()
            metrics = self.task.validate()
            record["valid"] = metrics
            record["eval_seconds"] = time.perf_counter() - t0
            self.started += record["eval_seconds"]  # validation is not training time
            value = float(metrics.get(opt.select, 0.0))
            if st["best"] is None or value > st["best"]["metric"]:
                st["best"], st["bad_evals"] = {"metric": value, "epoch": epoch + 1}, 0
                self.task.keep_best(epoch + 1, metrics)
            else:
                st["bad_evals"] += 1
        st["history"].append(record)
        st["epoch"] = epoch + 1

    def curve_point(self) -> None:
        st = self.state
        if any(p[0] == st["step"] for p in st["curve"]):
            return
        t0 = time.perf_counter()
        metrics = self.task.validate()
        self.started += time.perf_counter() - t0  # evaluation is not training time
        st["curve"].append([st["step"], metrics.get("hit@1"), metrics.get("ndcg@10")])
        st["curve_seconds"].append([st["step"], time.perf_counter() - self.started])  # training time to this point (a time-to-target)

    def checkpoint(self) -> None:
        if self.out is not None and distributed.is_main():
            save_checkpoint(self.out, self.task, self.state, self.opt.keep_checkpoints)
        distributed.barrier()


# ---- resuming -----------------------------------------------------------------------------------
def _resume(task: TrainingTask, out: Path, state: dict[str, Any]) -> dict[str, Any]:
    clear_leftovers(out)
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return state
    saved = verified_state(ckpt)
    if saved.get("format") != task.format:
        raise ValueError(f"{ckpt / 'trainer_state.json'}: field 'format' is {saved.get('format')!r}, expected {task.format!r}")
    task.check_resume(saved.get("identity", {}), ckpt)
    try:
        task.load_trained_state(load_tensors(ckpt / "weights.safetensors"))
        opt_tensors = load_tensors(ckpt / "optimizer.safetensors")
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{ckpt}: unreadable checkpoint ({err}); delete the folder to start over") from err
    task.optimizer.load_state_dict(optimizer_from_tensors(opt_tensors, saved["optimizer"]))
    return {k: saved.get(k, v) for k, v in state.items()}
