"""Stage-2 options: what the model is (:class:`Stage2ModelConfig`), how it trains
(:class:`Stage2TrainConfig`), and the named modes that set both.

In a config file::

    stage2:
      mode: best                 # best (default) | paper | listwise
      model: {head_width: 256}   # anything the mode does not fix, or an override of it
      train: {lr: 5e-4, epochs: 3, max_train_users: 600}

Modes (docs/modes.md):

* ``best``: the frozen LLM reads the A-LLMRec prompt once; a listwise head scores the candidates
  from its hidden states, on top of the fitted fusion's standardised score (residual; the fusion
  of the CF model, the text tower and stage 1's tables, :mod:`allmrec.fusion`); trained on the
  held-out validation item of training users; soft-token projectors frozen, so each example's
  LLM states are computed once. The LLM path is kept only when it beats the fusion on held-out
  training users (``llm_path: auto``); otherwise the fusion answers alone, without an LLM forward;
* ``cf-residual``: the best mode on top of the frozen CF model's score instead of the fusion (the
  best mode of version 0.1; needs no fusion, so it moves across domains);
* ``paper``: the paper's stage 2 (eq. 8), projectors trained with the next-token loss on the
  target title (last training item);
* ``listwise``: the best mode without the CF residual (the LLM path alone).

A mode is the values it sets; a config that overrides one of them is reported as ``custom``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from allmrec.config import from_dict, length_field, merge, runtime_field
from allmrec.llm.loading import DTYPES
from allmrec.llm.prompt import PromptConfig

OBJECTIVES = ("lm", "listwise")
TRAIN_TARGETS = ("train", "valid")
ITEM_TABLES = ("joint", "cf", "random", "zeros")
PRIORS = ("cf", "fusion")
LLM_PATHS = ("auto", "always")
MODES: dict[str, dict[str, dict[str, Any]]] = {
    "best": {"model": {"objective": "listwise", "residual": True, "prior": "fusion"}, "train": {"train_target": "valid", "train_projectors": False}},
    "cf-residual": {"model": {"objective": "listwise", "residual": True, "prior": "cf"}, "train": {"train_target": "valid", "train_projectors": False}},
    "paper": {"model": {"objective": "lm", "residual": False}, "train": {"train_target": "train", "train_projectors": True}},
    "listwise": {"model": {"objective": "listwise", "residual": False}, "train": {"train_target": "valid", "train_projectors": False}},
}
MODE_LABELS = {"best": "best mode: fusion + LLM residual", "cf-residual": "listwise residual on CF", "paper": "paper: LM loss", "listwise": "listwise", "custom": "custom stage 2"}


@dataclass
class Stage2ModelConfig:
    """What a stage-2 model is; inference reuses every field.

    Parameters
    ----------
    objective : ``"lm"`` (paper eq. 8: next-token loss on the target title; ranks by title
        likelihood or generates) or ``"listwise"`` (scores the candidates from the LLM's hidden
        states, :mod:`allmrec.align.stage2.listwise`).
    residual : listwise only: the score is the prior's standardised score, gated, plus what the
        LLM path adds; training starts at the prior's ranking.
    prior : what a residual model adds the LLM path to: ``"cf"`` (the frozen CF model's score)
        or ``"fusion"`` (the run's fitted fusion, ``allmrec fuse``).
    llm_path : ``"auto"``: after training, keep the LLM path only if on the held-out training
        users (``train.valid_users``) its per-user log-likelihood of the target beats the prior's
        with a paired-bootstrap 95% lower bound above 0; else recommend with the prior alone.
        ``"always"``: keep it.
    head_width : hidden width of the listwise head.
    soft_norm : rescale every soft token to the mean norm of the LLM's own token embeddings.
    item_table : what the item soft tokens read: ``"joint"`` (stage-1 ``e_i``, the paper),
        ``"cf"`` (CF item embeddings: the MLP-LLM baseline), ``"random"`` (seeded Gaussian rows)
        or ``"zeros"`` (no item information: the "w/o joint embedding" ablation).
    dtype : dtype of the projectors and head; the frozen LLM keeps its own, soft tokens are cast
        to it where they are spliced in.
    history_len, max_title_tokens, item_token, user_token : the prompt
        (:class:`allmrec.llm.prompt.PromptConfig`).
    """

    objective: str = "listwise"
    residual: bool = True
    prior: str = "cf"
    llm_path: str = "auto"
    head_width: int = 256
    soft_norm: bool = False
    item_table: str = "joint"
    dtype: str = "float32"
    history_len: int = 10
    max_title_tokens: int = 16
    item_token: str = "after"
    user_token: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"stage2.model.dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name, allowed in (("objective", OBJECTIVES), ("item_table", ITEM_TABLES), ("prior", PRIORS), ("llm_path", LLM_PATHS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"stage2.model.{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.residual and self.objective != "listwise":
            raise ValueError("stage2.model.residual needs objective 'listwise' (the LM loss has no score to add the CF score to)")
        if self.head_width < 1:
            raise ValueError("stage2.model.head_width must be >= 1")
        self.prompt_config()  # validates the prompt fields

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(style="soft", history_len=self.history_len, max_title_tokens=self.max_title_tokens, item_token=self.item_token,
                            user_token=self.user_token)


@dataclass
class Stage2TrainConfig:
    """How a stage-2 model trains (defaults: the paper's settings where it has them).

    Parameters
    ----------
    lr : Adam learning rate (betas 0.9, 0.98 as in the authors' code).
    batch_size, epochs : examples per step, passes over the training users.
    max_steps : stop after this many optimizer steps in total.
    max_train_users : train on a seeded sample of this many training users.
    n_candidates : candidates per training example (the target + seeded negatives).
    train_target : ``"train"`` (paper: the last training item, history before it) or
        ``"valid"`` (the held-out validation item, history = the training sequence). The frozen
        CF model has fitted every training item, so a residual trained on them learns to trust
        it blindly; the validation item is what the CF model has never seen, like the test item.
    train_projectors : ``False`` keeps ``F_U``/``F_I`` at their seeded initialisation and trains
        only the listwise head (the LLM then runs once per example, without a backward pass).
    seed : seeds the initialisation, the users, the candidates and the order.
    valid_users : seeded training users held out of stage-2 training; their validation items give
        the learning curve (validation Hit@1 every ``eval_every`` steps).
    eval_every : steps between learning-curve points (0: none).
    checkpoint_every, keep_checkpoints, log_every : checkpoint period (steps), checkpoint folders
        kept, steps per loss-log entry.
    cf_batch_size : batch size of the frozen CF model's forwards.
    """

    lr: float = 1e-4
    batch_size: int = 4
    epochs: int = length_field(5)
    max_steps: int | None = length_field(None)
    max_train_users: int | None = None
    n_candidates: int = 20
    train_target: str = "valid"
    train_projectors: bool = False
    seed: int = 42
    valid_users: int = 0
    eval_every: int = runtime_field(0)
    checkpoint_every: int = runtime_field(500)
    keep_checkpoints: int = runtime_field(1)
    log_every: int = runtime_field(10)
    cf_batch_size: int = runtime_field(256)

    def __post_init__(self) -> None:
        if self.train_target not in TRAIN_TARGETS:
            raise ValueError(f"stage2.train.train_target: expected one of {', '.join(TRAIN_TARGETS)}, got {self.train_target!r}")
        if self.valid_users < 0 or self.eval_every < 0:
            raise ValueError("stage2.train: valid_users and eval_every must be >= 0")
        for name in ("batch_size", "epochs", "n_candidates", "checkpoint_every", "keep_checkpoints", "log_every", "cf_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage2.train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Stage2Config:
    """A stage-2 mode with its model and training options (see the module docstring)."""

    mode: str = "best"
    model: Stage2ModelConfig = field(default_factory=Stage2ModelConfig)
    train: Stage2TrainConfig = field(default_factory=Stage2TrainConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"stage2.mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.train.train_projectors and self.model.objective != "listwise":
            raise ValueError("stage2: train_projectors false leaves nothing to train with objective 'lm'")

    @property
    def mode_name(self) -> str:
        """``mode``, or ``"custom"`` when an option the mode sets was overridden."""
        for part, values in MODES[self.mode].items():
            if any(getattr(getattr(self, part), k) != v for k, v in values.items()):
                return "custom"
        return self.mode

    @property
    def label(self) -> str:
        return MODE_LABELS[self.mode_name]


def stage2_config(section: dict[str, Any] | None, where: str = "stage2") -> Stage2Config:
    """Build a :class:`Stage2Config` from a config section: the mode's values under the
    section's own ``model`` / ``train`` options."""
    section = dict(section or {})
    unknown = set(section) - {"mode", "model", "train"}
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(map(repr, sorted(unknown)))}; valid: mode, model, train "
                         "(model and training options live under stage2.model and stage2.train)")
    mode = str(section.get("mode", "best"))
    if mode not in MODES:
        raise ValueError(f"{where}.mode: expected one of {', '.join(MODES)}, got {mode!r}")
    values = merge(MODES[mode], {k: section.get(k) or {} for k in ("model", "train")})
    return Stage2Config(mode=mode, model=from_dict(Stage2ModelConfig, values["model"], where=f"{where}.model"),
                        train=from_dict(Stage2TrainConfig, values["train"], where=f"{where}.train"))
