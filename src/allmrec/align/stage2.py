"""Stage 2 of A-LLMRec: project the joint embeddings and the user representation into the frozen
LLM's token space (paper eq. 7-8). Only the two projectors train.

* ``O_u = F_U(x^u)``, ``O_i = F_I(e_i)``; ``F_U``/``F_I`` are 2-layer MLPs as in the authors'
  code: ``Linear(d, H) -> LayerNorm(H) -> LeakyReLU (F_U) / GELU (F_I) -> Linear(H, H)``, Xavier
  normal weights, no output normalisation (the LLM reads the raw projection).
* Inputs are tensors: ``joint_items`` ``(n_items + 1, d')`` (stage-1 ``e_i`` or ``q_i``; any table
  works, e.g. CF embeddings for the MLP-LLM baseline) and ``x^u`` from a frozen
  :class:`~allmrec.cf.base.CFBackbone`.
* One training example per training user (paper: last item only): history = training sequence
  minus its last item, target = the last item of the training sequence; candidates = the target
  + ``n_candidates - 1`` negatives drawn per epoch (seeded) from items the user never touched,
  shown in a seeded random order. Users whose training sequence has < 2 items are skipped.
* Loss: mean negative log-likelihood of the target answer tokens (`` "title"`` + EOS) only.

Run folder (``out_dir``)::

    checkpoints/step-00000200/   projectors.safetensors, optimizer.safetensors, trainer_state.json
    latest.json                  {"step": ..., "path": "checkpoints/step-..."} (atomic pointer)
    model.safetensors, model.json   the final projectors + configs and identities

Checkpoint folders are written under a temporary name and renamed; ``latest.json`` is replaced
atomically after that, so a crash at any point leaves the previous checkpoint usable. The epoch
order and negatives derive from ``(seed, epoch)`` and the LLM runs without dropout, so a run
resumed from any saved step continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from allmrec.cf.base import CFBackbone
from allmrec.data.dataset import SequenceDataset
from allmrec.llm.loading import DTYPES, hidden_size, llm_identity
from allmrec.llm.prompt import Prompt, PromptConfig, build_prompt, display_titles
from allmrec.llm.scoring import target_loss
from allmrec.llm.splice import splice
from allmrec.utils.fingerprint import state_fingerprint, strings_fingerprint
from allmrec.utils.io import load_tensors, read_json, save_tensors, write_json, optimizer_from_tensors, optimizer_to_tensors
from allmrec.utils.seed import rng

log = logging.getLogger(__name__)

FORMAT = "allmrec-stage2/1"
# Options that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = {"epochs", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "cf_batch_size"}


@dataclass
class Stage2Config:
    """Options of :func:`train_stage2` (defaults: the paper's settings).

    Parameters
    ----------
    lr : float
        Adam learning rate (betas 0.9, 0.98 as in the authors' code).
    batch_size, epochs : int
    max_steps : int or None
        Stop after this many optimizer steps in total (CPU runs on a subset).
    max_train_users : int or None
        Train on a seeded sample of this many training users.
    history_len, n_candidates, max_title_tokens, item_token, user_token :
        Prompt settings (see :class:`allmrec.llm.prompt.PromptConfig`); inference reuses them.
    seed : int
    dtype : str
        dtype of the trainable projectors (``float32``); the frozen LLM keeps its own dtype and
        soft tokens are cast to it where they are spliced in.
    checkpoint_every : int
        Save a resumable checkpoint every this many steps (and at the end).
    keep_checkpoints : int
        Checkpoint folders kept (the newest).
    log_every : int
        Steps per entry of the loss log in ``trainer_state.json``.
    cf_batch_size : int
        Batch size for computing ``x^u`` with the frozen CF model.
    """

    lr: float = 1e-4
    batch_size: int = 4
    epochs: int = 5
    max_steps: int | None = None
    max_train_users: int | None = None
    history_len: int = 10
    n_candidates: int = 20
    max_title_tokens: int = 16
    item_token: str = "after"
    user_token: bool = True
    seed: int = 42
    dtype: str = "float32"
    checkpoint_every: int = 500
    keep_checkpoints: int = 1
    log_every: int = 10
    cf_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"Stage2Config.dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("batch_size", "epochs", "n_candidates", "checkpoint_every", "keep_checkpoints", "log_every", "cf_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Stage2Config.{name} must be >= 1, got {getattr(self, name)}")
        self.prompt_config()  # validates the prompt fields

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(
            style="soft", history_len=self.history_len, max_title_tokens=self.max_title_tokens, item_token=self.item_token, user_token=self.user_token
        )


def _mlp(d_in: int, d_out: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), act, nn.Linear(d_out, d_out))


class Stage2Model(nn.Module):
    """The two trainable projectors ``F_U: d_cf -> H`` and ``F_I: d' -> H``.

    Parameters
    ----------
    user_dim : int
        Width of ``x^u`` (the CF model's dim).
    item_dim : int
        Width of the joint item embeddings (stage-1 ``d'``).
    hidden : int
        The LLM's token-embedding width.
    seed : int
        Seeds the initialisation (Xavier normal weights, PyTorch-default uniform biases).

    Notes
    -----
    A soft token that is exactly zero at position 0 gives NaN gradients in SmolLM2; the
    non-zero initial biases keep ``F_U`` away from that (do not zero them).
    """

    def __init__(self, user_dim: int, item_dim: int, hidden: int, seed: int = 0) -> None:
        super().__init__()
        self.user_dim, self.item_dim, self.hidden = int(user_dim), int(item_dim), int(hidden)
        self.user_proj = _mlp(user_dim, hidden, nn.LeakyReLU())
        self.item_proj = _mlp(item_dim, hidden, nn.GELU())
        gen = torch.Generator().manual_seed(int(seed))
        for mlp in (self.user_proj, self.item_proj):
            for layer in (mlp[0], mlp[3]):
                nn.init.xavier_normal_(layer.weight, generator=gen)
                bound = 1.0 / math.sqrt(layer.weight.shape[1])
                nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
        self.meta: dict[str, Any] = {}  # prompt config, identities, training state (set by train/load)

    @property
    def device(self) -> torch.device:
        return self.user_proj[0].weight.device

    def forward(self, user_reps: torch.Tensor, item_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(O_u, O_i) = (F_U(x^u), F_I(e_i))``."""
        return self.user_proj(user_reps), self.item_proj(item_vectors)

    def soft_vectors(self, prompts: Sequence[Prompt], user_reps: torch.Tensor | None, joint_items: torch.Tensor) -> torch.Tensor:
        """One vector per soft token of ``prompts`` in order of appearance, ``(n_soft, H)``.

        ``user_reps[b]`` is ``x^u`` of prompt ``b`` (needed when the prompts have a user token);
        item tokens read ``joint_items[item]``.
        """
        weight = self.user_proj[0].weight
        order: list[int] = []
        items: list[int] = []
        n_users = len(prompts)
        for b, prompt in enumerate(prompts):
            for tok in prompt.soft_tokens:
                if tok.kind == "user":
                    order.append(b)
                else:
                    order.append(n_users + len(items))
                    items.append(tok.item)
        if not order:
            return weight.new_zeros((0, self.hidden))
        pieces = []
        if any(i < n_users for i in order):
            if user_reps is None:
                raise ValueError("the prompts have a user soft token but no user representations were given")
            pieces.append(self.user_proj(user_reps.to(weight)))
        else:
            pieces.append(weight.new_zeros((n_users, self.hidden)))
        if items:
            idx = torch.as_tensor(items, dtype=torch.long, device=joint_items.device)
            pieces.append(self.item_proj(joint_items[idx].to(weight)))
        table = torch.cat(pieces, 0)
        return table[torch.as_tensor(order, device=table.device)]

    def prompt_config(self) -> PromptConfig:
        """The prompt settings this model was trained with."""
        return PromptConfig(**self.meta["prompt"]) if "prompt" in self.meta else PromptConfig()


# ---- identities -------------------------------------------------------------------------------
def cf_identity(cf_model: nn.Module) -> str:
    """``"<name>@<hash of config + weights>"`` of a CF model."""
    cfg = getattr(cf_model, "config", None)
    cfg_text = repr(dataclasses.asdict(cfg)) if dataclasses.is_dataclass(cfg) else ""
    name = getattr(cf_model, "name", "") or type(cf_model).__name__
    h = hashlib.sha256((cfg_text + state_fingerprint(cf_model.state_dict())).encode()).hexdigest()[:12]
    return f"{name}@{h}"


def tensor_fingerprint(t: torch.Tensor) -> str:
    return state_fingerprint({"t": t.detach().float()})


def dataset_fingerprint(dataset: SequenceDataset) -> str:
    if dataset.fingerprint:
        return dataset.fingerprint
    seqs = (" ".join(map(str, s)) for s in dataset.sequences)
    return strings_fingerprint([dataset.name, *dataset.titles, *seqs, np.asarray(dataset.train_users, bool).tobytes().hex()])


def _identities(dataset: SequenceDataset, cf_model: nn.Module, joint_items: torch.Tensor, llm: nn.Module) -> dict[str, str]:
    return {
        "llm": llm_identity(llm),
        "cf": cf_identity(cf_model),
        "joint_items": tensor_fingerprint(joint_items),
        "dataset": dataset_fingerprint(dataset),
    }


def check_identities(saved: dict[str, str], current: dict[str, str], where: str | Path) -> None:
    """Refuse a checkpoint made for another LLM / CF model / joint table / dataset."""
    labels = {"llm": "LLM", "cf": "CF model", "joint_items": "joint item embeddings", "dataset": "dataset"}
    for key, label in labels.items():
        if key in saved and key in current and saved[key] != current[key]:
            raise ValueError(
                f"{where}: this stage-2 checkpoint was made for {label} {saved[key]!r}, but {label} {current[key]!r} is given. "
                "Use the same inputs, another out_dir, or resume=False to start over."
            )


# ---- data ---------------------------------------------------------------------------------------
def left_pad(histories: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """``(B, width)`` int64, the last ``width`` items of each history right-aligned, 0 = padding."""
    out = torch.zeros((len(histories), width), dtype=torch.long)
    for b, h in enumerate(histories):
        h = list(h)[-width:]
        if h:
            out[b, width - len(h) :] = torch.as_tensor(h, dtype=torch.long)
    return out


@torch.no_grad()
def user_representations(cf_model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], batch_size: int = 256) -> torch.Tensor:
    """``x^u`` ``(len(users), d_cf)`` float32 on CPU from the frozen CF model (eval mode)."""
    was_training = cf_model.training
    cf_model.eval()
    params = list(cf_model.parameters())
    device = params[0].device if params else torch.device("cpu")
    width = int(getattr(getattr(cf_model, "config", None), "max_len", 0) or max((len(h) for h in histories), default=1) or 1)
    out = []
    try:
        for s in range(0, len(users), batch_size):
            u = torch.as_tensor(np.asarray(users[s : s + batch_size]), dtype=torch.long, device=device)
            h = left_pad(histories[s : s + batch_size], width).to(device)
            out.append(cf_model.user_representation(u, h).float().cpu())
    finally:
        cf_model.train(was_training)
    if not out:
        return torch.zeros((0, cf_model.dim))
    return torch.cat(out)


def sample_negatives(dataset: SequenceDataset, users: Sequence[int], n: int, gen: np.random.Generator) -> np.ndarray:
    """``(len(users), n)`` items each user never interacted with (distinct within a row)."""
    out = np.zeros((len(users), n), dtype=np.int64)
    for r, u in enumerate(users):
        seen = set(int(i) for i in dataset.sequences[u])
        if dataset.n_items - len(seen) < n:
            raise ValueError(f"user {u} has interacted with {len(seen)} of {dataset.n_items} items: cannot draw {n} negatives")
        picked: list[int] = []
        chosen: set[int] = set()
        while len(picked) < n:
            for i in gen.integers(1, dataset.n_items + 1, size=2 * n):
                i = int(i)
                if i not in seen and i not in chosen:
                    picked.append(i)
                    chosen.add(i)
                    if len(picked) == n:
                        break
        out[r] = picked
    return out


def training_users(dataset: SequenceDataset, config: Stage2Config) -> np.ndarray:
    """Training users with >= 2 training items, optionally a seeded sample (sorted ids)."""
    users = np.flatnonzero(np.asarray(dataset.train_users, dtype=bool))
    users = users[[len(dataset.train_sequence(u)) >= 2 for u in users]]
    if config.max_train_users is not None and config.max_train_users < len(users):
        users = np.sort(rng(config.seed, "stage2-users").choice(users, size=config.max_train_users, replace=False))
    return users


def epoch_plan(dataset: SequenceDataset, users: np.ndarray, config: Stage2Config, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, candidates)`` of an epoch: a permutation of row indices of ``users`` and each
    user's candidates ``(n_users, n_candidates)`` in display order (target included)."""
    gen = rng(config.seed, "stage2-epoch", epoch)
    order = gen.permutation(len(users))
    negs = sample_negatives(dataset, users, config.n_candidates - 1, gen)
    targets = np.array([dataset.train_sequence(u)[-1] for u in users], dtype=np.int64)
    cands = np.concatenate([targets[:, None], negs], 1)
    for r in range(len(users)):
        cands[r] = cands[r][gen.permutation(cands.shape[1])]
    return order, cands


# ---- checkpoints ----------------------------------------------------------------------------------
def _save_checkpoint(out_dir: Path, model: Stage2Model, opt: torch.optim.Optimizer, state: dict[str, Any], keep: int) -> Path:
    ckpt_root = out_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:08d}"
    final = ckpt_root / name
    if (final / "trainer_state.json").exists():  # this step is saved already (a finished run re-opened)
        write_json(out_dir / "latest.json", {"step": state["step"], "path": f"checkpoints/{name}"})
        return final
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}."))
    try:
        save_tensors(tmp / "projectors.safetensors", model.state_dict(), metadata={"format": FORMAT, "step": str(state["step"])})
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


def _latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "latest.json"
    if not pointer.exists():
        return None
    info = read_json(pointer)
    path = out_dir / str(info.get("path", ""))
    if not (path / "trainer_state.json").exists():
        raise ValueError(f"{pointer}: field 'path' points to {path}, which holds no checkpoint (deleted?)")
    return path


def _clear_run(out_dir: Path) -> None:
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in ("latest.json", "model.json", "model.safetensors"):
        (out_dir / name).unlink(missing_ok=True)


def _check_config(saved: dict[str, Any], config: Stage2Config, where: Path) -> None:
    new = dataclasses.asdict(config)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {new.get(k)!r}" for k in sorted(new) if k not in RESUMABLE_FIELDS and saved.get(k) != new.get(k)]
    if diffs:
        raise ValueError(f"{where}: cannot resume, the stage-2 config differs ({'; '.join(diffs)}). Use another out_dir or resume=False.")


# ---- training -------------------------------------------------------------------------------------
def train_stage2(
    dataset: SequenceDataset,
    cf_model: CFBackbone,
    joint_items: torch.Tensor,
    llm: nn.Module,
    tokenizer: Any,
    config: Stage2Config | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> tuple[Stage2Model, dict[str, Any]]:
    """Train ``F_U`` and ``F_I`` with the frozen LLM (paper eq. 8).

    Parameters
    ----------
    dataset : SequenceDataset
    cf_model : CFBackbone
        Frozen; gives ``x^u``.
    joint_items : (n_items + 1, d') tensor
        Frozen joint item embeddings (row 0 = padding).
    llm, tokenizer : from :func:`allmrec.llm.load_llm` (frozen).
    config : Stage2Config
    out_dir : path, optional
        Run folder for checkpoints and the final model (``None``: nothing saved).
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (refused if it was made for another
        LLM, CF model, joint table, dataset or training config); ``False`` starts over.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    (model, state)
        The trained :class:`Stage2Model` (``model.meta`` holds the prompt config and identities)
        and the trainer state (``step``, ``epoch_loss``, ``loss_log``, ``seconds``).
    """
    from tqdm.auto import tqdm

    config = config or Stage2Config()
    if joint_items.dim() != 2 or joint_items.shape[0] != dataset.n_items + 1:
        raise ValueError(f"joint_items must have shape (n_items + 1, d') = ({dataset.n_items + 1}, d'), got {tuple(joint_items.shape)}")
    device = llm.get_input_embeddings().weight.device
    identities = _identities(dataset, cf_model, joint_items, llm)
    prompt_cfg = config.prompt_config()
    users = training_users(dataset, config)
    if len(users) == 0:
        raise ValueError(f"dataset {dataset.name!r}: no training user has >= 2 training items")
    steps_per_epoch = math.ceil(len(users) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)

    model = Stage2Model(cf_model.dim, joint_items.shape[1], hidden_size(llm), seed=config.seed)
    model.to(device=device, dtype=DTYPES[config.dtype])
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    state: dict[str, Any] = {"format": FORMAT, "step": 0, "epoch_loss": {}, "loss_log": [], "seconds": 0.0}
    meta = {"format": FORMAT, "stage2": dataclasses.asdict(config), "prompt": dataclasses.asdict(prompt_cfg), "identity": identities,
            "dims": {"user": model.user_dim, "item": model.item_dim, "hidden": model.hidden}}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if not resume:
            _clear_run(out)
        ckpt = _latest_checkpoint(out)
        if ckpt is not None:
            saved = read_json(ckpt / "trainer_state.json")
            check_identities(saved.get("identity", {}), identities, ckpt)
            _check_config(saved.get("stage2", {}), config, ckpt)
            model.load_state_dict(load_tensors(ckpt / "projectors.safetensors", device=device))
            opt.load_state_dict(optimizer_from_tensors(load_tensors(ckpt / "optimizer.safetensors", device=device), saved["optimizer"]))
            state = {k: saved[k] for k in ("format", "step", "epoch_loss", "loss_log", "seconds")}
            log.info("stage 2: resuming from %s (step %d of %d)", ckpt, state["step"], total)
        write_json(out / "config.json", meta)
        if state["step"] < total:
            # The folder's final model (if any) is about to be superseded: drop it so nobody reuses it.
            (out / "model.json").unlink(missing_ok=True)
    model.meta = dict(meta)

    titles = display_titles(dataset.titles, tokenizer, config.max_title_tokens)
    histories = [dataset.train_sequence(u)[:-1] for u in users]
    x_u = user_representations(cf_model, users, histories, config.cf_batch_size)
    joint = joint_items.detach().to(device)
    embedding = llm.get_input_embeddings()
    llm.eval()

    def save() -> None:
        if out is not None:
            _save_checkpoint(out, model, opt, {**state, "identity": identities, "stage2": dataclasses.asdict(config)}, config.keep_checkpoints)

    bar = tqdm(total=total, initial=state["step"], desc="stage 2", disable=not progress, dynamic_ncols=True)
    window: list[float] = []
    started = time.perf_counter() - float(state["seconds"])
    model.train()
    while state["step"] < total:
        epoch, within = divmod(state["step"], steps_per_epoch)
        order, cands = epoch_plan(dataset, users, config, epoch)
        for i in range(within, steps_per_epoch):
            if state["step"] >= total:
                break
            rows = order[i * config.batch_size : (i + 1) * config.batch_size]
            prompts = [build_prompt(histories[r], cands[r], titles, dataset.wording, prompt_cfg, int(dataset.train_sequence(users[r])[-1])) for r in rows]
            soft = model.soft_vectors(prompts, x_u[rows].to(device), joint)
            batch = splice(prompts, tokenizer, embedding, soft, targets=[p.target for p in prompts], padding_side="right")
            loss = target_loss(llm, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage 2: non-finite loss {loss.item()} at step {state['step']}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            state["step"] += 1
            window.append(value)
            ep = state["epoch_loss"].setdefault(str(epoch), [0.0, 0])
            ep[0] += value
            ep[1] += 1
            if len(window) >= config.log_every or state["step"] == total:
                state["loss_log"].append([state["step"], float(np.mean(window))])
                window = []
            state["seconds"] = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{value:.3f}")
            if state["step"] % config.checkpoint_every == 0 and state["step"] < total:
                save()
    bar.close()
    model.eval()
    state["seconds"] = time.perf_counter() - started
    state["epoch_loss"] = {k: v for k, v in state["epoch_loss"].items()}
    model.meta.update(state={"step": state["step"], "seconds": state["seconds"]})
    if out is not None:
        save()
        save_tensors(out / "model.safetensors", model.state_dict(), metadata={"format": FORMAT, "step": str(state["step"])})
        write_json(out / "model.json", {**model.meta, "trainer_state": state})
    return model, state


def save_stage2(model: Stage2Model, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (meta: prompt config, identities, dims)."""
    out = Path(out_dir)
    save_tensors(out / "model.safetensors", model.state_dict(), metadata={"format": FORMAT})
    meta = {**model.meta, "format": FORMAT, "dims": {"user": model.user_dim, "item": model.item_dim, "hidden": model.hidden}}
    write_json(out / "model.json", meta)
    return out


def load_stage2(
    path: str | Path,
    llm: nn.Module | None = None,
    cf_model: nn.Module | None = None,
    joint_items: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> Stage2Model:
    """Load projectors saved by :func:`train_stage2` / :func:`save_stage2`.

    ``path`` is a run folder (its final ``model.json``), or a checkpoint folder. When ``llm``,
    ``cf_model`` or ``joint_items`` are given they must be the ones the model was trained with.
    """
    path = Path(path)
    if (path / "model.json").exists():
        meta = read_json(path / "model.json")
        weights = path / "model.safetensors"
    elif (path / "trainer_state.json").exists():
        saved = read_json(path / "trainer_state.json")
        meta = {"stage2": saved["stage2"], "identity": saved["identity"], "state": {"step": saved["step"]}}
        meta["prompt"] = dataclasses.asdict(Stage2Config(**saved["stage2"]).prompt_config())
        weights = path / "projectors.safetensors"
    else:
        raise FileNotFoundError(f"{path}: no stage-2 model here (expected model.json + model.safetensors, or a checkpoint folder)")
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: not found")
    tensors = load_tensors(weights)
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        saved_step = (fh.metadata() or {}).get("step")
    meta_step = (meta.get("state") or {}).get("step")
    if saved_step is not None and meta_step is not None and int(saved_step) != int(meta_step):
        raise ValueError(f"{weights}: holds step {saved_step} but its description says step {meta_step} (interrupted write?)")
    try:
        user_dim, item_dim, hidden = tensors["user_proj.0.weight"].shape[1], tensors["item_proj.0.weight"].shape[1], tensors["user_proj.0.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"{weights}: missing tensor {err.args[0]!r}; not a stage-2 projector file") from None
    current: dict[str, str] = {}
    if llm is not None:
        current["llm"] = llm_identity(llm)
    if cf_model is not None:
        current["cf"] = cf_identity(cf_model)
    if joint_items is not None:
        current["joint_items"] = tensor_fingerprint(joint_items)
    check_identities(meta.get("identity", {}), current, path)
    model = Stage2Model(user_dim, item_dim, hidden)
    model.load_state_dict(tensors)
    model.meta = meta
    if device is None and llm is not None:
        device = llm.get_input_embeddings().weight.device
    return model.to(device or "cpu").eval()
