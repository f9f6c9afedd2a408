"""Train stage 1 (on :func:`allmrec.training.run_training`) and load a trained stage 1.

One example per training user (``positions="last"``, the paper) or per position (``"all"``):
the user, a positive item of their training sequence and the history before it; the negative is
drawn per epoch. Every epoch draws its order, negatives and dropout masks from
``rng(seed, "stage1", epoch)`` (epochs numbered from 1), so a run resumed at an epoch boundary
reproduces the uninterrupted run bit for bit.

Run folder: the loop's checkpoints (:mod:`allmrec.training`; they hold only what stage 1 trains:
the autoencoders and, when fine-tuned, the text encoder) and the final model::

    model.safetensors   the autoencoders
    model.json          stage-1 config, identities (CF model, dataset, text encoder), history
    text_encoder/       the fine-tuned text encoder (absent when it was frozen)
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from allmrec import distributed
from allmrec.align.stage1.model import Stage1Config, Stage1Model
from allmrec.cf.base import CFBackbone
from allmrec.cf.evaluate import user_representations
from allmrec.config import check_resumable, from_dict
from allmrec.data.dataset import SequenceDataset
from allmrec.text.embeddings import item_text_embeddings
from allmrec.text.encoder import TextEncoder, load_text_encoder
from allmrec.training import LoopOptions, TrainingTask, run_training
from allmrec.utils.fingerprint import cf_identity, dataset_fingerprint
from allmrec.utils.io import load_tensors, read_json, save_tensors, write_json
from allmrec.utils.runtime import torch_threads
from allmrec.utils.seed import rng, torch_seed

FORMAT = "allmrec-stage1/2"
LOSSES = ("loss", "matching", "item_recon", "text_recon", "rec")


@dataclass
class Stage1Result:
    """What :func:`train_stage1` returns."""

    model: Stage1Model
    text_encoder: TextEncoder
    config: Stage1Config
    history: list[dict[str, float]]
    checkpoint: Path | None  # the run folder


# ---- training data --------------------------------------------------------------------------
@dataclass
class _Examples:
    users: np.ndarray  # (N,)
    positives: np.ndarray  # (N,)
    histories: list[np.ndarray]  # the items before each positive (the last max_len)
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
        for t in [len(seq) - 1] if positions == "last" else range(1, len(seq)):
            users.append(int(u))
            pos.append(int(seq[t]))
            hists.append(seq[max(0, t - max_len) : t])
    if not users:
        raise ValueError(f"dataset {dataset.name!r}: no training user has 2 or more training items; stage 1 has nothing to learn from")
    return _Examples(np.asarray(users, dtype=np.int64), np.asarray(pos, dtype=np.int64), hists, skipped)


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
        idx = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
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


# ---- the task ---------------------------------------------------------------------------------
class Stage1Task(TrainingTask):
    """The autoencoders (and, unless frozen, the text encoder) trained on the stage-1 losses."""

    name = "stage 1"
    format = FORMAT

    def __init__(self, dataset: SequenceDataset, cf_model: CFBackbone, text_encoder: TextEncoder, config: Stage1Config, out_dir: Path | None) -> None:
        self.dataset, self.cf, self.encoder, self.config, self.out_dir = dataset, cf_model, text_encoder, config, out_dir
        self.device = torch.device(config.device)
        self.trainable_encoder = not config.freeze_text_encoder
        self.examples = _build_examples(dataset, config.positions, int(getattr(cf_model.config, "max_len", 50)))
        self.sampler = _NegativeSampler(dataset)
        self._identity = {
            "cf": cf_identity(cf_model),
            "dataset": {"name": dataset.name, "fingerprint": dataset_fingerprint(dataset), "n_items": dataset.n_items},
            "text_encoder": {"source": text_encoder.source, "base": text_encoder.base, "initial_fingerprint": text_encoder.fingerprint(), "dim": text_encoder.dim},
            "d_cf": int(cf_model.dim),
        }
        self.model = _init_model(int(cf_model.dim), text_encoder.dim, config).to(self.device)
        self.model.identity = self._identity
        # Only the top layers fine-tuned: their inputs (the frozen layers' output per item text)
        # are computed once, when training starts (inputs). An encoder that cannot is refused here.
        self.top_layers = None
        params = list(self.model.parameters()) + self._encoder_parameters()
        self.optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay)
        self._inputs: dict[str, torch.Tensor] | None = None

    def _encoder_parameters(self) -> list[nn.Parameter]:
        if not self.trainable_encoder:
            return []
        if not self.config.finetune_layers:
            return list(self.encoder.parameters())
        from allmrec.text.top_layers import top_layer_parameters

        return top_layer_parameters(self.encoder, self.config.finetune_layers)

    def session(self):
        stack = ExitStack()
        stack.enter_context(torch_threads(self.config.threads))
        stack.enter_context(_frozen_cf(self.cf))
        # The per-epoch seeding must not leak into the caller's global RNG.
        stack.enter_context(torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []))
        self.cf.to(self.device)
        self.encoder.freeze()
        for p in self._encoder_parameters():  # all of the encoder, its top layers, or none of it
            p.requires_grad_(True)
        return stack

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples.users) / self.config.batch_size)

    def identity(self) -> dict[str, Any]:
        return {"stage1": dataclasses.asdict(self.config), **self._identity}

    def check_resume(self, saved: dict[str, Any], where: Path) -> None:
        mine, hint = self._identity, "use another output folder, or resume=False to start over"
        if saved["dataset"]["fingerprint"] != mine["dataset"]["fingerprint"]:
            raise ValueError(f"{where}: checkpoint was trained on dataset {saved['dataset']['name']!r} ({saved['dataset']['fingerprint']}), "
                             f"not on {mine['dataset']['name']!r} ({mine['dataset']['fingerprint']}); {hint}")
        if saved["cf"] != mine["cf"]:
            raise ValueError(f"{where}: checkpoint was trained with CF model {saved['cf']}, got {mine['cf']}; {hint}")
        if saved["text_encoder"]["initial_fingerprint"] != mine["text_encoder"]["initial_fingerprint"]:
            raise ValueError(f"{where}: checkpoint started from text encoder {saved['text_encoder']['source']!r} (weights "
                             f"{saved['text_encoder']['initial_fingerprint']}), got {self.encoder.source!r} "
                             f"(weights {mine['text_encoder']['initial_fingerprint']}); {hint}")
        check_resumable(saved["stage1"], self.config, where, "stage-1")

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = {f"autoencoders.{k}": v for k, v in self.model.state_dict().items()}
        if self.trainable_encoder:
            state.update({f"text_encoder.{k}": v for k, v in self.encoder.model.state_dict().items()})
        return state

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        parts: dict[str, dict[str, torch.Tensor]] = {"autoencoders": {}, "text_encoder": {}}
        for name, value in tensors.items():
            part, _, key = name.partition(".")
            parts[part][key] = value.to(self.device)
        self.model.load_state_dict(parts["autoencoders"])
        if self.trainable_encoder:
            self.encoder.model.load_state_dict(parts["text_encoder"])

    def inputs(self) -> dict[str, torch.Tensor]:
        """The frozen inputs: CF item table, ``x^u`` per example, text table of a frozen encoder."""
        if self._inputs is None:
            ex = self.examples
            self._inputs = {"items": self.cf.item_embeddings().detach().float().to(self.device),
                            "users": user_representations(self.cf, ex.users, ex.histories, batch_size=512, trim=False).to(self.device)}
            if not self.trainable_encoder:  # a frozen encoder gives the same Q_i every time: encode each item once (cached)
                self._inputs["texts"] = item_text_embeddings(self.encoder, self.dataset, batch_size=self.config.text_batch_size).to(self.device)
            elif self.config.finetune_layers:
                from allmrec.text.top_layers import TopLayerTuner

                self.top_layers = TopLayerTuner(self.encoder, self.dataset.texts, self.config.finetune_layers,
                                                batch_size=self.config.text_batch_size, progress=True)
        return self._inputs

    def start_epoch(self, epoch: int) -> None:
        gen = rng(self.config.seed, "stage1", epoch + 1)
        torch.manual_seed(int(gen.integers(0, 2**63 - 1)))  # dropout masks of this epoch
        self.order = gen.permutation(len(self.examples.users))
        self.negatives = self.sampler.sample(gen, self.examples.users[self.order])
        self.model.train()
        if self.trainable_encoder:
            self.encoder.train()
        self.sums = {k: 0.0 for k in LOSSES}
        self.cpu_started = time.process_time()

    def step(self, epoch: int, index: int) -> float:
        inputs, bs = self.inputs(), self.config.batch_size
        sl = np.arange(len(self.order))[index * bs : (index + 1) * bs]
        sl = sl[distributed.local_rows(len(sl))]  # this process's rows of the global batch (all of them on one)

        def compute():
            if not len(sl):
                return None, 0.0, ()
            idx = torch.from_numpy(self.order[sl]).to(self.device)
            pos = torch.from_numpy(self.examples.positives[self.order[sl]]).to(self.device)
            neg = torch.from_numpy(self.negatives[sl]).to(self.device)
            if self.trainable_encoder:
                q = self._encode(torch.cat([pos, neg]))
                q_pos, q_neg = q[: len(pos)], q[len(pos) :]
            else:
                q_pos, q_neg = inputs["texts"][pos], inputs["texts"][neg]
            out = self.model.losses(inputs["users"][idx], inputs["items"][pos], inputs["items"][neg], q_pos, q_neg)
            return out["loss"], float(len(sl)), [out[k].detach() for k in LOSSES[1:]]

        loss, parts = distributed.step(self.optimizer, compute, n_extra=len(LOSSES) - 1)
        for k, v in zip(LOSSES, [loss, *parts]):
            self.sums[k] += v
        return loss

    def _encode(self, items: torch.Tensor) -> torch.Tensor:
        """The fine-tuned encoder's ``Q`` of ``items``: each distinct item text encoded once (a
        popular item is often a batch's positive and another's negative), in bfloat16 autocast
        where that is fast."""
        distinct, where = torch.unique(items, return_inverse=True)
        texts, rows = self.dataset.texts, distinct.tolist()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast()):
            q = self.top_layers(rows) if self.top_layers is not None else self.encoder([texts[i] for i in rows])
        return q.float()[where]

    def _autocast(self) -> bool:
        from allmrec.utils.runtime import cpu_has_fast_bf16

        if self.config.autocast != "auto":
            return self.config.autocast == "on"
        return self.device.type == "cuda" or cpu_has_fast_bf16()

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        n = self.steps_per_epoch()
        # cpu_seconds / threads approximates the wall time on an otherwise idle machine.
        return {**{k: v / n for k, v in self.sums.items() if k != "loss"}, "cpu_seconds": round(time.process_time() - self.cpu_started, 3),
                "examples": len(self.examples.users), "batches": n}

    def finish(self, state: dict[str, Any]) -> None:
        self.model.eval()
        self.encoder.freeze()
        self.history = state["history"]
        if self.out_dir is None or not distributed.is_main():
            distributed.barrier()
            return
        save_tensors(self.out_dir / "model.safetensors", self.model.state_dict(), metadata={"format": FORMAT})
        if self.trainable_encoder:
            self.encoder.save(self.out_dir / "text_encoder")
        write_json(self.out_dir / "model.json", {"format": FORMAT, "stage1": dataclasses.asdict(self.config), "identity": self._identity,
                                                 "text_encoder_fingerprint": self.encoder.fingerprint(), "history": self.history,
                                                 "examples": len(self.examples.users), "skipped_users": self.examples.skipped_users})
        distributed.barrier()


def _init_model(d_cf: int, d_text: int, config: Stage1Config) -> Stage1Model:
    # Seeded initialisation without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(config.seed, "stage1", "init"))
        return Stage1Model(d_cf, d_text, config)


def train_stage1(
    dataset: SequenceDataset,
    cf_model: CFBackbone,
    text_encoder: TextEncoder | str,
    config: Stage1Config | None,
    out_dir: str | os.PathLike | None,
    resume: bool = True,
    progress: bool = True,
) -> Stage1Result:
    """Train stage 1, checkpointing every epoch into ``out_dir``.

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
        Run folder (``None``: nothing saved). With ``resume`` a checkpoint there is continued (it
        must come from the same CF model, text encoder, dataset and options, ``epochs`` aside);
        without it training starts over.
    progress
        Show a progress bar.
    """
    config = config or Stage1Config()
    config.validate()
    device = torch.device(config.device)
    if isinstance(text_encoder, (str, os.PathLike)):
        text_encoder = load_text_encoder(text_encoder, max_seq_length=config.max_text_len, device=device)
    text_encoder.to(device)
    text_encoder.max_seq_length = config.max_text_len
    out = Path(out_dir) if out_dir is not None else None
    with torch_threads(config.threads):
        task = Stage1Task(dataset, cf_model, text_encoder, config, out)
    run_training(task, LoopOptions(epochs=config.epochs, keep_checkpoints=config.keep_checkpoints, progress=progress), out, resume=resume)
    return Stage1Result(model=task.model, text_encoder=text_encoder, config=config, history=task.history, checkpoint=out)


def load_stage1(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Stage1Model, TextEncoder, Stage1Config]:
    """Load a trained stage 1: ``(model, text_encoder, config)``, both modules frozen in eval mode.

    The text encoder is the fine-tuned one saved with the model or, when it was frozen, the base
    encoder re-loaded from its source and checked against the recorded weights.
    ``model.identity`` records the CF model, dataset and encoder it was trained with, for later
    stages to check against.
    """
    directory = Path(directory)
    meta_path = directory / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory}: no trained stage 1 (model.json); run `allmrec align` first")
    saved = read_json(meta_path)
    config = from_dict(Stage1Config, saved["stage1"], where=str(meta_path))
    ident = saved["identity"]
    model = Stage1Model(ident["d_cf"], ident["text_encoder"]["dim"], config)
    model.load_state_dict(load_tensors(directory / "model.safetensors"))
    model.identity = ident
    if (directory / "text_encoder").exists():
        encoder = TextEncoder.load(directory / "text_encoder", device=device)
    else:
        encoder = load_text_encoder(ident["text_encoder"]["source"], max_seq_length=config.max_text_len, device=device)
    if encoder.fingerprint() != saved["text_encoder_fingerprint"]:
        raise ValueError(f"{meta_path}: the text encoder {encoder.source!r} now has weights {encoder.fingerprint()}, "
                         f"stage 1 was trained with {saved['text_encoder_fingerprint']}")
    encoder.max_seq_length = config.max_text_len
    return model.to(device).eval().requires_grad_(False), encoder.freeze(), config


def stage1_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """Epochs, training time and the last epoch's losses of a trained stage 1."""
    meta_path = Path(directory) / "model.json"
    if not meta_path.exists():
        return {}
    hist = read_json(meta_path).get("history", [])
    last = hist[-1] if hist else {}
    return {"epochs": len(hist), "seconds": round(sum(float(h.get("train_seconds", 0.0)) for h in hist), 2),
            "last_epoch": {k: last[k] for k in LOSSES if k in last}}
