"""TALLRec baseline: LoRA fine-tuning of the LLM on the text-only prompt (Bao et al., RecSys'23).

The examples are exactly A-LLMRec's stage-2 examples (:mod:`allmrec.align.stage2`): the same
training users, the same target (last training item, history before it), the same seeded
candidates and order per epoch, the same prompt sentences without soft tokens
(``PromptConfig(style="text")``) and the same loss (mean NLL of the answer `` "title"`` + EOS).
Only the LoRA matrices train (``peft``, rank ``lora_r`` on ``target_modules``); AdamW without
weight decay (TALLRec's ``adamw_torch``), no warm-up.

The shared LLM is never modified
--------------------------------
``peft`` injects LoRA layers into the modules of the model it wraps, in place. TALLRec therefore
wraps a *structural* copy of the LLM: ``copy.deepcopy`` with every parameter and buffer mapped to
itself, so the copy has its own modules (where LoRA is injected) but shares the frozen base
weights with the caller's LLM (no extra memory, ~30 ms). Nothing writes to those weights:
LoRA is never merged into them, and gradients never reach them (the LLM must be frozen, as
:func:`allmrec.llm.load_llm` returns it). The caller keeps using the plain LLM unchanged.

The model returned by :func:`train_tallrec` / :func:`load_tallrec` is that copy without the
``PeftModel`` wrapper: a plain Hugging Face causal LM whose ``q_proj``/``v_proj`` (or other
targets) add their LoRA update on the fly, frozen, in eval mode. It is what
:class:`allmrec.llm.reader.PromptReader` expects (``base_model`` is the transformer body, the KV
cache works), used with :func:`tallrec_prompt_config`. Because it shares the base tensors, do
not move or cast it (``.to()``, ``.float()``): that converts the caller's LLM too; move the LLM
before building it, or use ``merge=True``. ``merge=True`` instead returns an
independent deep copy with the LoRA update merged into its weights (faster, but twice the LLM's
memory, and in bfloat16 the merge rounds away part of a small update; scores then differ
slightly from the unmerged model's).

Run folder (``out_dir``)::

    checkpoints/step-00000200/   lora.safetensors, optimizer.safetensors, trainer_state.json
    latest.json                  {"step": ..., "path": "checkpoints/step-..."} (atomic pointer)
    config.json                  the run's config and identities
    model.safetensors, model.json   the final LoRA weights + config, identities, trainer state

Checkpoints are written under a temporary name and renamed; ``latest.json`` is replaced after
that. Epoch order and negatives derive from ``(seed, epoch)`` (stage 2's plan), the LoRA
initialisation from ``seed`` and the LoRA dropout mask of step ``s`` from ``(seed, s)``, so a run
resumed from any checkpoint continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from allmrec.align.stage2.config import Stage2TrainConfig
from allmrec.align.stage2.examples import Examples, curve_users
from allmrec.config import check_resumable, length_field, runtime_field
from allmrec.data.dataset import SequenceDataset
from allmrec.data.queries import Queries
from allmrec.eval.metrics import ranking_metrics, target_ranks
from allmrec.llm.loading import llm_identity
from allmrec.llm.prompt import PromptConfig, build_prompt, display_titles
from allmrec.llm.reader import PromptReader
from allmrec.llm.scoring import target_loss
from allmrec.llm.splice import splice
from allmrec.training import LoopOptions, TrainingTask, run_training
from allmrec.utils.fingerprint import dataset_fingerprint, state_fingerprint
from allmrec.utils.io import check_weights_counter, load_tensors, read_json, save_tensors, write_json
from allmrec.utils.seed import torch_seed

log = logging.getLogger(__name__)

FORMAT = "allmrec-tallrec/2"


@dataclass
class TallrecConfig:
    """Options of :func:`train_tallrec`.

    Parameters
    ----------
    lora_r, lora_alpha, lora_dropout : LoRA rank, scaling numerator (update scaled by
        ``lora_alpha / lora_r``) and dropout on the LoRA input (TALLRec: 8, 16, 0.05).
    target_modules : list of str
        Names of the linear layers that get LoRA (TALLRec: ``q_proj``, ``v_proj``).
    lr : float
        AdamW learning rate (TALLRec: 3e-4), no weight decay.
    batch_size, epochs, max_steps, max_train_users, history_len, n_candidates, max_title_tokens, seed :
        As in :class:`allmrec.align.stage2.Stage2Config`; equal values give the same training
        examples as A-LLMRec's stage 2.
    valid_users, eval_every :
        As in :class:`allmrec.align.stage2.Stage2TrainConfig`: seeded training users held out of
        training (the same users as stage 2's for equal ``seed`` and ``valid_users``), whose
        validation items give the learning curve (validation Hit@1 every ``eval_every`` steps,
        candidates ranked by title likelihood): the two methods' curves are comparable.
    checkpoint_every, keep_checkpoints, log_every :
        Checkpoint period (steps), checkpoint folders kept, steps per loss-log entry.
    """

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lr: float = 3e-4
    batch_size: int = 4
    epochs: int = length_field(1)
    max_steps: int | None = length_field(None)
    max_train_users: int | None = None
    history_len: int = 10
    n_candidates: int = 20
    max_title_tokens: int = 16
    seed: int = 42
    valid_users: int = 0
    eval_every: int = runtime_field(0)
    checkpoint_every: int = runtime_field(500)
    keep_checkpoints: int = runtime_field(1)
    log_every: int = runtime_field(10)

    def __post_init__(self) -> None:
        for name in ("lora_r", "lora_alpha", "batch_size", "epochs", "n_candidates", "checkpoint_every", "keep_checkpoints", "log_every", "history_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TallrecConfig.{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"TallrecConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not float(self.lr) > 0:
            raise ValueError(f"TallrecConfig.lr must be > 0, got {self.lr!r}")
        if isinstance(self.target_modules, str) or not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"TallrecConfig.target_modules must be a non-empty list of module names, got {self.target_modules!r}")
        self.target_modules = list(self.target_modules)
        for name in ("valid_users", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TallrecConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("max_steps", "max_train_users"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TallrecConfig.{name} must be None or an integer >= 1, got {value!r}")
        if self.max_title_tokens < 0:
            raise ValueError(f"TallrecConfig.max_title_tokens must be >= 0, got {self.max_title_tokens}")

    def examples_config(self) -> Stage2TrainConfig:
        """The stage-2 training options whose examples (users, targets, candidates, order) TALLRec trains on."""
        return Stage2TrainConfig(batch_size=self.batch_size, epochs=self.epochs, max_steps=self.max_steps, max_train_users=self.max_train_users,
                                 n_candidates=self.n_candidates, seed=self.seed, train_target="train", train_projectors=True,
                                 valid_users=self.valid_users)

    def prompt_config(self) -> PromptConfig:
        """The text-only prompt used for training and inference."""
        return PromptConfig(style="text", history_len=self.history_len, max_title_tokens=self.max_title_tokens)

    def lora_config(self) -> Any:
        """The ``peft.LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM"
        )


def stage2_sizes(stage2: Any) -> dict[str, Any]:
    """The :class:`TallrecConfig` values the paper keeps equal to A-LLMRec's stage 2
    (:class:`allmrec.align.stage2.Stage2Config`): batch size, length, training users, history,
    candidates and title length."""
    t, m = stage2.train, stage2.model
    return {"batch_size": t.batch_size, "epochs": t.epochs, "max_steps": t.max_steps, "max_train_users": t.max_train_users,
            "history_len": m.history_len, "n_candidates": t.n_candidates, "max_title_tokens": m.max_title_tokens}


# ---- the LoRA copy of the shared LLM ------------------------------------------------------------
@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _structural_copy(llm: nn.Module) -> nn.Module:
    """A copy of ``llm`` with its own modules but the same parameter and buffer tensors."""
    memo: dict[int, Any] = {id(t): t for t in (*llm.parameters(), *llm.buffers())}
    return copy.deepcopy(llm, memo)


def _check_frozen(llm: nn.Module) -> None:
    if any(p.requires_grad for p in llm.parameters()):
        raise ValueError(
            "TALLRec needs a frozen LLM (requires_grad=False everywhere, as allmrec.llm.load_llm returns it): "
            "its base weights are shared with the LoRA copy and must not receive gradients. Call allmrec.llm.freeze(llm) first."
        )


def _lora_model(llm: nn.Module, config: TallrecConfig, deep: bool = False) -> Any:
    """``PeftModel`` around a copy of ``llm`` (structural, sharing base weights; or a full deep
    copy when ``deep``), LoRA initialised from ``config.seed``."""
    from peft import get_peft_model

    base = copy.deepcopy(llm) if deep else _structural_copy(llm)
    device = llm.get_input_embeddings().weight.device
    with _seeded(torch_seed(config.seed, "tallrec-init"), device), warnings.catch_warnings():
        # peft asks transformers a deprecated question (is_gradient_checkpointing); not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(base, config.lora_config())
    return peft_model


def _lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach() for k, v in get_peft_model_state_dict(peft_model).items()}


def _load_lora_state(peft_model: Any, tensors: dict[str, torch.Tensor], where: Path | str) -> None:
    from peft import set_peft_model_state_dict

    expected = set(_lora_state(peft_model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{where}: LoRA tensors do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    result = set_peft_model_state_dict(peft_model, tensors)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{where}: LoRA tensors not used by the model: {unexpected[:3]}")


def _lora_params(peft_model: Any) -> list[nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if "lora_" in n]


def _finish(peft_model: Any, base_llm: nn.Module, meta: dict[str, Any], merge: bool) -> nn.Module:
    """The inference model: the LoRA copy unwrapped (or merged), frozen, in eval mode, with
    ``allmrec_identity`` naming the base LLM and the LoRA weights and ``tallrec_meta`` set."""
    lora_fp = state_fingerprint(_lora_state(peft_model))
    if merge:
        model = peft_model.merge_and_unload()
        for p in model.parameters():
            p.requires_grad_(False)
    else:
        model = peft_model.base_model.model  # the transformers model with LoRA layers injected
        for p in _lora_params(peft_model):
            p.requires_grad_(False)
    model.eval()
    model.allmrec_identity = f"{llm_identity(base_llm)}+tallrec@{lora_fp[:12]}"
    model.tallrec_meta = {**meta, "lora_fingerprint": lora_fp, "merged": bool(merge)}
    return model


def tallrec_inference_model(llm: nn.Module, lora: dict[str, torch.Tensor], config: TallrecConfig, merge: bool = False, meta: dict[str, Any] | None = None) -> nn.Module:
    """Build the inference model from the shared LLM and saved LoRA tensors.

    Parameters
    ----------
    llm : the frozen base LLM (left unchanged).
    lora : LoRA tensors as saved by :func:`train_tallrec` (``peft``'s state-dict names).
    config : the :class:`TallrecConfig` they were trained with (rank, alpha, targets).
    merge : bool
        ``False``: a structural copy sharing the base weights, LoRA applied on the fly (exactly
        the trained function, no extra memory). ``True``: an independent deep copy with LoRA
        merged into its weights (faster; rounding in bfloat16).
    meta : extra description stored in ``model.tallrec_meta``.

    Returns
    -------
    A frozen, eval-mode causal LM for :class:`allmrec.llm.reader.PromptReader` (prompt:
    :func:`tallrec_prompt_config`).
    """
    _check_frozen(llm)
    peft_model = _lora_model(llm, config, deep=merge)
    device = llm.get_input_embeddings().weight.device
    _load_lora_state(peft_model, {k: v.to(device) for k, v in lora.items()}, "LoRA tensors")
    base_meta = {"format": FORMAT, "tallrec": dataclasses.asdict(config), "prompt": dataclasses.asdict(config.prompt_config())}
    return _finish(peft_model, llm, {**base_meta, **(meta or {})}, merge)


def tallrec_prompt_config(model: nn.Module) -> PromptConfig:
    """The text-only prompt a TALLRec model was trained with (pass it to the ``PromptReader``)."""
    meta = getattr(model, "tallrec_meta", None)
    if not meta or "prompt" not in meta:
        raise ValueError("not a TALLRec model (no tallrec_meta): build it with train_tallrec or load_tallrec")
    return PromptConfig(**meta["prompt"])


# ---- checkpoints ----------------------------------------------------------------------------------
def _check_identities(saved: dict[str, str], current: dict[str, str], where: Path | str) -> None:
    for key, label in (("llm", "LLM"), ("dataset", "dataset")):
        if key in saved and key in current and saved[key] != current[key]:
            raise ValueError(
                f"{where}: this TALLRec checkpoint was made for {label} {saved[key]!r}, but {label} {current[key]!r} is given. "
                "Use the same inputs, another out_dir, or resume=False to start over."
            )


# ---- training -------------------------------------------------------------------------------------
class TallrecTask(TrainingTask):
    """LoRA adapters of a structural copy of the LLM, on stage 2's examples with the text prompt."""

    name = "TALLRec"
    format = FORMAT

    def __init__(self, dataset: SequenceDataset, llm: nn.Module, tokenizer: Any, config: TallrecConfig, out_dir: Path | None = None) -> None:
        _check_frozen(llm)
        self.out_dir = out_dir
        self.dataset, self.llm, self.tokenizer, self.config = dataset, llm, tokenizer, config
        self.device = llm.get_input_embeddings().weight.device
        self.ids = {"llm": llm_identity(llm), "dataset": dataset_fingerprint(dataset)}
        self.examples = Examples(dataset, config.examples_config())
        self.peft_model = _lora_model(llm, config)
        self.params = _lora_params(self.peft_model)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        self.titles = display_titles(dataset.titles, tokenizer, config.max_title_tokens)
        self.prompt = config.prompt_config()
        self.model = self.peft_model.base_model.model  # LoRA layers injected; its base_model is the transformer body
        self.meta = {"format": FORMAT, "tallrec": dataclasses.asdict(config), "prompt": dataclasses.asdict(self.prompt), "identity": self.ids}

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.config.batch_size)

    def identity(self) -> dict[str, Any]:
        return {"tallrec": dataclasses.asdict(self.config), **self.ids}

    def check_resume(self, saved: dict[str, Any], where: Path) -> None:
        _check_identities(saved, self.ids, where)
        check_resumable(saved.get("tallrec", {}), self.config, where, "TALLRec")

    def trained_state(self) -> dict[str, torch.Tensor]:
        return _lora_state(self.peft_model)

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        _load_lora_state(self.peft_model, {k: v.to(self.device) for k, v in tensors.items()}, "checkpoint")

    def start_epoch(self, epoch: int) -> None:
        self.order, self.cands = self.examples.plan(epoch)
        self.model.train()  # LoRA dropout (the LLM's own dropout rates are those of its config)

    def step(self, epoch: int, index: int) -> float:
        ex, bs = self.examples, self.config.batch_size
        rows = self.order[index * bs : (index + 1) * bs]
        prompts = [build_prompt(ex.histories[r], self.cands[r], self.titles, self.dataset.wording, self.prompt, int(ex.targets[r])) for r in rows]
        batch = splice(prompts, self.tokenizer, self.model.get_input_embeddings(), None, targets=[p.target for p in prompts], padding_side="right")
        step = epoch * self.steps_per_epoch() + index
        # The dropout masks of a step depend on (seed, step) only: exact resume.
        with _seeded(torch_seed(self.config.seed, "tallrec-dropout", step), self.device):
            loss = target_loss(self.model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"TALLRec: non-finite loss {loss.item()} at step {step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        """Hit@1 / NDCG@10 on the held-out users' validation items (``valid_users``), the LoRA
        model ranking the stored candidates by title likelihood, as at inference."""
        held_out = curve_users(self.dataset, self.examples.config)
        if len(held_out) == 0:
            return {}
        self.model.eval()
        reader = PromptReader(self.model, self.tokenizer, self.dataset.titles, self.dataset.wording, self.prompt, seed=self.config.seed)
        scores = reader.score(Queries.from_split(self.dataset, "valid", held_out))
        self.model.train()
        return ranking_metrics(target_ranks(scores))

    def finish(self, state: dict[str, Any]) -> None:
        """Write the final LoRA weights + ``model.json`` (before the loop's ``done.json``)."""
        self.state = state
        state["step_seconds"] = state["seconds"] / state["step"] if state["step"] else 0.0
        state["trainable_params"] = int(sum(p.numel() for p in self.params))
        self.final_meta = {**self.meta, "state": {"step": state["step"], "seconds": state["seconds"]}}
        if self.out_dir is not None:
            save_tensors(self.out_dir / "model.safetensors", _lora_state(self.peft_model), metadata={"format": FORMAT, "step": str(state["step"])})
            write_json(self.out_dir / "model.json", {**self.final_meta, "trainer_state": state})


def train_tallrec(
    dataset: SequenceDataset,
    llm: nn.Module,
    tokenizer: Any,
    config: TallrecConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune LoRA adapters of (a copy of) ``llm`` on A-LLMRec's stage-2 examples, text prompt.

    Parameters
    ----------
    dataset : SequenceDataset
    llm, tokenizer : from :func:`allmrec.llm.load_llm` (frozen; left unchanged).
    config : TallrecConfig
    out_dir : path, optional
        Run folder for checkpoints and the final LoRA weights (``None``: nothing saved).
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (refused if it was made for another
        LLM, dataset or config, naming the differing field); ``False`` starts over.
    progress : bool
        Show a progress bar.

    Returns
    -------
    (model, state)
        ``model``: the inference model (see :func:`tallrec_inference_model`, unmerged);
        ``state``: ``step``, ``seconds`` (training wall time, all sessions of a resumed run,
        setup and evaluation excluded), ``step_seconds`` (``seconds / step``), ``loss_log``
        (``[step, mean loss]`` every ``log_every`` steps), ``epoch_loss``, ``trainable_params``.
    """
    config = config or TallrecConfig()
    out = Path(out_dir) if out_dir is not None else None
    task = TallrecTask(dataset, llm, tokenizer, config, out)
    options = LoopOptions(epochs=config.epochs, max_steps=config.max_steps, checkpoint_every=config.checkpoint_every,
                          keep_checkpoints=config.keep_checkpoints, log_every=config.log_every,
                          validate_every_steps=config.eval_every if config.valid_users else 0, progress=progress)
    state = run_training(task, options, out, resume=resume)
    return _finish(task.peft_model, llm, task.final_meta, merge=False), state


def load_tallrec(path: str | Path, llm: nn.Module, *, merge: bool = False) -> nn.Module:
    """Load LoRA weights saved by :func:`train_tallrec` onto (a copy of) ``llm``.

    Parameters
    ----------
    path : a run folder (its final ``model.json`` + ``model.safetensors``).
    llm : the frozen base LLM the adapters were trained on (checked by identity; left unchanged).
    merge : see :func:`tallrec_inference_model`.

    Returns
    -------
    The frozen, eval-mode inference model (prompt: :func:`tallrec_prompt_config`).
    """
    path = Path(path)
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path}: no TALLRec model here (expected model.json + model.safetensors)")
    meta = read_json(path / "model.json")
    weights = path / "model.safetensors"
    meta.pop("trainer_state", None)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: not found")
    try:
        config = TallrecConfig(**meta["tallrec"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: field 'tallrec' is not a valid TallrecConfig ({err})") from None
    check_weights_counter(weights, "step", (meta.get("state") or {}).get("step"))
    _check_identities(meta.get("identity", {}), {"llm": llm_identity(llm)}, path)
    meta["prompt"] = dataclasses.asdict(config.prompt_config())
    return tallrec_inference_model(llm, load_tensors(weights), config, merge=merge, meta=meta)
