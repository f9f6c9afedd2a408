"""Stage 1 of A-LLMRec: align the frozen CF model's item embeddings with Sentence-BERT text
embeddings through two autoencoders (paper section 4.1, equations 2-6).

For item ``i`` with CF embedding ``E_i`` (``d``) and text embedding ``Q_i = SBERT(text_i)``::

    e_i = f_I^enc(E_i)          q_i = f_T^enc(Q_i)                       (latent, d' = 128)
    L_matching   = MSE(e_i, q_i)
    L_item-recon = MSE(E_i, f_I^dec(e_i))
    L_text-recon = MSE(Q_i, f_T^dec(q_i))
    L_rec        = -log s(x^u . f_I^dec(e_pos)) - log(1 - s(x^u . f_I^dec(e_neg)))
    L_stage1     = L_matching + alpha L_item-recon + beta L_text-recon + L_rec

``x^u`` is the frozen CF model's representation of the user's history *before* the positive
item; the negative is drawn uniformly from items the user never interacted with.

Choices where the paper is silent follow the authors' public code:

* each encoder is one ``Linear`` followed by a sigmoid (the paper's "1-layer MLP"), each decoder
  one ``Linear``; ``hidden`` adds layers (the decoder mirrors them);
* the matching and reconstruction losses are computed on both the positive and the negative
  item of each example and summed (the negative's text is encoded too);
* the text-reconstruction target ``Q_i`` is detached, so the encoder is fine-tuned through
  ``q_i`` (matching) and the decoder input, not by moving its own target;
* Adam with betas (0.9, 0.98), learning rate 1e-4, batch 32, 10 epochs, SBERT in train mode
  (dropout) while fine-tuned.

``rec_score="dot"`` (default) scores with the dot product as eq. 5 writes; the authors' code uses
the mean over dimensions (``"mean"``, a dot product divided by ``d``).

Checkpoints (one folder per epoch, ``latest.json`` names the newest complete one) hold only what
stage 1 trains: the autoencoders, the optimizer state, the fine-tuned text encoder, the configs and
the loss history. A resumed run at an epoch boundary reproduces the uninterrupted run bit for bit:
every epoch draws its order, negatives and dropout masks from ``rng(seed, "stage1", epoch)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from allmrec.cf.base import CFBackbone
from allmrec.config import from_dict
from allmrec.data.dataset import SequenceDataset
from allmrec.text.embeddings import item_text_embeddings
from allmrec.text.encoder import TextEncoder, load_text_encoder
from allmrec.utils.fingerprint import state_fingerprint, strings_fingerprint
from allmrec.utils.runtime import torch_threads
from allmrec.utils.io import load_tensors, read_json, save_tensors, write_json, optimizer_from_tensors, optimizer_to_tensors
from allmrec.utils.seed import rng

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "none": nn.Identity}
# Options that may change between a checkpoint and its resumption without changing the result
# (``epochs`` may grow to train longer).
_RESUMABLE_CHANGES = {"epochs", "threads", "device", "keep_checkpoints", "text_batch_size"}


@dataclass
class Stage1Config:
    """Options of stage 1 (defaults = the paper's Beauty/Toys settings)."""

    d_latent: int = 128  # d', width of e_i and q_i
    hidden: list[int] = field(default_factory=list)  # extra encoder layers; [] = authors' 1-layer encoder
    activation: str = "gelu"  # between hidden layers
    latent_activation: str = "sigmoid"  # on e_i / q_i, as in the authors' code
    alpha: float = 0.5  # item-reconstruction weight
    beta: float = 0.2  # text-reconstruction weight (0.5 for Movies/Games in the paper)
    matching_weight: float = 1.0  # 0 = the "w/o L_matching" ablation
    rec_weight: float = 1.0  # 0 = the "w/o L_rec" ablation
    rec_score: str = "dot"  # "dot" (eq. 5) or "mean" (authors' code)
    detach_text_target: bool = True
    lr: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 10
    positions: str = "last"  # "last": last training item per user; "all": every position
    freeze_text_encoder: bool = False  # True = the "SBERT frozen" ablation
    max_text_len: int = 64  # word pieces per item text
    text_batch_size: int = 64  # texts per forward when precomputing (frozen encoder)
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    keep_checkpoints: int = 1  # epoch folders kept on disk (the newest ones)

    def validate(self) -> None:
        if self.positions not in ("last", "all"):
            raise ValueError(f"stage1.positions must be 'last' or 'all', got {self.positions!r}")
        if self.rec_score not in ("dot", "mean"):
            raise ValueError(f"stage1.rec_score must be 'dot' or 'mean', got {self.rec_score!r}")
        for name in ("activation", "latent_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise ValueError(f"stage1.{name} must be one of {sorted(_ACTIVATIONS)}, got {getattr(self, name)!r}")
        for name in ("d_latent", "batch_size", "max_text_len", "text_batch_size", "threads", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"stage1.{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"stage1.epochs must be >= 0, got {self.epochs}")
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"stage1.hidden sizes must be >= 1, got {self.hidden}")


def _mlp(dims: list[int], activation: str, last_activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(len(dims) - 1):
        layers.append(nn.Linear(dims[k], dims[k + 1]))
        act = activation if k < len(dims) - 2 else last_activation
        if act != "none":
            layers.append(_ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class Stage1Model(nn.Module):
    """The two autoencoders of stage 1 and their losses.

    Parameters
    ----------
    d_cf
        Width ``d`` of the CF item embeddings ``E``.
    d_text
        Width of the text embeddings ``Q`` (384 for all-MiniLM-L6-v2, 768 in the paper).
    config
        Layer sizes, activations and loss weights.
    """

    def __init__(self, d_cf: int, d_text: int, config: Stage1Config | None = None) -> None:
        super().__init__()
        self.config = config = config or Stage1Config()
        self.d_cf, self.d_text, self.d_latent = int(d_cf), int(d_text), int(config.d_latent)
        hidden = [int(h) for h in config.hidden]
        act, lat = config.activation, config.latent_activation
        self.item_encoder = _mlp([self.d_cf, *hidden, self.d_latent], act, lat)
        self.item_decoder = _mlp([self.d_latent, *reversed(hidden), self.d_cf], act, "none")
        self.text_encoder = _mlp([self.d_text, *hidden, self.d_latent], act, lat)
        self.text_decoder = _mlp([self.d_latent, *reversed(hidden), self.d_text], act, "none")
        self.identity: dict[str, Any] = {}  # set by train_stage1 / load_stage1: what it was trained on

    def encode_items(self, item_emb: torch.Tensor) -> torch.Tensor:
        """``e = f_I^enc(E)``."""
        return self.item_encoder(item_emb)

    def encode_texts(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``q = f_T^enc(Q)``."""
        return self.text_encoder(text_emb)

    def losses(
        self,
        user_rep: torch.Tensor,
        item_pos: torch.Tensor,
        item_neg: torch.Tensor,
        text_pos: torch.Tensor,
        text_neg: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Stage-1 losses of a batch.

        Parameters
        ----------
        user_rep
            ``(B, d)`` CF user representations ``x^u`` of the histories before the positives.
        item_pos, item_neg
            ``(B, d)`` CF embeddings of the positive and the sampled negative items.
        text_pos, text_neg
            ``(B, d_text)`` text embeddings of the same items.

        Returns
        -------
        dict
            ``matching``, ``item_recon``, ``text_recon``, ``rec`` and their weighted sum ``loss``.
        """
        cfg = self.config
        B = item_pos.shape[0]
        e = self.encode_items(torch.cat([item_pos, item_neg]))
        q = self.encode_texts(torch.cat([text_pos, text_neg]))
        item_rec = self.item_decoder(e)
        text_rec = self.text_decoder(q)
        items = torch.cat([item_pos, item_neg])
        texts = torch.cat([text_pos, text_neg])
        if cfg.detach_text_target:
            texts = texts.detach()

        def pair_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            # MSE on the positives plus MSE on the negatives, as the authors' code sums them.
            return F.mse_loss(a[:B], b[:B]) + F.mse_loss(a[B:], b[B:])

        matching = pair_mse(e, q)
        item_recon = pair_mse(item_rec, items)
        text_recon = pair_mse(text_rec, texts)
        reduce = torch.sum if cfg.rec_score == "dot" else torch.mean
        pos_logit = reduce(user_rep * item_rec[:B], dim=-1)
        neg_logit = reduce(user_rep * item_rec[B:], dim=-1)
        rec = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + F.binary_cross_entropy_with_logits(
            neg_logit, torch.zeros_like(neg_logit)
        )
        loss = cfg.matching_weight * matching + cfg.alpha * item_recon + cfg.beta * text_recon + cfg.rec_weight * rec
        return {"loss": loss, "matching": matching, "item_recon": item_recon, "text_recon": text_recon, "rec": rec}


@dataclass
class Stage1Result:
    """What :func:`train_stage1` returns."""

    model: Stage1Model
    text_encoder: TextEncoder
    config: Stage1Config
    history: list[dict[str, float]]
    checkpoint: Path | None


# ---- training data --------------------------------------------------------------------------
@dataclass
class _Examples:
    users: np.ndarray  # (N,)
    positives: np.ndarray  # (N,)
    histories: np.ndarray  # (N, L) left-padded
    skipped_users: int


def _build_examples(dataset: SequenceDataset, positions: str, max_len: int) -> _Examples:
    """(user, positive, history before it) for the training users' training sequences."""
    users, pos, hists = [], [], []
    skipped = 0
    for u in np.flatnonzero(dataset.train_users):
        seq = np.asarray(dataset.train_sequence(int(u)), dtype=np.int64)
        if len(seq) < 2:  # no history before the only training item: x^u undefined
            skipped += 1
            continue
        ts = [len(seq) - 1] if positions == "last" else range(1, len(seq))
        for t in ts:
            h = seq[max(0, t - max_len) : t]
            row = np.zeros(max_len, dtype=np.int64)
            row[max_len - len(h) :] = h
            users.append(int(u))
            pos.append(int(seq[t]))
            hists.append(row)
    if not users:
        raise ValueError(f"dataset {dataset.name!r}: no training user has 2 or more training items; stage 1 has nothing to learn from")
    return _Examples(np.asarray(users, dtype=np.int64), np.asarray(pos, dtype=np.int64), np.stack(hists), skipped)


class _NegativeSampler:
    """Uniform negatives among items the user never interacted with (whole sequence)."""

    def __init__(self, dataset: SequenceDataset) -> None:
        self.n_items = dataset.n_items
        stride = self.n_items + 1
        keys = [u * stride + np.unique(np.asarray(s, dtype=np.int64)) for u, s in enumerate(dataset.sequences)]
        self.keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
        self.stride = stride

    def _seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        k = users * self.stride + items
        idx = np.searchsorted(self.keys, k)
        idx = np.minimum(idx, len(self.keys) - 1)
        return self.keys[idx] == k

    def sample(self, gen: np.random.Generator, users: np.ndarray) -> np.ndarray:
        neg = gen.integers(1, self.n_items + 1, size=len(users))
        bad = self._seen(users, neg)
        for _ in range(1000):
            if not bad.any():
                return neg
            neg[bad] = gen.integers(1, self.n_items + 1, size=int(bad.sum()))
            bad = self._seen(users, neg)
        raise ValueError("could not sample negatives: some user has interacted with (almost) every item")


# ---- training -------------------------------------------------------------------------------
def _cf_identity(cf_model: CFBackbone) -> dict[str, Any]:
    cfg = getattr(cf_model, "config", None)
    return {
        "name": getattr(cf_model, "name", "") or type(cf_model).__name__,
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {},
        "fingerprint": state_fingerprint(cf_model.state_dict()),
    }


def _dataset_fingerprint(dataset: SequenceDataset) -> str:
    if dataset.fingerprint:
        return dataset.fingerprint
    seqs = (" ".join(map(str, s)) for s in dataset.sequences)
    return strings_fingerprint([dataset.name, *dataset.texts, *seqs, dataset.train_users.tobytes().hex()])


@contextmanager
def _frozen_cf(cf_model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the CF model; restores both afterwards."""
    was_training = cf_model.training
    flags = [p.requires_grad for p in cf_model.parameters()]
    cf_model.eval()
    cf_model.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(cf_model.parameters(), flags):
            p.requires_grad_(f)
        cf_model.train(was_training)


@torch.no_grad()
def _user_representations(cf_model: CFBackbone, ex: _Examples, device: torch.device, batch: int = 512) -> torch.Tensor:
    out = []
    for s in range(0, len(ex.users), batch):
        users = torch.from_numpy(ex.users[s : s + batch]).to(device)
        hist = torch.from_numpy(ex.histories[s : s + batch]).to(device)
        out.append(cf_model.user_representation(users, hist).float())
    return torch.cat(out)


def train_stage1(
    dataset: SequenceDataset,
    cf_model: CFBackbone,
    text_encoder: TextEncoder | str,
    config: Stage1Config | None,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
) -> Stage1Result:
    """Train stage 1 and checkpoint every epoch into ``out_dir``.

    Parameters
    ----------
    dataset
        The prepared dataset; only ``dataset.train_users`` and their training sequences are used.
    cf_model
        The pre-trained CF backbone. It stays frozen (eval mode, no gradients; weights untouched).
    text_encoder
        The Sentence-BERT encoder (or a spec for :func:`load_text_encoder`). It is fine-tuned *in
        place* unless ``config.freeze_text_encoder``; its ``max_seq_length`` is set to
        ``config.max_text_len``.
    config
        Stage-1 options (``None`` = defaults).
    out_dir
        Checkpoint folder. With ``resume`` an existing checkpoint there is continued (it must come
        from the same CF model, text encoder, dataset and options, ``epochs`` aside); without it
        training starts over.
    progress
        Show a progress bar per epoch.

    Returns
    -------
    Stage1Result
        The trained model (eval mode), the text encoder (frozen, eval mode), the config, the
        per-epoch loss history and the newest checkpoint folder.
    """
    config = config or Stage1Config()
    config.validate()
    out_dir = Path(out_dir)
    device = torch.device(config.device)
    if isinstance(text_encoder, (str, os.PathLike)):
        text_encoder = load_text_encoder(text_encoder, max_seq_length=config.max_text_len, device=device)
    text_encoder.to(device)
    text_encoder.max_seq_length = config.max_text_len
    trainable_encoder = not config.freeze_text_encoder

    # fork_rng: the per-epoch seeding below must not leak into the caller's global RNG.
    rng_devices = [device] if device.type == "cuda" else []
    with torch_threads(config.threads), _frozen_cf(cf_model), torch.random.fork_rng(devices=rng_devices):
        cf_model.to(device)
        identity = {
            "cf": _cf_identity(cf_model),
            "dataset": {"name": dataset.name, "fingerprint": _dataset_fingerprint(dataset), "n_items": dataset.n_items},
            "text_encoder": {"source": text_encoder.source, "base": text_encoder.base, "initial_fingerprint": text_encoder.fingerprint(), "dim": text_encoder.dim},
            "d_cf": int(cf_model.dim),
        }
        model = _init_model(int(cf_model.dim), text_encoder.dim, config)
        model.to(device)
        params = list(model.parameters()) + (list(text_encoder.parameters()) if trainable_encoder else [])
        optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay)

        start_epoch, history = 0, []
        latest = out_dir / "latest.json"
        if resume and latest.exists():
            ckpt = out_dir / read_json(latest)["checkpoint"]
            identity = _check_resumable(ckpt, identity, config, text_encoder)
            start_epoch, history = _load_training_state(ckpt, model, optimizer, text_encoder, trainable_encoder, device)
            if start_epoch > config.epochs:
                raise ValueError(
                    f"{ckpt}: checkpoint holds {start_epoch} epochs but epochs={config.epochs} was asked for; "
                    f"ask for epochs >= {start_epoch}, load an earlier epoch folder, or resume=False to start over"
                )
        elif latest.exists():
            latest.unlink()  # starting over: the old checkpoints no longer describe this run
        model.identity = identity

        if trainable_encoder:
            text_encoder.unfreeze()
        else:
            text_encoder.freeze()
        if start_epoch < config.epochs:
            ex = _build_examples(dataset, config.positions, int(getattr(cf_model.config, "max_len", 50)))
            sampler = _NegativeSampler(dataset)
            item_table = cf_model.item_embeddings().detach().float().to(device)
            user_reps = _user_representations(cf_model, ex, device)
            # A frozen encoder gives the same Q_i every time: encode each item once (cached).
            if not trainable_encoder:
                text_table = item_text_embeddings(text_encoder, dataset, batch_size=config.text_batch_size).to(device)
        texts = dataset.texts

        ckpt_dir = None
        for epoch in range(start_epoch + 1, config.epochs + 1):
            gen = rng(config.seed, "stage1", epoch)
            torch.manual_seed(int(gen.integers(0, 2**63 - 1)))  # dropout masks of this epoch
            order = gen.permutation(len(ex.users))
            negatives = sampler.sample(gen, ex.users[order])
            model.train()
            if trainable_encoder:
                text_encoder.train()
            sums = {k: 0.0 for k in ("loss", "matching", "item_recon", "text_recon", "rec")}
            n_batches = math.ceil(len(order) / config.batch_size)
            t0, c0 = time.perf_counter(), time.process_time()
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_batches, desc=f"stage 1 epoch {epoch}/{config.epochs}", unit="batch")
            for b in range(n_batches):
                sl = slice(b * config.batch_size, (b + 1) * config.batch_size)
                idx = torch.from_numpy(order[sl]).to(device)
                pos = torch.from_numpy(ex.positives[order[sl]]).to(device)
                neg = torch.from_numpy(negatives[sl]).to(device)
                if trainable_encoder:
                    q = text_encoder([texts[i] for i in pos.tolist()] + [texts[i] for i in neg.tolist()])
                    q_pos, q_neg = q[: len(pos)], q[len(pos) :]
                else:
                    q_pos, q_neg = text_table[pos], text_table[neg]
                out = model.losses(user_reps[idx], item_table[pos], item_table[neg], q_pos, q_neg)
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()
                for k in sums:
                    sums[k] += float(out[k].detach())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums['loss'] / (b + 1):.4f}")
            if bar is not None:
                bar.close()
            record = {"epoch": epoch, **{k: v / n_batches for k, v in sums.items()}}
            # cpu_seconds / threads approximates the wall time on an otherwise idle machine.
            record.update(seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3), examples=len(order), batches=n_batches)
            history.append(record)
            ckpt_dir = _save_checkpoint(out_dir, epoch, model, optimizer, text_encoder if trainable_encoder else None, config, identity, history, ex)

        if ckpt_dir is None and latest.exists():
            ckpt_dir = out_dir / read_json(latest)["checkpoint"]
    model.eval()
    text_encoder.freeze()
    return Stage1Result(model=model, text_encoder=text_encoder, config=config, history=history, checkpoint=ckpt_dir)


def _init_model(d_cf: int, d_text: int, config: Stage1Config) -> Stage1Model:
    # Seeded initialisation without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng(config.seed, "stage1", "init").integers(0, 2**63 - 1)))
        return Stage1Model(d_cf, d_text, config)


# ---- checkpoints ----------------------------------------------------------------------------
def _save_checkpoint(
    out_dir: Path,
    epoch: int,
    model: Stage1Model,
    optimizer: torch.optim.Optimizer,
    text_encoder: TextEncoder | None,
    config: Stage1Config,
    identity: dict[str, Any],
    history: list[dict[str, float]],
    ex: _Examples,
) -> Path:
    """Write ``epoch-NNNN/`` under a temporary name, rename it, then point ``latest.json`` at it."""
    name = f"epoch-{epoch:04d}"
    final = out_dir / name
    tmp = out_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_tensors(tmp / "stage1.safetensors", model.state_dict())
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    write_json(tmp / "optimizer.json", opt_meta)
    if text_encoder is not None:
        text_encoder.save(tmp / "text_encoder")
    write_json(tmp / "config.json", {"stage1": dataclasses.asdict(config), "identity": identity})
    write_json(
        tmp / "trainer_state.json",
        {
            "epoch": epoch,
            "history": history,
            "examples": len(ex.users),
            "skipped_users": ex.skipped_users,
            "text_encoder_fingerprint": text_encoder.fingerprint() if text_encoder is not None else None,
        },
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json(out_dir / "latest.json", {"checkpoint": name, "epoch": epoch})  # the commit point
    write_json(out_dir / "history.json", history)
    epochs = sorted(p for p in out_dir.glob("epoch-*") if p.is_dir())
    for old in epochs[: -config.keep_checkpoints]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _resolve_checkpoint(directory: Path) -> Path:
    directory = Path(directory)
    if (directory / "latest.json").exists():
        return directory / read_json(directory / "latest.json")["checkpoint"]
    if (directory / "config.json").exists() and (directory / "stage1.safetensors").exists():
        return directory
    raise FileNotFoundError(f"{directory}: no stage-1 checkpoint (neither latest.json nor stage1.safetensors)")


def _check_resumable(ckpt: Path, identity: dict[str, Any], config: Stage1Config, encoder: TextEncoder) -> dict[str, Any]:
    saved = read_json(ckpt / "config.json")
    sid, scfg = saved["identity"], saved["stage1"]
    where = f"{ckpt}/config.json"
    hint = "use another output folder, or resume=False to start over"
    if sid["dataset"]["fingerprint"] != identity["dataset"]["fingerprint"]:
        raise ValueError(
            f"{where}: checkpoint was trained on dataset {sid['dataset']['name']!r} (fingerprint {sid['dataset']['fingerprint']}), "
            f"not on {identity['dataset']['name']!r} ({identity['dataset']['fingerprint']}); {hint}"
        )
    if sid["cf"]["fingerprint"] != identity["cf"]["fingerprint"]:
        raise ValueError(
            f"{where}: checkpoint was trained with CF model {sid['cf']['name']!r} (weights {sid['cf']['fingerprint']}), "
            f"got {identity['cf']['name']!r} (weights {identity['cf']['fingerprint']}); {hint}"
        )
    enc_now = identity["text_encoder"]["initial_fingerprint"]
    enc_ok = {sid["text_encoder"]["initial_fingerprint"]}
    if (ckpt / "text_encoder").exists():
        enc_ok.add(read_json(ckpt / "trainer_state.json").get("text_encoder_fingerprint", ""))
    if enc_now not in enc_ok:
        raise ValueError(
            f"{where}: checkpoint started from text encoder {sid['text_encoder']['source']!r} (weights "
            f"{sid['text_encoder']['initial_fingerprint']}), got {encoder.source!r} (weights {enc_now}); {hint}"
        )
    now = dataclasses.asdict(config)
    diffs = [k for k in now if k not in _RESUMABLE_CHANGES and k in scfg and scfg[k] != now[k]]
    if diffs:
        detail = ", ".join(f"{k}: {scfg[k]!r} -> {now[k]!r}" for k in diffs)
        raise ValueError(f"{where}: stage-1 options differ from the checkpoint's ({detail}); {hint}")
    return sid


def _load_training_state(
    ckpt: Path,
    model: Stage1Model,
    optimizer: torch.optim.Optimizer,
    encoder: TextEncoder,
    trainable_encoder: bool,
    device: torch.device,
) -> tuple[int, list[dict[str, float]]]:
    model.load_state_dict(load_tensors(ckpt / "stage1.safetensors", device=device))
    if trainable_encoder:
        saved = TextEncoder.load(ckpt / "text_encoder", device=device)
        encoder.model.load_state_dict(saved.model.state_dict())
        del saved
    optimizer.load_state_dict(optimizer_from_tensors(load_tensors(ckpt / "optimizer.safetensors"), read_json(ckpt / "optimizer.json")))
    state = read_json(ckpt / "trainer_state.json")
    return int(state["epoch"]), list(state["history"])


def load_stage1(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Stage1Model, TextEncoder, Stage1Config]:
    """Load a trained stage 1: ``(model, text_encoder, config)``, both modules frozen in eval mode.

    ``directory`` is a :func:`train_stage1` output folder (its newest checkpoint is used) or one
    ``epoch-NNNN`` folder. The text encoder is the fine-tuned one saved with the checkpoint or,
    when it was frozen, the base encoder re-loaded from its source and checked against the
    recorded weights. ``model.identity`` records the CF model, dataset and encoder it was
    trained with, for later stages to check against.
    """
    ckpt = _resolve_checkpoint(Path(directory))
    saved = read_json(ckpt / "config.json")
    config = from_dict(Stage1Config, saved["stage1"], where=str(ckpt / "config.json"))
    ident = saved["identity"]
    model = Stage1Model(ident["d_cf"], ident["text_encoder"]["dim"], config)
    model.load_state_dict(load_tensors(ckpt / "stage1.safetensors"))
    model.identity = ident
    if (ckpt / "text_encoder").exists():
        encoder = TextEncoder.load(ckpt / "text_encoder", device=device)
    else:
        encoder = load_text_encoder(ident["text_encoder"]["source"], max_seq_length=config.max_text_len, device=device)
        if encoder.fingerprint() != ident["text_encoder"]["initial_fingerprint"]:
            raise ValueError(
                f"{ckpt}/config.json: the frozen text encoder {ident['text_encoder']['source']!r} now has weights "
                f"{encoder.fingerprint()}, the checkpoint was trained with {ident['text_encoder']['initial_fingerprint']}"
            )
    encoder.max_seq_length = config.max_text_len
    return model.to(device).eval().requires_grad_(False), encoder.freeze(), config


# ---- outputs for stage 2 --------------------------------------------------------------------
@torch.no_grad()
def joint_item_table(
    stage1_model: Stage1Model,
    cf_item_emb: torch.Tensor,
    text_emb: torch.Tensor | None = None,
    use_text: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Joint collaborative-text embeddings of all items, ``(n_items + 1, d')``.

    Row ``i`` is ``e_i = f_I^enc(E_i)``, or ``q_i = f_T^enc(Q_i)`` where ``use_text[i]`` is true
    (items the CF model does not know: cold, unseen or other-domain items; all rows give the
    "A-LLMRec (SBERT)" variant). Row 0 (padding) is zeros.

    Parameters
    ----------
    stage1_model
        Trained stage-1 autoencoders.
    cf_item_emb
        ``(n_items + 1, d)`` CF item table ``E``.
    text_emb
        ``(n_items + 1, d_text)`` text embeddings ``Q`` (from :func:`item_text_embeddings` with the
        fine-tuned encoder); needed only when ``use_text`` selects some item.
    use_text
        ``(n_items + 1,)`` bool mask, or ``None`` for ``e_i`` everywhere.
    """
    device = next(stage1_model.parameters()).device
    out = stage1_model.encode_items(cf_item_emb.detach().float().to(device))
    if use_text is not None:
        mask = torch.as_tensor(np.asarray(use_text, dtype=bool) if not isinstance(use_text, torch.Tensor) else use_text, dtype=torch.bool)
        if mask.shape != (out.shape[0],):
            raise ValueError(f"use_text must have shape ({out.shape[0]},), got {tuple(mask.shape)}")
        if mask.any():
            if text_emb is None:
                raise ValueError("use_text selects items but no text embeddings were given")
            if text_emb.shape[0] != out.shape[0]:
                raise ValueError(f"text_emb has {text_emb.shape[0]} rows, the CF item table {out.shape[0]}")
            mask = mask.to(device)
            q = stage1_model.encode_texts(text_emb.detach().float().to(device)[mask])
            out[mask] = q
    out[0] = 0.0
    return out


def untrained_item_mask(dataset: SequenceDataset) -> np.ndarray:
    """``(n_items + 1,)`` bool: items with no interaction in any training sequence (the CF model
    never learnt their embedding), for ``joint_item_table(..., use_text=...)``. Row 0 is False."""
    mask = dataset.train_item_counts() == 0
    mask[0] = False
    return mask
