"""Train stage 2 (on :func:`allmrec.training.run_training`): ``F_U`` and ``F_I`` with the frozen
LLM (paper eq. 8, objective ``lm``), or the listwise head on the LLM's hidden states.

* ``lm``: mean negative log-likelihood of the target answer tokens (`` "title"`` + EOS) only.
* ``listwise``: cross-entropy of the true candidate among the shown ones
  (:mod:`allmrec.align.stage2.listwise`). With frozen projectors nothing before the head trains:
  the LLM's states of each training example are computed once (epoch 0's candidates are kept for
  later epochs) and reused, so extra epochs cost only the head; they are saved in
  ``llm_states.safetensors`` once complete, so a resumed run skips the LLM.

The run folder holds the loop's checkpoints and the final ``model.safetensors`` + ``model.json``
(:mod:`allmrec.align.stage2.io`). The epoch plan derives from ``(seed, epoch)`` and the LLM runs
without dropout, so a run resumed from any saved step continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from allmrec import distributed
from allmrec.align.stage2.config import Stage2Config
from allmrec.align.stage2.examples import Examples, curve_users
from allmrec.align.stage2.io import FORMAT, check_identities, identities, save_stage2
from allmrec.align.stage2.listwise import listwise_loss, standardize
from allmrec.align.stage2.model import Stage2Model
from allmrec.align.stage2.scoring import Stage2Scorer
from allmrec.cf.base import CFBackbone
from allmrec.config import check_resumable, resumable_fields
from allmrec.data.dataset import SequenceDataset
from allmrec.data.queries import Queries
from allmrec.eval.metrics import paired_bootstrap, ranking_metrics, target_ranks
from allmrec.llm.loading import DTYPES, hidden_size
from allmrec.llm.prompt import build_prompt, display_titles
from allmrec.llm.reader import PromptReader
from allmrec.llm.scoring import target_loss
from allmrec.llm.splice import splice
from allmrec.training import LoopOptions, TrainingTask, run_training
from allmrec.utils.fingerprint import strings_fingerprint
from allmrec.utils.io import load_tensors, save_tensors, tensors_metadata


class _StateCache:
    """The LLM states of every training example (frozen projectors), kept on disk once complete."""

    def __init__(self, path: Path | None, key: str, users: np.ndarray) -> None:
        self.path, self.key, self.users = path, key, users
        self.rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if path is not None and path.exists():
            same = tensors_metadata(path).get("key") == key
            saved = load_tensors(path) if same else {}
            if same and torch.equal(saved["users"], torch.as_tensor(users)):
                for k, r in enumerate(saved["rows"].tolist()):
                    self.rows[int(r)] = (saved["h_cand"][k], saved["h_last"][k])

    def save(self) -> None:
        if self.path is None or self.path.exists() or len(self.rows) < len(self.users):
            return
        rows = sorted(self.rows)
        save_tensors(self.path, {"rows": torch.as_tensor(rows), "users": torch.as_tensor(self.users),
                                 "h_cand": torch.stack([self.rows[r][0] for r in rows]), "h_last": torch.stack([self.rows[r][1] for r in rows])},
                     metadata={"key": self.key})


def calibrated_loglik(scores: torch.Tensor) -> torch.Tensor:
    """Per-row log-likelihood of column 0 under ``softmax(t * standardize(scores))`` with the
    temperature ``t`` that fits these rows best (a prior's scale is arbitrary; choosing ``t`` on
    the same rows favours the prior, so an LLM path that still beats it gains something real)."""
    z = standardize(torch.as_tensor(scores, dtype=torch.float64))
    candidates = [torch.log_softmax(t * z, 1)[:, 0] for t in torch.logspace(-2, 1, 61, dtype=torch.float64)]
    return max(candidates, key=lambda ll: float(ll.mean()))


class Stage2Task(TrainingTask):
    name = "stage 2"
    format = FORMAT

    def __init__(self, dataset: SequenceDataset, cf_model: CFBackbone, joint_items: torch.Tensor, llm: nn.Module, tokenizer: Any,
                 config: Stage2Config, out_dir: Path | None, prior: Any = None) -> None:
        if joint_items.dim() != 2 or joint_items.shape[0] != dataset.n_items + 1:
            raise ValueError(f"joint_items must have shape (n_items + 1, d') = ({dataset.n_items + 1}, d'), got {tuple(joint_items.shape)}")
        self.dataset, self.cf, self.llm, self.tokenizer, self.config = dataset, cf_model, llm, tokenizer, config
        self.train_cfg, self.model_cfg = config.train, config.model
        self.device = llm.get_input_embeddings().weight.device
        self.ids = identities(dataset, cf_model, joint_items, llm)
        uses_prior = config.model.residual and config.model.prior == "fusion"
        if uses_prior and prior is None:
            raise ValueError("stage2.model.prior is 'fusion' but no fitted fusion was given (run `allmrec fuse` first, or use stage2.mode: cf-residual)")
        self.prior = prior if uses_prior else None
        if self.prior is not None:
            self.ids["prior"] = self.prior.identity()
        self.examples = Examples(dataset, self.train_cfg)
        soft_norm = float(llm.get_input_embeddings().weight.detach().float().norm(dim=-1).mean()) if self.model_cfg.soft_norm else None
        self.model = Stage2Model(cf_model.dim, joint_items.shape[1], hidden_size(llm), self.model_cfg, seed=self.train_cfg.seed, soft_norm=soft_norm)
        self.model.to(device=self.device, dtype=DTYPES[self.model_cfg.dtype])
        if not self.train_cfg.train_projectors:
            self.model.user_proj.requires_grad_(False)
            self.model.item_proj.requires_grad_(False)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.train_cfg.lr, betas=(0.9, 0.98))
        self.model.meta = {"format": FORMAT, "stage2": dataclasses.asdict(config), "prompt": dataclasses.asdict(self.model_cfg.prompt_config()),
                           "identity": self.ids}
        self.joint = joint_items.detach().to(self.device)
        self.scorer = Stage2Scorer(self.model, self.joint, cf_model, self.train_cfg.cf_batch_size, self.prior)
        self.titles = display_titles(dataset.titles, tokenizer, self.model_cfg.max_title_tokens)
        self.listwise = self.model_cfg.objective == "listwise"
        self.cached = self.listwise and not self.train_cfg.train_projectors
        self.out_dir = out_dir
        self._prepared = False
        self._validation: dict[str, Any] = {}

    # ---- bookkeeping -------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return -(-len(self.examples) // self.train_cfg.batch_size)

    def identity(self) -> dict[str, Any]:
        return {"stage2": dataclasses.asdict(self.config), **self.ids}

    def check_resume(self, saved: dict[str, Any], where: Path) -> None:
        check_identities(saved, self.ids, where)
        old = saved.get("stage2", {})
        if old.get("mode") != self.config.mode or old.get("model") != dataclasses.asdict(self.model_cfg):
            raise ValueError(f"{where}: cannot resume, the stage-2 mode or model options differ ({old.get('mode')!r} {old.get('model')} vs now "
                             f"{self.config.mode!r} {dataclasses.asdict(self.model_cfg)}). Use another out_dir, or resume=False to start over.")
        check_resumable(old.get("train", {}), self.train_cfg, where, "stage-2 training")

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k: v.to(self.device) for k, v in tensors.items()})

    # ---- training ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """The frozen inputs of every example: ``x^u`` and, when cached, epoch 0's candidates
        with their CF scores and the LLM states saved by an earlier session."""
        if self._prepared:
            return
        ex, cfg = self.examples, self.train_cfg
        self.x_u = self.scorer.user_reps(ex.users, ex.histories)
        self.llm.eval()
        if self.cached:
            self.fixed_order, self.fixed_cands = ex.plan(0)
            bs = cfg.batch_size
            self._batch_of = {int(r): k // bs for k, r in enumerate(self.fixed_order)}
            self.fixed_cf = self.scorer.base_scores(ex.users, ex.histories, self.fixed_cands)
            fixed = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in resumable_fields(type(cfg))}  # how long it trains does not matter
            key = strings_fingerprint([repr(sorted(self.ids.items())), repr(sorted(fixed.items())),
                                       repr(sorted(dataclasses.asdict(self.model_cfg).items()))])
            self.states = _StateCache(self.out_dir / "llm_states.safetensors" if self.out_dir is not None else None, key, ex.users)
        self._prepared = True
        self.model.train()

    def start_epoch(self, epoch: int) -> None:
        self._prepare()
        self.order, self.cands = self.examples.plan(epoch)
        if self.cached:
            self.cands = self.fixed_cands  # the cached LLM states are those of epoch 0's candidates

    def _prompts(self, rows: np.ndarray, cands: np.ndarray) -> list:
        ex = self.examples
        return [build_prompt(ex.histories[r], cands[r], self.titles, self.dataset.wording, self.model_cfg.prompt_config(), int(ex.targets[r]))
                for r in rows]

    def _compute_states(self, batch: int) -> None:
        """The LLM states of epoch 0's batch ``batch``. States are always computed in epoch 0's
        batches (the same padding, the same numbers) whichever session needs them: an
        uninterrupted run in epoch 0, or a run resumed mid-epoch for the batches before its checkpoint."""
        bs = self.train_cfg.batch_size
        rows = self.fixed_order[batch * bs : (batch + 1) * bs]
        with torch.no_grad():
            hc, hl = self.model.listwise_states(self.llm, self.tokenizer, self._prompts(rows, self.fixed_cands), self.x_u[rows].to(self.device), self.joint)
        for j, r in enumerate(rows):
            self.states.rows[int(r)] = (hc[j].cpu(), hl[j].cpu())

    def _cached_states(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        for batch in sorted({self._batch_of[int(r)] for r in rows if int(r) not in self.states.rows}):
            self._compute_states(batch)
        h_cand = torch.stack([self.states.rows[int(r)][0] for r in rows]).to(self.device)
        h_last = torch.stack([self.states.rows[int(r)][1] for r in rows]).to(self.device)
        return h_cand, h_last

    def _listwise_loss(self, rows: np.ndarray, prompts: list) -> torch.Tensor:
        ex = self.examples
        if self.cached:
            h_cand, h_last = self._cached_states(rows)
            cf = self.fixed_cf[rows] if self.fixed_cf is not None else None
        else:
            h_cand, h_last = self.model.listwise_states(self.llm, self.tokenizer, prompts, self.x_u[rows].to(self.device), self.joint)
            cf = self.scorer.base_scores(ex.users[rows], [ex.histories[r] for r in rows], self.cands[rows])
        scores = self.model.score_states(h_cand, h_last, cf)
        return listwise_loss(scores, torch.as_tensor((self.cands[rows] == ex.targets[rows, None]).argmax(1)))

    def step(self, epoch: int, index: int) -> float:
        bs = self.train_cfg.batch_size
        rows = self.order[index * bs : (index + 1) * bs]
        rows = rows[distributed.local_rows(len(rows))]  # this process's rows of the global batch (all of them on one)

        def compute():
            if not len(rows):
                return None, 0.0, ()
            prompts = self._prompts(rows, self.cands)
            if self.listwise:
                loss, count = self._listwise_loss(rows, prompts), float(len(rows))
            else:
                soft = self.model.soft_vectors(prompts, self.x_u[rows].to(self.device), self.joint)
                batch = splice(prompts, self.tokenizer, self.llm.get_input_embeddings(), soft, targets=[p.target for p in prompts], padding_side="right")
                loss, count = target_loss(self.llm, batch), float((batch.labels[:, 1:] != -100).sum())  # a token mean: tokens weigh
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage 2: non-finite loss {loss.item()}")
            return loss, count, ()

        return distributed.step(self.optimizer, compute)[0]

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        if self.cached and distributed.is_main():  # complete after epoch 0 (a run resumed mid-epoch computes the batches it lost), then saved
            for batch in sorted({self._batch_of[r] for r in self._batch_of if r not in self.states.rows}):
                self._compute_states(batch)
            self.states.save()
        return {}

    # ---- the learning curve (held-out training users' validation items) ------------------------
    def validate(self) -> dict[str, float]:
        held_out = curve_users(self.dataset, self.train_cfg)
        if len(held_out) == 0:
            return {}
        self.model.eval()
        queries = Queries.from_split(self.dataset, "valid", held_out)
        if self.cached:
            scores = self._cached_validation(queries)
        else:
            reader = PromptReader(self.llm, self.tokenizer, self.dataset.titles, self.dataset.wording, self.model.prompt_config(), self.scorer,
                                  seed=self.train_cfg.seed)
            scores = reader.score(queries)
        self.model.train()
        return ranking_metrics(target_ranks(scores))

    @torch.no_grad()
    def _cached_validation(self, queries: Queries) -> np.ndarray:
        """Scores from the held-out users' LLM states, computed once (frozen projectors), with the
        candidates shown as :class:`~allmrec.llm.reader.PromptReader` shows them."""
        v = self._validation
        if not v:
            reader = PromptReader(self.llm, self.tokenizer, self.dataset.titles, self.dataset.wording, self.model.prompt_config(), self.scorer,
                                  seed=self.train_cfg.seed)
            v["perms"], shown = reader.shown(queries)
            xv = self.scorer.user_reps(queries.users, queries.histories)
            states = [self.model.listwise_states(self.llm, self.tokenizer, reader.prompts(queries, shown, [k]), xv[k : k + 1].to(self.device), self.joint)
                      for k in range(len(queries))]
            v["h_cand"] = torch.stack([s[0][0].cpu() for s in states])
            v["h_last"] = torch.stack([s[1][0].cpu() for s in states])
            v["cf"] = self.scorer.base_scores(queries.users, queries.histories, shown)
        shown_scores = self.model.score_states(v["h_cand"].to(self.device), v["h_last"].to(self.device), v["cf"]).float().cpu().numpy()
        scores = np.empty_like(shown_scores)
        np.put_along_axis(scores, v["perms"], shown_scores, 1)
        return scores

    def llm_path_check(self) -> dict[str, Any]:
        """Whether the LLM path beats the prior alone on the held-out users' validation items:
        the paired-bootstrap interval of the per-user gain in log-likelihood of the target over
        the prior at its best temperature (``llm_path: auto`` keeps the path only when the lower
        bound is above 0)."""
        held_out = curve_users(self.dataset, self.train_cfg)
        if not self.model_cfg.residual or len(held_out) == 0:
            return {"checked": False, "adopted": True, "why": "no residual prior or no held-out users (stage2.train.valid_users)"}
        self.model.eval()
        queries = Queries.from_split(self.dataset, "valid", held_out)
        if self.cached:
            with_llm = self._cached_validation(queries)
        else:
            with_llm = PromptReader(self.llm, self.tokenizer, self.dataset.titles, self.dataset.wording, self.model.prompt_config(), self.scorer,
                                    seed=self.train_cfg.seed).score(queries)
        base = self.scorer.base_scores(queries.users, queries.histories, queries.candidates)
        with_llm_loglik = torch.log_softmax(torch.as_tensor(with_llm, dtype=torch.float64), 1)[:, 0]
        gain = paired_bootstrap(with_llm_loglik.numpy(), calibrated_loglik(base).numpy(), seed=self.train_cfg.seed)
        adopted = self.model_cfg.llm_path == "always" or gain["low"] > 0
        return {"checked": True, "adopted": bool(adopted), "loglik_gain": gain, "prior": self.model_cfg.prior,
                "hit@1": {"with_llm": float((target_ranks(with_llm) == 0).mean()), "prior": float((target_ranks(base) == 0).mean())}}

    def finish(self, state: dict[str, Any]) -> None:
        self.model.eval()
        if self.listwise:
            self.model.meta["llm_path"] = self.llm_path_check()
        self.model.meta.update(trainer_state=state)
        if self.out_dir is not None and distributed.is_main():
            save_stage2(self.model, self.out_dir, step=state["step"])
        distributed.barrier()


def train_stage2(dataset: SequenceDataset, cf_model: CFBackbone, joint_items: torch.Tensor, llm: nn.Module, tokenizer: Any,
                 config: Stage2Config | None = None, out_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
                 prior: Any = None) -> tuple[Stage2Model, dict[str, Any]]:
    """Train stage 2.

    Parameters
    ----------
    dataset : SequenceDataset
    cf_model : the frozen CF backbone; gives ``x^u`` (and the residual's scores).
    joint_items : (n_items + 1, d') tensor of frozen joint item embeddings (row 0 = padding).
    llm, tokenizer : from :func:`allmrec.llm.load_llm` (frozen).
    config : :class:`Stage2Config` (default: the best mode).
    out_dir : run folder for checkpoints and the final model (``None``: nothing saved).
    resume : continue from the newest checkpoint in ``out_dir`` (refused if it was made for another
        LLM, CF model, joint table, dataset or config); ``False`` starts over.
    progress : show a progress bar.
    prior : the fitted fusion (:class:`allmrec.fusion.FusedScorer`) a ``prior: fusion`` model
        adds its LLM path to.

    Returns
    -------
    (model, state) : the trained :class:`Stage2Model` (``model.meta`` holds the config and
        identities) and the trainer state (``step``, ``epoch_loss``, ``loss_log``, ``curve``,
        ``seconds``).
    """
    config = config or Stage2Config()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and not resume:
        for name in ("model.json", "model.safetensors", "llm_states.safetensors"):
            (out / name).unlink(missing_ok=True)
    task = Stage2Task(dataset, cf_model, joint_items, llm, tokenizer, config, out, prior)
    t = config.train
    options = LoopOptions(epochs=t.epochs, max_steps=t.max_steps, checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
                          log_every=t.log_every, validate_every_steps=t.eval_every if t.valid_users else 0, progress=progress)
    state = run_training(task, options, out, resume=resume)
    return task.model, state
