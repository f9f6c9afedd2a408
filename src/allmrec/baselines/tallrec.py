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
:func:`allmrec.recommend.evaluate_llm` expects (``base_model`` is the transformer body, the KV
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
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from allmrec.align.stage2 import Stage2Config, dataset_fingerprint, epoch_plan, example_history, example_target, training_users
from allmrec.data.dataset import SequenceDataset
from allmrec.llm.loading import llm_identity
from allmrec.llm.prompt import PromptConfig, build_prompt, display_titles
from allmrec.llm.scoring import target_loss
from allmrec.llm.splice import splice
from allmrec.utils.checkpoints import check_resumable, clear_run, latest_checkpoint, record_step, save_step_checkpoint
from allmrec.utils.fingerprint import state_fingerprint
from allmrec.utils.io import load_tensors, optimizer_from_tensors, read_json, save_tensors, write_json
from allmrec.utils.seed import rng

log = logging.getLogger(__name__)

FORMAT = "allmrec-tallrec/1"
# Options that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = {"epochs", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every"}


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
    checkpoint_every, keep_checkpoints, log_every :
        Checkpoint period (steps), checkpoint folders kept, steps per loss-log entry.
    """

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lr: float = 3e-4
    batch_size: int = 4
    epochs: int = 1
    max_steps: int | None = None
    max_train_users: int | None = None
    history_len: int = 10
    n_candidates: int = 20
    max_title_tokens: int = 16
    seed: int = 42
    checkpoint_every: int = 500
    keep_checkpoints: int = 1
    log_every: int = 10

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
        for name in ("max_steps", "max_train_users"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TallrecConfig.{name} must be None or an integer >= 1, got {value!r}")
        if self.max_title_tokens < 0:
            raise ValueError(f"TallrecConfig.max_title_tokens must be >= 0, got {self.max_title_tokens}")

    def stage2_config(self) -> Stage2Config:
        """The stage-2 config whose examples (users, targets, candidates, order) TALLRec trains on."""
        return Stage2Config(
            batch_size=self.batch_size,
            epochs=self.epochs,
            max_steps=self.max_steps,
            max_train_users=self.max_train_users,
            history_len=self.history_len,
            n_candidates=self.n_candidates,
            max_title_tokens=self.max_title_tokens,
            seed=self.seed,
            train_target="train",
        )

    def prompt_config(self) -> PromptConfig:
        """The text-only prompt used for training and inference."""
        return PromptConfig(style="text", history_len=self.history_len, max_title_tokens=self.max_title_tokens)

    def lora_config(self) -> Any:
        """The ``peft.LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM"
        )


# ---- the LoRA copy of the shared LLM ------------------------------------------------------------
def _torch_seed(seed: int, *stream: int | str) -> int:
    return int(rng(seed, *stream).integers(0, 2**63 - 1))


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
    with _seeded(_torch_seed(config.seed, "tallrec-init"), device), warnings.catch_warnings():
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
    A frozen, eval-mode causal LM for :func:`allmrec.recommend.evaluate_llm` (prompt:
    :func:`tallrec_prompt_config`).
    """
    _check_frozen(llm)
    peft_model = _lora_model(llm, config, deep=merge)
    device = llm.get_input_embeddings().weight.device
    _load_lora_state(peft_model, {k: v.to(device) for k, v in lora.items()}, "LoRA tensors")
    base_meta = {"format": FORMAT, "tallrec": dataclasses.asdict(config), "prompt": dataclasses.asdict(config.prompt_config())}
    return _finish(peft_model, llm, {**base_meta, **(meta or {})}, merge)


def tallrec_prompt_config(model: nn.Module) -> PromptConfig:
    """The text-only prompt a TALLRec model was trained with (pass it to ``evaluate_llm``)."""
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
        Show a tqdm bar.

    Returns
    -------
    (model, state)
        ``model``: the inference model (see :func:`tallrec_inference_model`, unmerged);
        ``state``: ``step``, ``seconds`` (training wall time, all sessions of a resumed run,
        setup and evaluation excluded), ``step_seconds`` (``seconds / step``), ``loss_log``
        (``[step, mean loss]`` every ``log_every`` steps), ``epoch_loss``, ``trainable_params``.
    """
    from tqdm.auto import tqdm

    config = config or TallrecConfig()
    _check_frozen(llm)
    s2 = config.stage2_config()
    prompt_cfg = config.prompt_config()
    device = llm.get_input_embeddings().weight.device
    identities = {"llm": llm_identity(llm), "dataset": dataset_fingerprint(dataset)}
    users = training_users(dataset, s2)
    if len(users) == 0:
        raise ValueError(f"dataset {dataset.name!r}: no training user has >= 2 training items")
    steps_per_epoch = math.ceil(len(users) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)

    peft_model = _lora_model(llm, config)
    params = _lora_params(peft_model)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    state: dict[str, Any] = {"format": FORMAT, "step": 0, "epoch_loss": {}, "loss_log": [], "seconds": 0.0}
    meta = {"format": FORMAT, "tallrec": dataclasses.asdict(config), "prompt": dataclasses.asdict(prompt_cfg), "identity": identities}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if not resume:
            clear_run(out, ("model.json", "model.safetensors", "config.json"))
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            saved = read_json(ckpt / "trainer_state.json")
            _check_identities(saved.get("identity", {}), identities, ckpt)
            check_resumable(saved.get("tallrec", {}), config, RESUMABLE_FIELDS, ckpt, "TALLRec")
            _load_lora_state(peft_model, load_tensors(ckpt / "lora.safetensors", device=device), ckpt / "lora.safetensors")
            opt.load_state_dict(optimizer_from_tensors(load_tensors(ckpt / "optimizer.safetensors", device=device), saved["optimizer"]))
            state = {k: saved[k] for k in ("format", "step", "epoch_loss", "loss_log", "seconds")}
            log.info("TALLRec: resuming from %s (step %d of %d)", ckpt, state["step"], total)
        write_json(out / "config.json", meta)
        if state["step"] < total:
            # The folder's final model (if any) is about to be superseded: drop it so nobody reuses it.
            (out / "model.json").unlink(missing_ok=True)

    titles = display_titles(dataset.titles, tokenizer, config.max_title_tokens)
    histories = [example_history(dataset, u, s2) for u in users]
    targets = np.array([example_target(dataset, u, s2) for u in users], dtype=np.int64)
    model = peft_model.base_model.model  # LoRA layers injected; its base_model is the transformer body
    embedding = model.get_input_embeddings()
    model.train()  # LoRA dropout (the LLM's own dropout rates are those of its config)

    def save() -> None:
        if out is not None:
            save_step_checkpoint(out, "lora.safetensors", _lora_state(peft_model), opt, {**state, "identity": identities, "tallrec": dataclasses.asdict(config)},
                                 config.keep_checkpoints, FORMAT)

    bar = tqdm(total=total, initial=state["step"], desc="TALLRec", disable=not progress, dynamic_ncols=True)
    window: list[float] = []
    started = time.perf_counter() - float(state["seconds"])
    try:
        while state["step"] < total:
            epoch, within = divmod(state["step"], steps_per_epoch)
            order, cands = epoch_plan(dataset, users, s2, epoch)
            for i in range(within, steps_per_epoch):
                if state["step"] >= total:
                    break
                rows = order[i * config.batch_size : (i + 1) * config.batch_size]
                prompts = [build_prompt(histories[r], cands[r], titles, dataset.wording, prompt_cfg, int(targets[r])) for r in rows]
                batch = splice(prompts, tokenizer, embedding, None, targets=[p.target for p in prompts], padding_side="right")
                # The dropout masks of a step depend on (seed, step) only: exact resume.
                with _seeded(_torch_seed(config.seed, "tallrec-dropout", state["step"]), device):
                    loss = target_loss(model, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"TALLRec: non-finite loss {loss.item()} at step {state['step']}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                value = float(loss.detach())
                record_step(state, window, epoch, value, config.log_every, total)
                state["seconds"] = time.perf_counter() - started
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.3f}")
                if state["step"] % config.checkpoint_every == 0 and state["step"] < total:
                    save()
    finally:
        bar.close()
    state["seconds"] = time.perf_counter() - started
    state["step_seconds"] = state["seconds"] / state["step"] if state["step"] else 0.0
    state["trainable_params"] = int(sum(p.numel() for p in params))
    if out is not None:
        save()
        lora = _lora_state(peft_model)
        save_tensors(out / "model.safetensors", lora, metadata={"format": FORMAT, "step": str(state["step"])})
        write_json(out / "model.json", {**meta, "state": {"step": state["step"], "seconds": state["seconds"]}, "trainer_state": state})
    result = _finish(peft_model, llm, {**meta, "state": {"step": state["step"], "seconds": state["seconds"]}}, merge=False)
    return result, state


def load_tallrec(path: str | Path, llm: nn.Module, *, merge: bool = False) -> nn.Module:
    """Load LoRA weights saved by :func:`train_tallrec` onto (a copy of) ``llm``.

    Parameters
    ----------
    path : a run folder (its final ``model.json`` + ``model.safetensors``) or a checkpoint folder.
    llm : the frozen base LLM the adapters were trained on (checked by identity; left unchanged).
    merge : see :func:`tallrec_inference_model`.

    Returns
    -------
    The frozen, eval-mode inference model (prompt: :func:`tallrec_prompt_config`).
    """
    path = Path(path)
    if (path / "model.json").exists():
        meta = read_json(path / "model.json")
        weights = path / "model.safetensors"
        meta.pop("trainer_state", None)
    elif (path / "trainer_state.json").exists():
        saved = read_json(path / "trainer_state.json")
        for key in ("tallrec", "identity", "step"):
            if key not in saved:
                raise ValueError(f"{path / 'trainer_state.json'}: missing field {key!r}; not a TALLRec checkpoint")
        meta = {"format": FORMAT, "tallrec": saved["tallrec"], "identity": saved["identity"], "state": {"step": saved["step"]}}
        weights = path / "lora.safetensors"
    else:
        raise FileNotFoundError(f"{path}: no TALLRec model here (expected model.json + model.safetensors, or a checkpoint folder)")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: not found")
    try:
        config = TallrecConfig(**meta["tallrec"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: field 'tallrec' is not a valid TallrecConfig ({err})") from None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        saved_step = (fh.metadata() or {}).get("step")
    meta_step = (meta.get("state") or {}).get("step")
    if saved_step is not None and meta_step is not None and int(saved_step) != int(meta_step):
        raise ValueError(f"{weights}: holds step {saved_step} but its description says step {meta_step} (interrupted write?)")
    _check_identities(meta.get("identity", {}), {"llm": llm_identity(llm)}, path)
    meta["prompt"] = dataclasses.asdict(config.prompt_config())
    return tallrec_inference_model(llm, load_tensors(weights), config, merge=merge, meta=meta)
