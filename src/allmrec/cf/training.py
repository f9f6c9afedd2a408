"""Train a CF backbone (on :func:`allmrec.training.run_training`): early stopping on validation
NDCG@10, the best model kept as ``model.safetensors`` + ``model.json`` (:mod:`allmrec.cf.io`),
a checkpoint after every epoch and exact resume.

Each epoch draws its batches from ``rng(seed, "cf-train", epoch)`` and reseeds torch (dropout)
from ``rng(seed, "cf-dropout", epoch)`` (epochs numbered from 1), so a run resumed at an epoch
boundary is bit-identical to an uninterrupted one (same machine, same thread count).

A backbone that defines ``pretrain(dataset, out_dir, *, train_mask, seed, progress)`` (CTRL,
RECFORMER) has it run once, on a fresh run, before epoch 1; it trains the model's weights in
place, resuming from its own checkpoints in ``<out_dir>/pretrain``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allmrec import distributed
from allmrec.cf.base import CFBackbone
from allmrec.cf.evaluate import evaluate_cf
from allmrec.cf.io import load_cf, save_cf
from allmrec.cf.registry import build_backbone, get_backbone_class
from allmrec.cf.sampling import make_sampler
from allmrec.config import check_resumable, length_field, runtime_field
from allmrec.data.dataset import SequenceDataset
from allmrec.training import LoopOptions, TrainingTask, latest_checkpoint, run_training
from allmrec.utils.fingerprint import dataset_fingerprint
from allmrec.utils.runtime import torch_threads
from allmrec.utils.seed import torch_seed

FORMAT = "allmrec-cf-trainer/2"
SELECT_METRIC = "ndcg@10"


@dataclass
class TrainCFConfig:
    """Options of :func:`train_cf` (the paper's SASRec settings by default).

    ``patience`` counts validations (every ``eval_every`` epochs) without a better validation
    NDCG@10; ``patience <= 0`` disables early stopping. ``backbone_options`` go to the backbone's
    config dataclass (``n_items``/``n_users`` are filled from the dataset).
    ``max_train_users`` / ``max_valid_users`` (0 = all): train on, and validate on, seeded samples
    of that many training users; for backbones whose steps are expensive (RECFORMER).
    """

    backbone: str = "sasrec"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = length_field(200)
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    patience: int = length_field(20)
    eval_every: int = 1
    eval_batch_size: int = runtime_field(1024)
    seed: int = 0
    threads: int = runtime_field(1)  # these models' ops are tiny: extra intra-op threads mostly add sync cost
    device: str = runtime_field("cpu")
    max_train_users: int = 0
    max_valid_users: int = 0


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))


class CFTrainingTask(TrainingTask):
    """One backbone trained on the training users' ``seq[:-2]``, validated on their validation items."""

    format = FORMAT

    def __init__(self, dataset: SequenceDataset, config: TrainCFConfig, out_dir: Path, item_features: torch.Tensor | None = None) -> None:
        self.dataset, self.config, self.out_dir = dataset, config, out_dir
        self.name = f"train {config.backbone}"
        self.device = torch.device(config.device)
        options = dict(config.backbone_options)
        for key, value in (("n_items", dataset.n_items), ("n_users", dataset.n_users)):
            if options.get(key, value) != value:
                raise ValueError(f"backbone_options[{key!r}] = {options[key]} but the dataset has {value}")
            options[key] = value
        cls = get_backbone_class(config.backbone)
        self.features = None
        if getattr(cls, "needs_item_text", False):
            # Item features not learnt by the model (MoRec's frozen text table); fills e.g. text_dim.
            self.features, options = cls.prepare_item_features(dataset, options, item_features)
        elif item_features is not None:
            raise ValueError(f"backbone {config.backbone!r} takes no item features")
        torch.manual_seed(torch_seed(config.seed, "cf-init"))
        self.model = build_backbone(config.backbone, **options).to(self.device)
        if self.features is not None:
            self.model.set_item_features(self.features)
        self.train_mask, self.valid_users = _train_valid_users(dataset, config)
        self.model.prepare_training(torch.tensor(self.train_mask, device=self.device))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
        self.sampler = make_sampler(self.model, dataset, config.batch_size, config.seed, self.train_mask)
        self.best: CFBackbone | None = None
        self.pretrain_summary: dict[str, Any] | None = None

    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def session(self):
        return torch_threads(self.config.threads)

    def identity(self) -> dict[str, Any]:
        features = self.model.item_features_fingerprint() if self.features is not None else None
        return {"config": _jsonable(dataclasses.asdict(self.config)), "dataset": dataset_fingerprint(self.dataset), "item_features": features}

    def check_resume(self, saved: dict[str, Any], where: Path) -> None:
        check_resumable(saved.get("config", {}), self.config, where, "training")
        mine = self.identity()
        for key, what in (("dataset", "dataset"), ("item_features", "item features")):
            if saved.get(key) != mine[key]:
                raise ValueError(f"{where}: cannot resume, the checkpoint was trained with {what} {saved.get(key)!r}, not with these "
                                 f"({mine[key]!r}). Use another out_dir, or resume=False to start over.")

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k: v.to(self.device) for k, v in tensors.items()})

    def start_epoch(self, epoch: int) -> None:
        torch.manual_seed(torch_seed(self.config.seed, "cf-dropout", epoch + 1))
        self.model.train()
        self._batches = iter(self.sampler.epoch(epoch + 1))
        self._next, self._started = 0, time.perf_counter()

    def step(self, epoch: int, index: int) -> float:
        if index != self._next:
            raise RuntimeError("CF epochs resume at epoch boundaries only (no mid-epoch checkpoints)")
        self._next += 1
        batch = {k: v.to(self.device) for k, v in next(self._batches).items()}
        if distributed.world_size() > 1:  # this process's rows of the global batch
            batch = {k: v[distributed.local_rows(len(v))] for k, v in batch.items()}

        def compute():
            rows = len(next(iter(batch.values())))
            count = float((batch["positives"] != 0).sum()) if "positives" in batch else float(rows)  # the loss's normaliser
            return (self.model.training_loss(batch) if (rows and count) or distributed.world_size() == 1 else None), count, ()

        loss, _ = distributed.step(self.optimizer, compute)
        return loss

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        seconds = time.perf_counter() - self._started
        record = {"sequences_per_s": self.sampler.n_sequences / seconds if seconds > 0 else 0.0}
        if epoch == 0 and self.pretrain_summary is not None:
            record["pretrain"] = self.pretrain_summary  # kept in epoch 1's record of the history
        return record

    def validate(self) -> dict[str, float]:
        return evaluate_cf(self.model, self.dataset, "valid", self.valid_users, self.config.eval_batch_size)

    def keep_best(self, epoch: int, metrics: dict[str, float]) -> None:
        if distributed.is_main():
            save_cf(self.model, self.out_dir, self.dataset, epoch=epoch, valid=metrics, train_config=dataclasses.asdict(self.config))
        distributed.barrier()

    def finish(self, state: dict[str, Any]) -> None:
        if distributed.is_main() and not (self.out_dir / "model.json").exists():
            # No validation ran (epochs == 0): the current weights are the only model there is.
            save_cf(self.model, self.out_dir, self.dataset, epoch=state["epoch"], train_config=dataclasses.asdict(self.config))
        distributed.barrier()
        self.best = load_cf(self.out_dir, device=self.device, item_features=self.features)


def _train_valid_users(dataset: SequenceDataset, config: TrainCFConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(n_users,)`` bool mask of the users that train, and the ids of the validation users
    (training users with a validation target), each a seeded sample when the config limits it."""
    from allmrec.eval.users import evaluable, sample_users

    train = np.flatnonzero(np.asarray(dataset.train_users, dtype=bool))
    mask = np.zeros(dataset.n_users, dtype=bool)
    mask[sample_users(train, config.max_train_users or None, config.seed, "cf-train-users")] = True
    return mask, sample_users(evaluable(dataset, train), config.max_valid_users or None, config.seed, "cf-valid-users")


def train_cf(
    dataset: SequenceDataset,
    config: TrainCFConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    *,
    item_features: torch.Tensor | None = None,
) -> tuple[CFBackbone, list[dict[str, Any]]]:
    """Train ``config.backbone`` on ``dataset``'s training users; keep the best validation model.

    Parameters
    ----------
    dataset : the prepared dataset; trains on ``seq[:-2]`` of users with ``train_users`` True
        and validates (NDCG@10 over the stored validation candidates) on the same users.
    config : :class:`TrainCFConfig`.
    out_dir : run folder (created); see :mod:`allmrec.training` for its layout.
    resume : continue an interrupted run found in ``out_dir`` (its config must match, except
        ``epochs``, ``patience``, ``threads``, ``device``, ``eval_batch_size``); ``False`` deletes
        a previous run's files there and starts over.
    progress : show a progress bar.
    item_features : for backbones with ``needs_item_text`` (MoRec): the ``(n_items + 1, d)``
        item text table; default: computed by the backbone from ``dataset`` (cached).

    Returns
    -------
    (model, history) : the best model (eval mode) and one dict per trained epoch (``epoch``,
        ``loss``, ``train_seconds``, ``sequences_per_s``; on validated epochs also ``valid`` and
        ``eval_seconds``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for name in ("model.json", "model.safetensors"):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / "pretrain", ignore_errors=True)
    with torch_threads(config.threads):
        task = CFTrainingTask(dataset, config, out_dir, item_features)
        if hasattr(task.model, "pretrain") and (not resume or latest_checkpoint(out_dir) is None):
            # A pre-training stage (CTRL, RECFORMER) runs once, on a fresh run, before epoch 1; a run
            # resumed from an epoch checkpoint holds its result already.
            task.pretrain_summary = task.model.pretrain(dataset, out_dir / "pretrain", train_mask=task.train_mask, seed=config.seed, progress=progress)
    options = LoopOptions(epochs=config.epochs, validate_every_epochs=max(config.eval_every, 1), patience=config.patience, select=SELECT_METRIC,
                          progress=progress)
    state = run_training(task, options, out_dir, resume=resume)
    return task.best, list(state["history"])


def training_summary(out_dir: str | Path) -> dict[str, Any]:
    """What a finished CF run did: backbone, epochs, best epoch and metric, training/eval time."""
    from allmrec.utils.io import read_json

    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return {}
    state = read_json(ckpt / "trainer_state.json")
    hist = state.get("history", [])
    best = state.get("best") or {}
    return {"backbone": ((state.get("identity") or {}).get("config") or {}).get("backbone"), "epochs": state.get("epoch"),
            "best_epoch": best.get("epoch"), "best_valid_ndcg@10": best.get("metric"),
            "train_seconds": round(sum(float(h.get("train_seconds", 0.0)) for h in hist), 2),
            "eval_seconds": round(sum(float(h.get("eval_seconds", 0.0)) for h in hist), 2)}
