"""What the pre-training stages of CTRL and RECFORMER share: the contrastive (InfoNCE) loss and
a seeded step task on the library's one training loop (:func:`allmrec.training.run_training`).

A backbone's ``pretrain`` hook (run by :func:`allmrec.cf.train_cf` before epoch 1) builds its
heads and a ``step_loss(users, g)`` function and hands them to :func:`run_pretraining`, which
owns the optimiser and the order of the users; the loop owns checkpoints and resuming (folder
``<cf run>/pretrain``, the layout of :mod:`allmrec.training`).

Epoch ``e`` (from 1) visits the users in the order ``rng(seed, name, "order", e)``; step ``k`` of
it draws its randomness from ``rng(seed, name, "step", e, k)`` and reseeds torch (dropout) from
``(seed, name, "dropout", e, k)``, so a run resumed from any checkpoint takes the same steps as
an uninterrupted one. A finished run only loads its weights when called again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from allmrec.training import LoopOptions, TrainingTask, run_training
from allmrec.utils.seed import rng, torch_seed

FORMAT = "allmrec-cf-pretrain/2"


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float, labels: torch.Tensor | None = None, symmetric: bool = False) -> torch.Tensor:
    """InfoNCE with cosine similarity: ``queries[i]`` should match ``keys[labels[i]]`` (default
    ``keys[i]``) against every other row of ``keys`` (in-batch negatives).

    Parameters
    ----------
    queries : ``(B, d)``.
    keys : ``(K, d)``.
    temperature : divides the cosine similarities.
    labels : ``(B,)`` int64 indices into ``keys``; default ``arange(B)`` (needs ``K == B``).
    symmetric : also the keys-to-queries direction, averaged (CTRL's two-way loss; needs the
        default labels).
    """
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / temperature
    if labels is None:
        labels = torch.arange(len(queries), device=queries.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        if logits.shape[0] != logits.shape[1]:
            raise ValueError(f"symmetric InfoNCE needs one key per query, got {tuple(logits.shape)}")
        loss = (loss + F.cross_entropy(logits.T, labels)) / 2
    return loss


@dataclass
class PretrainOptions:
    """How :func:`run_pretraining` runs (the backbone fills it from its config).

    Parameters
    ----------
    name : names the random streams and the log lines (``"ctrl"``, ``"recformer"``).
    epochs : passes over the users.
    batch_size : users per step.
    lr : Adam learning rate.
    save_every : a checkpoint every this many steps, and at the end of each epoch.
    seed : the run's seed.
    """

    name: str
    epochs: int
    batch_size: int
    lr: float
    save_every: int
    seed: int


class _PretrainTask(TrainingTask):
    format = FORMAT

    def __init__(self, trainable: nn.Module, step_loss: Callable[[np.ndarray, np.random.Generator], torch.Tensor], users: np.ndarray,
                 options: PretrainOptions, identity: dict[str, Any]) -> None:
        self.trainable, self.step_loss, self.users, self.opt = trainable, step_loss, users, options
        self.name = f"pretrain {options.name}"
        self._identity = {**identity, "users": f"{len(users)}:" + hashlib.sha256(users.tobytes()).hexdigest()[:16]}
        self.optimizer = torch.optim.Adam([p for p in trainable.parameters() if p.requires_grad], lr=options.lr)

    def steps_per_epoch(self) -> int:
        return -(-len(self.users) // self.opt.batch_size)

    def identity(self) -> dict[str, Any]:
        return self._identity

    def check_resume(self, saved: dict[str, Any], where: Path) -> None:
        mine = self._identity
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]
        if diffs:
            raise ValueError(f"{where}: cannot resume pre-training, it was run for something else ({'; '.join(diffs)}). "
                             "Delete that folder (or train with resume=False) to start over.")

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self.trainable.state_dict()

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.trainable.load_state_dict(tensors)

    def start_epoch(self, epoch: int) -> None:
        self.order = rng(self.opt.seed, self.opt.name, "order", epoch + 1).permutation(self.users)
        self.trainable.train()

    def step(self, epoch: int, index: int) -> float:
        o = self.opt
        batch = self.order[index * o.batch_size : (index + 1) * o.batch_size]
        torch.manual_seed(torch_seed(o.seed, o.name, "dropout", epoch + 1, index))
        loss = self.step_loss(batch, rng(o.seed, o.name, "step", epoch + 1, index))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def run_pretraining(
    trainable: nn.Module,
    step_loss: Callable[[np.ndarray, np.random.Generator], torch.Tensor],
    users: np.ndarray,
    out_dir: str | Path,
    options: PretrainOptions,
    identity: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``trainable`` (the backbone and its pre-training heads) on ``step_loss`` over
    batches of ``users``; resumable; returns a summary (steps, epochs, users, seconds, losses).

    Parameters
    ----------
    trainable : every module that pre-training updates; its state dict is what is saved.
    step_loss : ``(batch of user ids, per-step numpy generator) -> scalar loss``.
    users : the user ids to iterate over (already sampled by the caller).
    out_dir : the pre-training folder.
    options : :class:`PretrainOptions`.
    identity : JSON-able description of the run (backbone config, dataset fingerprint, ...);
        a checkpoint made for another identity is refused.
    progress : show a progress bar.
    """
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        raise ValueError(f"{options.name} pre-training: no user has enough training items")
    if options.batch_size <= 0 or options.epochs < 0 or options.save_every <= 0:
        raise ValueError(f"{options.name} pre-training needs batch_size > 0, epochs >= 0, save_every > 0; got {options}")
    task = _PretrainTask(trainable, step_loss, users, options, identity)
    loop = LoopOptions(epochs=options.epochs, checkpoint_every=options.save_every, log_every=options.save_every, progress=progress)
    state = run_training(task, loop, out_dir)
    trainable.eval()
    return {k: state[k] for k in ("step", "seconds", "epoch_loss")} | {"epochs": options.epochs, "users": len(users)}
