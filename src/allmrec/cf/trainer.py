"""Train a CF backbone with early stopping, atomic per-epoch checkpoints and exact resume.

Layout of ``out_dir``::

    model.safetensors, model.json       the best model so far (by validation NDCG@10): load_cf(out_dir)
    trainer_state.json                  config, epoch, best metric, patience counter, history,
                                        optimizer scalars; names the checkpoint files below
    checkpoint-eNNNN.model.safetensors  weights after epoch NNNN
    checkpoint-eNNNN.optim.safetensors  optimizer tensors after epoch NNNN (flattened)

Every file is written atomically and ``trainer_state.json`` is written last, so it always names a
complete checkpoint; older checkpoint files are deleted only after it is replaced. Each epoch
draws its batches from ``rng(seed, "cf-train", epoch)`` and reseeds torch (dropout) from
``rng(seed, "cf-dropout", epoch)``, so a run resumed at an epoch boundary is bit-identical to an
uninterrupted one (same machine, same thread count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allmrec.cf.base import CFBackbone, build_backbone, get_backbone_class
from allmrec.cf.evaluate import evaluate_cf
from allmrec.cf.sampling import make_sampler
from allmrec.config import from_dict
from allmrec.data.dataset import SequenceDataset
from allmrec.utils.io import load_tensors, read_json, save_tensors, write_json, optimizer_from_tensors, optimizer_to_tensors
from allmrec.utils.runtime import torch_threads
from allmrec.utils.seed import rng

log = logging.getLogger(__name__)

MODEL_FORMAT = "allmrec-cf/1"
STATE_FORMAT = "allmrec-cf-trainer/1"
SELECT_METRIC = "ndcg@10"
# Options that may change between an interrupted run and its resumption: they do not change
# what the finished epochs computed.
RESUMABLE_FIELDS = ("epochs", "patience", "threads", "device", "eval_batch_size")


@dataclass
class TrainCFConfig:
    """Options of :func:`train_cf` (the paper's SASRec settings by default).

    ``patience`` counts validations (every ``eval_every`` epochs) without a better validation
    NDCG@10; ``patience <= 0`` disables early stopping. ``backbone_options`` go to the backbone's
    config dataclass (``n_items``/``n_users`` are filled from the dataset).
    """

    backbone: str = "sasrec"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    patience: int = 20
    eval_every: int = 1
    eval_batch_size: int = 1024
    seed: int = 0
    threads: int = 1  # these models' ops are tiny: extra intra-op threads mostly add sync cost
    device: str = "cpu"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))


def dataset_fingerprint(dataset: SequenceDataset) -> str:
    """The dataset's own fingerprint, or a hash of its sequences, candidates and training mask."""
    if dataset.fingerprint:
        return dataset.fingerprint
    h = hashlib.sha256()
    h.update(np.asarray([dataset.n_users, dataset.n_items], dtype=np.int64).tobytes())
    for s in dataset.sequences:
        h.update(np.asarray(len(s), dtype=np.int64).tobytes())
        h.update(np.asarray(s, dtype=np.int64).tobytes())
    for a in (dataset.valid_candidates, dataset.test_candidates):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    h.update(np.asarray(dataset.train_users, dtype=bool).tobytes())
    return "sha256:" + h.hexdigest()[:32]


# ---- saving and loading a model ------------------------------------------------------------
def save_cf(model: CFBackbone, out_dir: str | Path, dataset: SequenceDataset | None = None, **info: Any) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (backbone name, config, dataset, ``info``)."""
    out_dir = Path(out_dir)
    epoch = int(info.get("epoch", 0))
    save_tensors(out_dir / "model.safetensors", model.state_dict(), metadata={"format": MODEL_FORMAT, "epoch": str(epoch)})
    meta: dict[str, Any] = {"format": MODEL_FORMAT, "backbone": model.name, "config": dataclasses.asdict(model.config)}
    if dataset is not None:
        meta["dataset"] = {"name": dataset.name, "fingerprint": dataset_fingerprint(dataset), "n_users": dataset.n_users, "n_items": dataset.n_items}
    meta.update(info)
    meta["epoch"] = epoch
    write_json(out_dir / "model.json", _jsonable(meta))
    return out_dir


def load_cf(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    dataset: SequenceDataset | None = None,
    item_features: torch.Tensor | None = None,
) -> CFBackbone:
    """Load a backbone saved by :func:`train_cf` / :func:`save_cf`.

    ``path`` is the run folder or its ``model.json`` / ``model.safetensors``. The backbone must
    be registered (import the module defining a user-made backbone first). Returns the model in
    eval mode on ``device``.

    Backbones that read item features not stored in the checkpoint (``needs_item_text``, e.g.
    MoRec's text table) need ``dataset`` (the features are recomputed, normally from a cache) or
    ``item_features``; the backbone checks they are the ones it was trained with.
    """
    path = Path(path)
    folder = path.parent if path.suffix in (".json", ".safetensors") else path
    meta_path, weights_path = folder / "model.json", folder / "model.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found; a CF model folder holds model.json and model.safetensors (written by train_cf)")
    meta = read_json(meta_path)
    for key in ("backbone", "config"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing field {key!r}")
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    try:
        cls = get_backbone_class(meta["backbone"])
    except KeyError as err:
        raise ValueError(f"{meta_path}: field 'backbone': {err.args[0]} (import the module that registers it)") from None
    config = from_dict(cls.config_class, meta["config"], where=f"{meta_path}: config")
    model = cls(config)
    try:
        tensors = load_tensors(weights_path)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{weights_path}: unreadable safetensors file ({err})") from err
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_path}: weights do not match the {meta['backbone']!r} config in {meta_path}: {err}") from err
    if getattr(cls, "needs_item_text", False):
        if dataset is None and item_features is None:
            raise ValueError(f"{meta_path}: backbone {meta['backbone']!r} reads item text features that are not saved; pass dataset= (to recompute them) or item_features=")
        try:
            features, _ = cls.prepare_item_features(dataset, dataclasses.asdict(config), item_features)
            model.set_item_features(features)
        except ValueError as err:
            raise ValueError(f"{meta_path}: {err}") from None
    elif item_features is not None:
        raise ValueError(f"{meta_path}: backbone {meta['backbone']!r} takes no item features")
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as f:
        saved_epoch = (f.metadata() or {}).get("epoch")
    if saved_epoch is not None and "epoch" in meta and int(saved_epoch) != int(meta["epoch"]):
        raise ValueError(f"{weights_path}: holds epoch {saved_epoch} but {meta_path} describes epoch {meta['epoch']} (interrupted write?)")
    return model.to(device).eval()


# ---- optimizer state as safetensors + JSON ---------------------------------------------------
# ---- training -------------------------------------------------------------------------------
def _check_resume(state: dict[str, Any], config: TrainCFConfig, fingerprint: str, state_path: Path) -> None:
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{state_path}: field 'format' is {state.get('format')!r}, expected {STATE_FORMAT!r}")
    stored, new = state.get("config", {}), _jsonable(dataclasses.asdict(config))
    diffs = [f"{k}: checkpoint {stored.get(k)!r} vs now {new.get(k)!r}" for k in sorted(set(stored) | set(new)) if k not in RESUMABLE_FIELDS and stored.get(k) != new.get(k)]
    if diffs:
        raise ValueError(
            f"{state_path}: cannot resume, the training config differs from the interrupted run's ("
            + "; ".join(diffs)
            + "). Use another out_dir, or resume=False to start over and overwrite it."
        )
    if state.get("dataset_fingerprint") != fingerprint:
        raise ValueError(
            f"{state_path}: cannot resume, the checkpoint was trained on dataset {state.get('dataset_fingerprint')!r}, "
            f"not on this one ({fingerprint!r}). Use another out_dir, or resume=False to start over."
        )


def _clear_run(out_dir: Path) -> None:
    for p in [*out_dir.glob("checkpoint-e*.safetensors"), out_dir / "trainer_state.json", out_dir / "model.json", out_dir / "model.safetensors"]:
        p.unlink(missing_ok=True)


def _torch_seed(seed: int, *stream: int | str) -> int:
    return int(rng(seed, *stream).integers(0, 2**63 - 1))


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
    out_dir : run folder (created); see the module docstring for its files.
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
    with torch_threads(config.threads):
        return _train_cf(dataset, config, out_dir, resume, progress, item_features)


def _train_cf(
    dataset: SequenceDataset,
    config: TrainCFConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    item_features: torch.Tensor | None = None,
) -> tuple[CFBackbone, list[dict[str, Any]]]:
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    options = dict(config.backbone_options)
    for key, value in (("n_items", dataset.n_items), ("n_users", dataset.n_users)):
        if options.get(key, value) != value:
            raise ValueError(f"backbone_options[{key!r}] = {options[key]} but the dataset has {value}")
        options[key] = value
    cls = get_backbone_class(config.backbone)
    features = None
    if getattr(cls, "needs_item_text", False):
        # Item features not learnt by the model (MoRec's frozen text table); fills e.g. text_dim.
        features, options = cls.prepare_item_features(dataset, options, item_features)
    elif item_features is not None:
        raise ValueError(f"backbone {config.backbone!r} takes no item features")
    torch.manual_seed(_torch_seed(config.seed, "cf-init"))
    model = build_backbone(config.backbone, **options).to(device)
    if features is not None:
        model.set_item_features(features)
    train_mask = np.asarray(dataset.train_users, dtype=bool)
    model.prepare_training(torch.tensor(train_mask, device=device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    sampler = make_sampler(model, dataset, config.batch_size, config.seed)
    lens = np.fromiter((len(s) for s in dataset.sequences), dtype=np.int64, count=dataset.n_users)
    valid_users = np.flatnonzero(train_mask & (lens >= 3))
    fingerprint = dataset_fingerprint(dataset)
    state_path = out_dir / "trainer_state.json"

    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "config": _jsonable(dataclasses.asdict(config)),
        "backbone_config": _jsonable(dataclasses.asdict(model.config)),
        "dataset_fingerprint": fingerprint,
        "item_features": model.item_features_fingerprint() if features is not None else None,
        "epoch": 0,
        "best_metric": None,
        "best_epoch": 0,
        "bad_evals": 0,
        "history": [],
    }
    if state_path.exists() and resume:
        stored = read_json(state_path)
        _check_resume(stored, config, fingerprint, state_path)
        if stored.get("item_features") != state["item_features"]:
            raise ValueError(
                f"{state_path}: cannot resume, the checkpoint was trained with item features {stored.get('item_features')!r}, "
                f"not with these ({state['item_features']!r}). Use another out_dir, or resume=False to start over."
            )
        ckpt = stored.get("checkpoint") or {}
        files = [out_dir / ckpt.get("model", "?"), out_dir / ckpt.get("optimizer", "?")]
        for p in files:
            if not p.is_file():
                raise FileNotFoundError(f"{state_path}: names checkpoint file {p.name}, which is missing")
        model.load_state_dict(load_tensors(files[0], device=device))
        # Optimizer tensors load on the CPU; load_state_dict moves moments to the parameters' device.
        optimizer.load_state_dict(optimizer_from_tensors(load_tensors(files[1]), stored["optimizer"]))
        state.update({k: stored[k] for k in ("epoch", "best_metric", "best_epoch", "bad_evals", "history")})
        state["checkpoint"], state["optimizer"] = ckpt, stored["optimizer"]
    elif state_path.exists() or (out_dir / "model.json").exists():
        _clear_run(out_dir)

    def stopped() -> bool:
        return config.patience > 0 and state["bad_evals"] >= config.patience

    bar = tqdm(total=config.epochs, initial=min(state["epoch"], config.epochs), disable=not progress, desc=f"train {config.backbone}", unit="epoch")
    try:
        while state["epoch"] < config.epochs and not stopped():
            epoch = state["epoch"] + 1
            torch.manual_seed(_torch_seed(config.seed, "cf-dropout", epoch))
            model.train()
            t0 = time.perf_counter()
            total, batches = 0.0, 0
            for batch in sampler.epoch(epoch):
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model.training_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                batches += 1
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": total / max(batches, 1),
                "train_seconds": seconds,
                "sequences_per_s": sampler.n_sequences / seconds if seconds > 0 else 0.0,
            }
            improved = False
            if epoch % max(config.eval_every, 1) == 0 or epoch == config.epochs:
                t1 = time.perf_counter()
                metrics = evaluate_cf(model, dataset, "valid", valid_users, config.eval_batch_size)
                record["valid"] = metrics
                record["eval_seconds"] = time.perf_counter() - t1
                value = metrics.get(SELECT_METRIC, 0.0)
                if state["best_metric"] is None or value > state["best_metric"]:
                    state["best_metric"], state["best_epoch"], state["bad_evals"] = value, epoch, 0
                    improved = True
                else:
                    state["bad_evals"] += 1
            if improved:
                save_cf(model, out_dir, dataset, epoch=epoch, valid=record["valid"], train_config=dataclasses.asdict(config))
            state["history"].append(record)
            state["epoch"] = epoch
            _write_checkpoint(out_dir, state, model, optimizer)
            bar.update(1)
            log.info(
                "epoch %d: loss %.4f, %.0f seq/s%s",
                epoch,
                record["loss"],
                record["sequences_per_s"],
                f", valid ndcg@10 {record['valid'][SELECT_METRIC]:.4f} hit@1 {record['valid']['hit@1']:.4f}" if "valid" in record else "",
            )
            postfix = {"loss": f"{record['loss']:.4f}"}
            if "valid" in record:
                postfix["ndcg@10"] = f"{record['valid'][SELECT_METRIC]:.4f}"
            if state["best_metric"] is not None:
                postfix["best"] = f"{state['best_metric']:.4f}@{state['best_epoch']}"
            bar.set_postfix(postfix)
    finally:
        bar.close()

    if not (out_dir / "model.json").exists():
        # No validation ran (epochs == 0): the current weights are the only model there is.
        save_cf(model, out_dir, dataset, epoch=state["epoch"], train_config=dataclasses.asdict(config))
    best = load_cf(out_dir, device=device, item_features=features)
    return best, list(state["history"])


def _write_checkpoint(out_dir: Path, state: dict[str, Any], model: CFBackbone, optimizer: torch.optim.Optimizer) -> None:
    epoch = state["epoch"]
    names = {"model": f"checkpoint-e{epoch:04d}.model.safetensors", "optimizer": f"checkpoint-e{epoch:04d}.optim.safetensors"}
    save_tensors(out_dir / names["model"], model.state_dict(), metadata={"epoch": str(epoch)})
    tensors, meta = optimizer_to_tensors(optimizer)
    save_tensors(out_dir / names["optimizer"], tensors, metadata={"epoch": str(epoch)})
    state["checkpoint"], state["optimizer"] = names, meta
    write_json(out_dir / "trainer_state.json", _jsonable(state))
    keep = set(names.values())
    for p in out_dir.glob("checkpoint-e*.safetensors"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
