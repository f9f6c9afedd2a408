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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from allmrec.align.listwise import ScoreHead, candidate_states, listwise_loss
from allmrec.cf.base import CFBackbone
from allmrec.data.dataset import SequenceDataset
from allmrec.llm.loading import DTYPES, hidden_size, llm_identity
from allmrec.llm.prompt import Prompt, PromptConfig, build_prompt, display_titles
from allmrec.llm.scoring import target_loss
from allmrec.llm.splice import splice
from allmrec.utils.checkpoints import check_resumable, clear_run, latest_checkpoint, record_step, save_step_checkpoint
from allmrec.utils.fingerprint import state_fingerprint, strings_fingerprint
from allmrec.utils.io import load_tensors, read_json, save_tensors, write_json, optimizer_from_tensors
from allmrec.utils.seed import rng

log = logging.getLogger(__name__)

FORMAT = "allmrec-stage2/1"
# Options that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = {"epochs", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "cf_batch_size", "eval_every"}
OBJECTIVES = ("lm", "listwise")
TRAIN_TARGETS = ("train", "valid")
ITEM_TABLES = ("joint", "cf", "random", "zeros")


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
    objective : str
        ``"lm"`` (paper eq. 8: next-token loss on the target title) or ``"listwise"`` (score the
        candidates from the LLM's hidden states, :mod:`allmrec.align.listwise`).
    residual : bool
        Listwise only: the score is the frozen CF model's (standardised) score, gated, plus what
        the LLM path adds; training starts at the CF model's ranking.
    train_target : str
        ``"train"`` (paper: the last training item, history before it) or ``"valid"`` (the
        held-out validation item, history = the training sequence). The frozen CF model has
        fitted every training item, so a residual trained on them learns to trust it blindly;
        the validation item is what the CF model has never seen, like the test item.
    train_projectors : bool
        ``False`` keeps ``F_U``/``F_I`` at their seeded initialisation and trains only the
        listwise head (the LLM then runs without a backward pass: ~3x cheaper per step).
    soft_norm : bool
        Rescale every soft token to the mean norm of the LLM's own token embeddings.
    head_width : int
        Hidden width of the listwise head.
    valid_users : int
        Seeded training users held out of stage-2 training; their validation items give the
        learning curve (validation Hit@1 every ``eval_every`` steps, in ``trainer_state``).
    eval_every : int
        Steps between learning-curve points (0: none).
    item_table : str
        What the item soft tokens read (the pipeline builds the table): ``"joint"`` (stage-1
        ``e_i``, the paper), ``"cf"`` (the CF model's item embeddings: the MLP-LLM baseline),
        ``"random"`` (seeded Gaussian rows: ablation) or ``"zeros"`` (no item information, ``F_I``
        emits one learned placeholder vector: the "w/o joint embedding" ablation).
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
    objective: str = "lm"
    residual: bool = False
    train_target: str = "train"
    train_projectors: bool = True
    soft_norm: bool = False
    head_width: int = 256
    valid_users: int = 0
    eval_every: int = 0
    item_table: str = "joint"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"Stage2Config.dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name, allowed in (("objective", OBJECTIVES), ("train_target", TRAIN_TARGETS), ("item_table", ITEM_TABLES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Stage2Config.{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.residual and self.objective != "listwise":
            raise ValueError("Stage2Config.residual needs objective 'listwise' (the LM loss has no score to add the CF score to)")
        if not self.train_projectors and self.objective != "listwise":
            raise ValueError("Stage2Config.train_projectors: False leaves nothing to train with objective 'lm'")
        if self.valid_users < 0 or self.eval_every < 0 or self.head_width < 1:
            raise ValueError("Stage2Config: valid_users and eval_every must be >= 0, head_width >= 1")
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

    def __init__(self, user_dim: int, item_dim: int, hidden: int, seed: int = 0, head_width: int | None = None, soft_norm: float | None = None) -> None:
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
        # The listwise objective's output head (None for the paper's LM objective).
        self.head = ScoreHead(hidden, head_width, seed) if head_width else None
        # Target norm of every soft token (None: raw projections, as in the paper).
        if soft_norm:
            self.register_buffer("soft_norm", torch.tensor(float(soft_norm)))
        else:
            self.soft_norm = None
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
        if self.soft_norm is not None:
            table = table * (self.soft_norm / table.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return table[torch.as_tensor(order, device=table.device)]

    @property
    def objective(self) -> str:
        return "listwise" if self.head is not None else "lm"

    @property
    def residual(self) -> bool:
        return bool((self.meta.get("stage2") or {}).get("residual", False))

    def listwise_scores(
        self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], user_reps: torch.Tensor | None, joint_items: torch.Tensor, cf_scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``(B, C)`` of each prompt's candidates in display order (listwise objective).

        ``cf_scores`` ``(B, C)`` (same order) are required by a residual model and ignored otherwise.
        """
        if self.head is None:
            raise ValueError("this stage-2 model was trained with the LM objective; it has no listwise head")
        n_cand = len(prompts[0].candidates)
        if any(len(p.candidates) != n_cand for p in prompts):
            raise ValueError("listwise scoring needs the same number of candidates in every prompt of a batch")
        h_cand, h_last = self.listwise_states(llm, tokenizer, prompts, user_reps, joint_items)
        return self.score_states(h_cand, h_last, cf_scores)

    def listwise_states(self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], user_reps: torch.Tensor | None, joint_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM's hidden states at the candidates' soft tokens and at the prompt's end."""
        n_cand = len(prompts[0].candidates)
        soft = self.soft_vectors(prompts, user_reps, joint_items)
        batch = splice(prompts, tokenizer, llm.get_input_embeddings(), soft, padding_side="left")
        return candidate_states(llm, batch, n_cand)

    def score_states(self, h_cand: torch.Tensor, h_last: torch.Tensor, cf_scores: torch.Tensor | None = None) -> torch.Tensor:
        """The listwise head on :meth:`listwise_states` (plus the CF scores for a residual model)."""
        if self.head is None:
            raise ValueError("this stage-2 model was trained with the LM objective; it has no listwise head")
        if self.residual:
            if cf_scores is None:
                raise ValueError("a residual stage-2 model needs the CF model's candidate scores")
            return self.head(h_cand, h_last, cf_scores.to(h_cand.device))
        return self.head(h_cand, h_last)

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


def _frozen_cf_batches(cf_model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], batch_size: int, fn) -> list[torch.Tensor]:
    """``fn(users, left-padded histories, row slice)`` per batch, in eval mode without gradients;
    float32 CPU outputs. The CF model's training mode is restored afterwards."""
    was_training = cf_model.training
    cf_model.eval()
    params = list(cf_model.parameters())
    device = params[0].device if params else torch.device("cpu")
    width = int(getattr(getattr(cf_model, "config", None), "max_len", 0) or max((len(h) for h in histories), default=1) or 1)
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(users), batch_size):
                u = torch.as_tensor(np.asarray(users[s : s + batch_size]), dtype=torch.long, device=device)
                h = left_pad(histories[s : s + batch_size], width).to(device)
                out.append(fn(u, h, slice(s, s + batch_size)).float().cpu())
    finally:
        cf_model.train(was_training)
    return out


def user_representations(cf_model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], batch_size: int = 256) -> torch.Tensor:
    """``x^u`` ``(len(users), d_cf)`` float32 on CPU from the frozen CF model (eval mode)."""
    out = _frozen_cf_batches(cf_model, users, histories, batch_size, lambda u, h, rows: cf_model.user_representation(u, h))
    return torch.cat(out) if out else torch.zeros((0, cf_model.dim))


def cf_candidate_scores(cf_model: CFBackbone, users: Sequence[int], histories: Sequence[Sequence[int]], candidates: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """The frozen CF model's scores ``(len(users), C)`` of ``candidates`` (float32, CPU)."""
    cands = torch.as_tensor(np.asarray(candidates, dtype=np.int64))
    out = _frozen_cf_batches(cf_model, users, histories, batch_size, lambda u, h, rows: cf_model.score(u, h, cands[rows].to(u.device)))
    return torch.cat(out) if out else torch.zeros((0, cands.shape[1] if cands.dim() == 2 else 0))


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


def _eligible_users(dataset: SequenceDataset, config: Stage2Config) -> np.ndarray:
    need = 2 if config.train_target == "train" else 1  # a non-empty history before the target
    users = np.flatnonzero(np.asarray(dataset.train_users, dtype=bool))
    return users[[len(dataset.train_sequence(u)) >= need for u in users]]


def curve_users(dataset: SequenceDataset, config: Stage2Config) -> np.ndarray:
    """The seeded training users held out of stage 2 for the learning curve (sorted ids)."""
    users = np.flatnonzero(np.asarray(dataset.train_users, dtype=bool))
    users = users[[len(dataset.train_sequence(u)) >= 1 for u in users]]
    n = min(config.valid_users, len(users))
    return np.sort(rng(config.seed, "stage2-curve").choice(users, size=n, replace=False)) if n else users[:0]


def training_users(dataset: SequenceDataset, config: Stage2Config) -> np.ndarray:
    """Training users with a history before their stage-2 target (>= 2 training items for the
    ``train`` target, >= 1 for ``valid``), minus :func:`curve_users`, optionally a seeded sample
    (sorted ids)."""
    users = _eligible_users(dataset, config)
    if config.valid_users:
        users = np.setdiff1d(users, curve_users(dataset, config))
    if config.max_train_users is not None and config.max_train_users < len(users):
        users = np.sort(rng(config.seed, "stage2-users").choice(users, size=config.max_train_users, replace=False))
    return users


def example_history(dataset: SequenceDataset, user: int, config: Stage2Config) -> np.ndarray:
    """History before the stage-2 training target of ``user``."""
    seq = dataset.train_sequence(user)
    return seq[:-1] if config.train_target == "train" else seq


def example_target(dataset: SequenceDataset, user: int, config: Stage2Config) -> int:
    """The stage-2 training target of ``user`` (last training item, or the validation item)."""
    return int(dataset.train_sequence(user)[-1]) if config.train_target == "train" else dataset.target(user, "valid")


def epoch_plan(dataset: SequenceDataset, users: np.ndarray, config: Stage2Config, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, candidates)`` of an epoch: a permutation of row indices of ``users`` and each
    user's candidates ``(n_users, n_candidates)`` in display order (target included)."""
    gen = rng(config.seed, "stage2-epoch", epoch)
    order = gen.permutation(len(users))
    negs = sample_negatives(dataset, users, config.n_candidates - 1, gen)
    targets = np.array([example_target(dataset, u, config) for u in users], dtype=np.int64)
    cands = np.concatenate([targets[:, None], negs], 1)
    for r in range(len(users)):
        cands[r] = cands[r][gen.permutation(cands.shape[1])]
    return order, cands


# ---- checkpoints ----------------------------------------------------------------------------------
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

    listwise = config.objective == "listwise"
    soft_norm = float(llm.get_input_embeddings().weight.detach().float().norm(dim=-1).mean()) if config.soft_norm else None
    model = Stage2Model(cf_model.dim, joint_items.shape[1], hidden_size(llm), seed=config.seed, head_width=config.head_width if listwise else None, soft_norm=soft_norm)
    model.to(device=device, dtype=DTYPES[config.dtype])
    if not config.train_projectors:
        model.user_proj.requires_grad_(False)
        model.item_proj.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr, betas=(0.9, 0.98))
    state: dict[str, Any] = {"format": FORMAT, "step": 0, "epoch_loss": {}, "loss_log": [], "curve": [], "seconds": 0.0}
    meta = {"format": FORMAT, "stage2": dataclasses.asdict(config), "prompt": dataclasses.asdict(prompt_cfg), "identity": identities,
            "dims": {"user": model.user_dim, "item": model.item_dim, "hidden": model.hidden}}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if not resume:
            clear_run(out, ("model.json", "model.safetensors", "llm_states.safetensors"))
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            saved = read_json(ckpt / "trainer_state.json")
            check_identities(saved.get("identity", {}), identities, ckpt)
            check_resumable(saved.get("stage2", {}), config, RESUMABLE_FIELDS, ckpt, "stage-2")
            model.load_state_dict(load_tensors(ckpt / "projectors.safetensors", device=device))
            opt.load_state_dict(optimizer_from_tensors(load_tensors(ckpt / "optimizer.safetensors", device=device), saved["optimizer"]))
            state = {k: saved[k] for k in ("format", "step", "epoch_loss", "loss_log", "seconds")}
            state["curve"] = saved.get("curve", [])
            log.info("stage 2: resuming from %s (step %d of %d)", ckpt, state["step"], total)
        write_json(out / "config.json", meta)
        if state["step"] < total:
            # The folder's final model (if any) is about to be superseded: drop it so nobody reuses it.
            (out / "model.json").unlink(missing_ok=True)
    model.meta = dict(meta)

    titles = display_titles(dataset.titles, tokenizer, config.max_title_tokens)
    histories = [example_history(dataset, u, config) for u in users]
    targets = np.array([example_target(dataset, u, config) for u in users], dtype=np.int64)
    x_u = user_representations(cf_model, users, histories, config.cf_batch_size)
    joint = joint_items.detach().to(device)
    embedding = llm.get_input_embeddings()
    llm.eval()
    held_out = curve_users(dataset, config) if config.eval_every else None

    def curve_point() -> None:
        """Validation Hit@1 / NDCG@10 of the held-out users at the current step."""
        if held_out is None or len(held_out) == 0 or any(p[0] == state["step"] for p in state["curve"]):
            return
        from allmrec.recommend.inference import InferenceConfig, evaluate_llm

        nonlocal started
        t0 = time.perf_counter()
        model.eval()
        if cached:
            metrics = cached_validation()
        else:
            metrics, _ = evaluate_llm(dataset, llm, tokenizer, "valid", held_out, stage2=model, cf_model=cf_model, joint_items=joint, config=InferenceConfig(mode="rank", seed=config.seed))
        model.train()
        state["curve"].append([state["step"], metrics["hit@1"], metrics["ndcg@10"]])
        started += time.perf_counter() - t0  # evaluation is not training time
        log.info("stage 2: step %d, validation Hit@1 %.4f on %d held-out users", state["step"], metrics["hit@1"], len(held_out))

    def save() -> None:
        if out is not None:
            save_step_checkpoint(out, "projectors.safetensors", model.state_dict(), opt, {**state, "identity": identities, "stage2": dataclasses.asdict(config)},
                                 config.keep_checkpoints, FORMAT)

    bar = tqdm(total=total, initial=state["step"], desc="stage 2", disable=not progress, dynamic_ncols=True)
    window: list[float] = []
    started = time.perf_counter() - float(state["seconds"])
    # With frozen projectors nothing before the head trains: the LLM's states of each training
    # example are computed once (epoch 0's candidates are kept for later epochs) and reused, so
    # extra epochs cost only the head.
    cached = listwise and not config.train_projectors
    fixed_cands = epoch_plan(dataset, users, config, 0)[1] if cached else None
    fixed_cf = cf_candidate_scores(cf_model, users, histories, fixed_cands, config.cf_batch_size) if cached and config.residual else None
    state_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    states_file = out / "llm_states.safetensors" if (cached and out is not None) else None
    states_key = strings_fingerprint([repr(sorted(identities.items())), repr({k: v for k, v in sorted(dataclasses.asdict(config).items()) if k not in RESUMABLE_FIELDS})])
    if states_file is not None and states_file.exists():
        from safetensors import safe_open

        with safe_open(str(states_file), framework="pt") as fh:
            same = (fh.metadata() or {}).get("key") == states_key
        saved_states = load_tensors(states_file) if same else {}
        if same and torch.equal(saved_states["users"], torch.as_tensor(users)):
            for k, r in enumerate(saved_states["rows"].tolist()):
                state_cache[int(r)] = (saved_states["h_cand"][k], saved_states["h_last"][k])

    def save_states() -> None:
        """Keep the LLM states of every training example once epoch 0 has made them all (a
        resumed run then skips the LLM)."""
        if states_file is None or states_file.exists() or len(state_cache) < len(users):
            return
        rows = sorted(state_cache)
        save_tensors(states_file, {"rows": torch.as_tensor(rows), "users": torch.as_tensor(users),
                                   "h_cand": torch.stack([state_cache[r][0] for r in rows]), "h_last": torch.stack([state_cache[r][1] for r in rows])},
                     metadata={"key": states_key})

    def cached_states(rows: np.ndarray, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [k for k, r in enumerate(rows) if int(r) not in state_cache]
        if missing:
            with torch.no_grad():
                hc, hl = model.listwise_states(llm, tokenizer, [prompts[k] for k in missing], x_u[rows[missing]].to(device), joint)
            for j, k in enumerate(missing):
                state_cache[int(rows[k])] = (hc[j].cpu(), hl[j].cpu())
        h_cand = torch.stack([state_cache[int(r)][0] for r in rows]).to(device)
        h_last = torch.stack([state_cache[int(r)][1] for r in rows]).to(device)
        return h_cand, h_last

    val_cache: dict[str, Any] = {}

    @torch.no_grad()
    def cached_validation() -> dict[str, float]:
        """The held-out users' metrics from their LLM states, computed once (frozen projectors),
        with the candidates shown as :func:`allmrec.recommend.evaluate_llm` shows them."""
        from allmrec.eval.metrics import ranking_metrics, target_ranks
        from allmrec.recommend.inference import display_order

        if not val_cache:
            hists = [dataset.history(int(u), "valid") for u in held_out]
            shown = np.stack([c[display_order(c, config.seed, f"valid:{int(u)}")] for u, c in zip(held_out, dataset.valid_candidates[held_out])])
            xv = user_representations(cf_model, held_out, hists, config.cf_batch_size)
            hc, hl = [], []
            for k in range(len(held_out)):
                prompt = build_prompt(hists[k], shown[k], titles, dataset.wording, prompt_cfg)
                a, b = model.listwise_states(llm, tokenizer, [prompt], xv[k : k + 1].to(device), joint)
                hc.append(a[0].cpu())
                hl.append(b[0].cpu())
            val_cache.update(h_cand=torch.stack(hc), h_last=torch.stack(hl), shown=shown,
                             cf=cf_candidate_scores(cf_model, held_out, hists, shown) if config.residual else None,
                             truth=(shown == dataset.valid_candidates[held_out, :1]).argmax(1))
        sc = model.score_states(val_cache["h_cand"].to(device), val_cache["h_last"].to(device), val_cache["cf"]).float().cpu().numpy()
        t = val_cache["truth"]
        first = np.concatenate([sc[np.arange(len(t)), t][:, None], np.delete(sc, t + np.arange(len(t)) * sc.shape[1]).reshape(len(t), -1)], 1)
        return ranking_metrics(target_ranks(first))

    model.train()
    if config.eval_every:
        curve_point()
    while state["step"] < total:
        epoch, within = divmod(state["step"], steps_per_epoch)
        order, cands = epoch_plan(dataset, users, config, epoch)
        if cached:
            cands = fixed_cands  # the cached LLM states are those of epoch 0's candidates
        for i in range(within, steps_per_epoch):
            if state["step"] >= total:
                break
            rows = order[i * config.batch_size : (i + 1) * config.batch_size]
            prompts = [build_prompt(histories[r], cands[r], titles, dataset.wording, prompt_cfg, int(targets[r])) for r in rows]
            if listwise:
                if not config.residual:
                    cf = None
                elif cached:
                    cf = fixed_cf[rows]
                else:
                    cf = cf_candidate_scores(cf_model, users[rows], [histories[r] for r in rows], cands[rows])
                if cached:
                    h_cand, h_last = cached_states(rows, prompts)
                else:
                    h_cand, h_last = model.listwise_states(llm, tokenizer, prompts, x_u[rows].to(device), joint)
                scores = model.score_states(h_cand, h_last, cf)
                loss = listwise_loss(scores, torch.as_tensor((cands[rows] == targets[rows, None]).argmax(1)))
            else:
                soft = model.soft_vectors(prompts, x_u[rows].to(device), joint)
                batch = splice(prompts, tokenizer, embedding, soft, targets=[p.target for p in prompts], padding_side="right")
                loss = target_loss(llm, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage 2: non-finite loss {loss.item()} at step {state['step']}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            record_step(state, window, epoch, value, config.log_every, total)
            state["seconds"] = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{value:.3f}")
            if config.eval_every and state["step"] % config.eval_every == 0:
                curve_point()
            if state["step"] % config.checkpoint_every == 0 and state["step"] < total:
                save()
        if cached:
            save_states()
    if config.eval_every:
        curve_point()
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
    head_width = tensors["head.net.0.weight"].shape[0] if "head.net.0.weight" in tensors else None
    soft_norm = float(tensors["soft_norm"]) if "soft_norm" in tensors else None
    model = Stage2Model(user_dim, item_dim, hidden, head_width=head_width, soft_norm=soft_norm)
    model.load_state_dict(tensors)
    model.meta = meta
    if device is None and llm is not None:
        device = llm.get_input_embeddings().weight.device
    return model.to(device or "cpu").eval()
