"""The text tower: a small learned map of frozen item-text embeddings into a space where a
user's recent items point at their next one (AlphaRec / LLMEmb style, no per-user LLM cost).

An item is ``normalize(MLP(Q_i))`` (``Q``: the frozen text table, centred, unit rows); a user is
the normalised 0.8-decayed mean of their last 10 items; a candidate scores the cosine. Trained on
the training sequences only (every next item of ``seq[:-2]``, in-batch positives plus shared
uniform negatives), on :func:`allmrec.training.run_training`, keeping the epoch with the best
loss on a seeded 5% of the users held out.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from allmrec.data.dataset import SequenceDataset
from allmrec.data.queries import Queries
from allmrec.fusion.features import DECAY, HISTORY, normalize_rows, recent
from allmrec.training import LoopOptions, TrainingTask, run_training
from allmrec.utils.io import load_tensors, save_tensors, tensors_metadata
from allmrec.utils.paths import cache_dir as default_cache_dir
from allmrec.utils.seed import rng, torch_seed

log = logging.getLogger(__name__)


@dataclass
class TowerConfig:
    dim: int = 64
    hidden: int = 256
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 512
    negatives: int = 256  # shared uniform negatives per step
    held_out: float = 0.05  # share of training users whose examples choose the epoch
    seed: int = 0


class TextTower(nn.Module):
    def __init__(self, table: np.ndarray, config: TowerConfig) -> None:
        super().__init__()
        self.center = np.asarray(table, dtype=np.float32)[1:].mean(0)  # kept: added items are centred the same way
        self.register_buffer("table", torch.as_tensor(normalize_rows(table, center=True)), persistent=False)  # rebuilt from the encoder
        gen = torch.Generator().manual_seed(config.seed)
        self.mlp = nn.Sequential(nn.Linear(self.table.shape[1], config.hidden), nn.GELU(), nn.Linear(config.hidden, config.dim))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            nn.init.uniform_(layer.bias, -layer.in_features**-0.5, layer.in_features**-0.5, generator=gen)
        self.log_tau = nn.Parameter(torch.tensor(math.log(10.0)))

    def items(self, idx: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.table[idx]), dim=-1) * (idx != 0).unsqueeze(-1)

    def user(self, recent_items: torch.Tensor) -> torch.Tensor:
        ages = torch.arange(recent_items.shape[1] - 1, -1, -1, dtype=torch.float32)
        w = (DECAY**ages).unsqueeze(0) * (recent_items != 0)
        return F.normalize((self.items(recent_items) * w.unsqueeze(-1)).sum(1), dim=-1)

    def add_items(self, rows: np.ndarray) -> None:
        """Append the text-table rows of new items (ids ``n_items + 1, ...``); known items' scores
        do not change."""
        rows = np.asarray(rows, dtype=np.float32) - self.center
        unit = normalize_rows(np.concatenate([np.zeros((1, rows.shape[1]), np.float32), rows]))[1:]
        self.table = torch.cat([self.table, torch.as_tensor(unit).to(self.table)])

    @torch.no_grad()
    def score(self, queries: Queries) -> np.ndarray:
        """Cosine scores ``(U, C)`` of the queries' candidates."""
        u = self.user(torch.as_tensor(recent(queries.histories)))
        return torch.einsum("ucd,ud->uc", self.items(torch.as_tensor(queries.candidates)), u).numpy().astype(np.float32)


def _examples(dataset: SequenceDataset, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    hist, target = [], []
    for u in users:
        s = dataset.train_sequence(int(u))
        for t in range(1, len(s)):
            hist.append(s[max(0, t - HISTORY) : t])
            target.append(int(s[t]))
    return torch.as_tensor(recent(hist)), torch.as_tensor(np.asarray(target, dtype=np.int64))


class TowerTask(TrainingTask):
    name = "text tower"
    format = "allmrec-text-tower/1"

    def __init__(self, dataset: SequenceDataset, table: np.ndarray, config: TowerConfig) -> None:
        self.dataset, self.config = dataset, config
        self.model = TextTower(table, config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        users = np.flatnonzero(dataset.train_users)
        gen = rng(config.seed, "tower-held-out")
        held = np.zeros(dataset.n_users, dtype=bool)
        held[gen.choice(users, size=max(1, int(len(users) * config.held_out)), replace=False)] = True
        self.H, self.T = _examples(dataset, users[~held[users]])
        self.Hh, self.Th = _examples(dataset, users[held[users]])
        self.negs_h = torch.as_tensor(gen.integers(1, dataset.n_items + 1, size=(len(self.Th), 19)))
        self.best_state: dict[str, torch.Tensor] | None = None

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.T) / self.config.batch_size))

    def identity(self) -> dict[str, Any]:
        return {"config": vars(self.config), "examples": int(len(self.T)), "table": float(self.model.table.sum())}

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors)

    def start_epoch(self, epoch: int) -> None:
        self.order = torch.as_tensor(rng(self.config.seed, "tower-order", epoch).permutation(len(self.T)))
        self.model.train()

    def step(self, epoch: int, index: int) -> float:
        c = self.config
        rows = self.order[index * c.batch_size : (index + 1) * c.batch_size]
        torch.manual_seed(torch_seed(c.seed, "tower-step", epoch, index))
        negs = torch.randint(1, self.dataset.n_items + 1, (c.negatives,))
        u = self.model.user(self.H[rows])
        logits = self.model.log_tau.exp() * u @ self.model.items(torch.cat([self.T[rows], negs])).T
        loss = F.cross_entropy(logits, torch.arange(len(rows)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        u = self.model.user(self.Hh)
        sc = (self.model.items(torch.cat([self.Th[:, None], self.negs_h], 1)) * u[:, None]).sum(-1) * self.model.log_tau.exp()
        loss = float(F.cross_entropy(sc, torch.zeros(len(sc), dtype=torch.long)))
        return {"neg_loss": -loss, "hit@1": float(((sc[:, 1:] >= sc[:, :1]).sum(1) == 0).float().mean())}

    def keep_best(self, epoch: int, metrics: dict[str, float]) -> None:
        self.best_state = copy.deepcopy(self.model.state_dict())

    def finish(self, state: dict[str, Any]) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()


def tower_cache_path(dataset: SequenceDataset, table: np.ndarray, config: TowerConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/<key>.safetensors``: the key hashes what the seeded training reads (the
    training users' sequences: a scenario restricts the users and keeps the dataset's
    fingerprint), the text table's bytes and the options."""
    h = hashlib.sha256(f"{TowerTask.format}|{dataset.n_items}|{json.dumps(vars(config), sort_keys=True)}".encode())
    table = np.ascontiguousarray(table, dtype=np.float32)
    h.update(str(table.shape).encode() + table.tobytes())
    for user in np.flatnonzero(dataset.train_users):
        seq = np.asarray(dataset.sequences[user], dtype=np.int64)
        h.update(np.asarray([user, len(seq)], dtype=np.int64).tobytes() + seq.tobytes())
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir("text_towers")
    return folder / f"{h.hexdigest()[:24]}.safetensors"


def train_text_tower(dataset: SequenceDataset, table: np.ndarray, config: TowerConfig | None = None, progress: bool = False,
                     cache: bool = True, cache_dir: str | os.PathLike | None = None) -> tuple[TextTower, dict]:
    """Train the tower in memory (a few minutes on CPU; its weights are saved with the fusion),
    or, with ``cache``, load the one trained before on the same dataset, table and options
    (:func:`tower_cache_path`, default folder ``$ALLMREC_HOME/text_towers``), so the many runs
    of an experiment, or ``allmrec fuse`` run again, train it once."""
    config = config or TowerConfig()
    path = tower_cache_path(dataset, table, config, cache_dir) if cache else None
    if path is not None and path.exists():
        tower = TextTower(table, config)
        tower.load_state_dict(load_tensors(path))
        info = json.loads(tensors_metadata(path).get("info", "{}"))
        log.info("text tower loaded from %s", path)
        return tower.eval(), info
    task = TowerTask(dataset, table, config)
    state = run_training(task, LoopOptions(epochs=config.epochs, validate_every_epochs=1, select="neg_loss", progress=progress), None)
    # without the timings: the same inputs give the same bytes, trained or loaded
    info = {"best": state["best"], "history": [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in state["history"]]}
    if path is not None:
        save_tensors(path, task.model.state_dict(), metadata={"info": json.dumps(info, default=float), "dataset": dataset.fingerprint})
    return task.model, info
