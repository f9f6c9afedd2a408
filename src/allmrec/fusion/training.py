"""Fitting a fusion on a run: the text tower, the candidate features of the fitting users, the
nets (one per seed, on :func:`allmrec.training.run_training` with early stopping) and the
popularity offset ``beta``.

Every choice is made on the **validation items of training users** (the CF model and the tower
were trained on ``seq[:-2]``, so those items are out of sample for both), never on test users;
stage 2's held-out users (``stage2.train.valid_users``, which check its LLM path) and, when stage
2 trains on a sample of users, that sample are left out, so a stage 2 trained on top of the
fusion sees fusion scores of users the fusion was not fitted on.

``beta`` is the cold/warm operating point: the value of ``betas`` that maximises the mean of
Hit@1 over all early-stopping users, those whose target is a cold item and those whose target
is a warm item (:func:`allmrec.data.scenarios.item_groups`), the three groups the paper's
all-round claim is about.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from allmrec.data.queries import Queries
from allmrec.data.scenarios import item_groups
from allmrec.fusion.features import FeatureSources, zscore
from allmrec.fusion.model import Design, Fusion
from allmrec.fusion.scorer import FusedScorer
from allmrec.fusion.tower import TowerConfig
from allmrec.training import DONE, LoopOptions, TrainingTask, run_training
from allmrec.utils.io import clear_temporary, write_json
from allmrec.utils.seed import rng

GATES = ["logpop", "u_len", "u_margin", "u_ent"]
SIMILARITIES = ["dmean", "last", "max", "mean"]
EXPERTS = ("cf", "tower")
TABLES = ("text", "stage1_q", "stage1_e")


@dataclass
class FusionConfig:
    """How a fusion is fitted (defaults: the all-round recipe of docs/allround.md).

    kind : ``mlp`` (weights gated per candidate plus a 2 x ``width`` MLP), ``gated`` or ``linear``.
    experts : scorers whose z-scored scores enter (``cf``: the run's CF model, first; ``tower``).
    tables : item tables whose similarities to the history enter (``text``: the frozen text
        encoder; ``stage1_q`` / ``stage1_e``: stage 1's text and joint embeddings).
    similarities : which of ``dmean``, ``last``, ``max``, ``mean`` of each table.
    gates : per-candidate / per-user inputs that gate the expert weights.
    seeds : nets fitted with seeds ``seed .. seed + seeds - 1`` and averaged.
    betas : candidate popularity offsets; ``[0.0]`` keeps the nets' ranking.
    es_fraction : share of the fitting users whose loss stops training and chooses ``beta``.
    max_users : fit on a seeded sample of this many users (``None``: all).
    """

    kind: str = "mlp"
    experts: list[str] = field(default_factory=lambda: list(EXPERTS))
    tables: list[str] = field(default_factory=lambda: list(TABLES))
    similarities: list[str] = field(default_factory=lambda: list(SIMILARITIES))
    gates: list[str] = field(default_factory=lambda: list(GATES))
    width: int = 64
    seeds: int = 3
    betas: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
    es_fraction: float = 0.1
    max_users: int | None = None
    lr: float | None = None  # None: 3e-3 for the MLP, 2e-2 otherwise
    batch_size: int = 512
    max_epochs: int = 200
    patience: int = 8
    seed: int = 0
    tower: TowerConfig = field(default_factory=TowerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.tower, dict):
            self.tower = TowerConfig(**self.tower)
        if self.kind not in ("linear", "gated", "mlp"):
            raise ValueError(f"fusion.kind must be linear, gated or mlp, got {self.kind!r}")
        if not self.experts or self.experts[0] != "cf":
            raise ValueError(f"fusion.experts must start with 'cf' (training starts at the CF ranking), got {self.experts}")
        unknown = sorted(set(self.experts) - set(EXPERTS)) + sorted(set(self.tables) - set(TABLES)) + sorted(set(self.similarities) - set(SIMILARITIES))
        if unknown:
            raise ValueError(f"fusion: unknown experts/tables/similarities {unknown}; known {list(EXPERTS)}, {list(TABLES)}, {SIMILARITIES}")
        if self.seeds < 1 or not self.betas or not 0 < self.es_fraction < 1:
            raise ValueError("fusion: seeds must be >= 1, betas non-empty and es_fraction in (0, 1)")

    def design(self) -> Design:
        sims = [f"{t}_{s}" for t in self.tables for s in self.similarities]
        raw = sims + [e for e in self.experts if e == "tower"] if self.kind == "mlp" else []
        return Design(self.experts + sims, self.gates if self.kind != "linear" else [], raw)


def control_config(**overrides: Any) -> FusionConfig:
    """The control of method.md: the CF score plus two similarities in the frozen text encoder's
    table, linearly (no LLM, no stage 1, no popularity offset): "SASRec + text (no LLM)"."""
    values = dict(kind="linear", experts=["cf"], tables=["text"], similarities=["dmean", "last"], gates=[], seeds=1, betas=[0.0])
    return FusionConfig(**{**values, **overrides})


class FusionTask(TrainingTask):
    """One net's listwise fit (truth in column 0 of every row; scores are per candidate, so the
    column carries nothing), keeping the epoch with the best early-stopping loss."""

    name = "fusion"
    format = "allmrec-fusion-fit/1"

    def __init__(self, net: Fusion, fit: tuple[torch.Tensor, torch.Tensor], held: tuple[torch.Tensor, torch.Tensor], config: FusionConfig, seed: int) -> None:
        self.net, (self.Z, self.G), (self.Ze, self.Ge), self.config, self.seed = net, fit, held, config, seed
        self.optimizer = torch.optim.Adam(net.parameters(), lr=config.lr or (3e-3 if config.kind == "mlp" else 2e-2))
        self.best_state: dict[str, torch.Tensor] | None = None

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.Z) / self.config.batch_size))

    def identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "rows": len(self.Z)}

    def trained_state(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_trained_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(tensors)

    def start_epoch(self, epoch: int) -> None:
        self.order = torch.as_tensor(rng(self.seed, "fusion-order", epoch).permutation(len(self.Z)))
        self.net.train()

    def step(self, epoch: int, index: int) -> float:
        rows = self.order[index * self.config.batch_size : (index + 1) * self.config.batch_size]
        loss = F.cross_entropy(self.net(self.Z[rows], self.G[rows]), torch.zeros(len(rows), dtype=torch.long))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.net.eval()
        s = self.net(self.Ze, self.Ge)
        return {"neg_loss": -float(F.cross_entropy(s, torch.zeros(len(s), dtype=torch.long))), "hit@1": float((s[:, 1:] < s[:, :1]).all(1).float().mean())}

    def keep_best(self, epoch: int, metrics: dict[str, float]) -> None:
        self.best_state = copy.deepcopy(self.net.state_dict())

    def finish(self, state: dict[str, Any]) -> None:
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        self.net.eval()


def allround_hit(scores: np.ndarray, targets: np.ndarray, cold: np.ndarray, warm: np.ndarray) -> float:
    """Mean of Hit@1 over all rows, the rows with a cold target and those with a warm one
    (truth in column 0; a group without rows counts as the overall Hit@1)."""
    hit = (scores[:, 1:] < scores[:, :1]).all(1)
    groups = [hit, hit[np.isin(targets, cold)], hit[np.isin(targets, warm)]]
    return float(np.mean([g.mean() if len(g) else hit.mean() for g in groups]))


def fitting_users(dataset, excluded: np.ndarray, config: FusionConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, early_stopping)`` user ids: training users with a training item, minus
    ``excluded``, optionally a seeded sample; a seeded ``es_fraction`` of them stop training."""
    users = np.flatnonzero(np.asarray(dataset.train_users, dtype=bool))
    users = users[[len(dataset.train_sequence(int(u))) >= 1 for u in users]]
    users = np.setdiff1d(users, excluded)
    gen = rng(config.seed, "fusion-users")
    if config.max_users is not None and config.max_users < len(users):
        users = np.sort(gen.choice(users, size=config.max_users, replace=False))
    perm = gen.permutation(users)
    n_es = max(1, int(round(len(perm) * config.es_fraction)))
    if len(perm) - n_es < 1:
        raise ValueError(f"fusion: {len(users)} fitting users are too few (need at least 2)")
    return np.sort(perm[n_es:]), np.sort(perm[:n_es])


def fit_fusion(dataset, sources: FeatureSources, config: FusionConfig, excluded: np.ndarray | None = None, progress: bool = False) -> FusedScorer:
    """Fit a fusion of ``sources`` on ``dataset``'s validation items (see the module docstring)."""
    t0 = time.perf_counter()
    fit_users, es_users = fitting_users(dataset, np.asarray([] if excluded is None else excluded, dtype=np.int64), config)
    feats_fit = sources.features(Queries.from_split(dataset, "valid", fit_users))
    queries_es = Queries.from_split(dataset, "valid", es_users)
    feats_es = sources.features(queries_es)
    t_features = time.perf_counter() - t0
    design = config.design().fit_stats(feats_fit)
    fit, held = design.inputs(feats_fit), design.inputs(feats_es)
    nets, fits = [], []
    for seed in range(config.seed, config.seed + config.seeds):
        net = Fusion(len(design.experts), len(design.gates) + len(design.extras), len(design.gates), config.kind, config.width, seed=seed)
        state = run_training(FusionTask(net, fit, held, config, seed), LoopOptions(epochs=config.max_epochs, validate_every_epochs=1, patience=config.patience,
                                                                                  select="neg_loss", progress=progress), None)
        nets.append(net)
        fits.append({"seed": seed, "epochs": state["epoch"], "best": state["best"]})
    scorer = FusedScorer(sources, design, nets)
    raw_es = scorer.raw_scores(feats_es)
    cold, warm = item_groups(dataset)
    z = zscore(feats_es["logpop"])
    criterion = [allround_hit(raw_es - b * z, queries_es.candidates[:, 0], cold, warm) for b in config.betas]
    scorer.beta = float(config.betas[int(np.argmax(criterion))])
    scorer.meta = {"fusion": dataclasses.asdict(config), "fit_users": int(len(fit_users)), "es_users": int(len(es_users)), "fits": fits,
                   "beta_criterion": dict(zip([str(b) for b in config.betas], np.round(criterion, 5).tolist())),
                   "seconds": {"features": round(t_features, 1), "total": round(time.perf_counter() - t0, 1)}}
    return scorer


# ---- a run's fusions (``resources``: a :class:`~allmrec.pipeline.resources.Resources`) -------------
def build_sources(resources: Any, config: FusionConfig, tower: Any = None) -> FeatureSources:
    """The feature sources of ``config`` on a run: its CF model, the tower, the item tables."""
    from allmrec.recommend.cf import CFRecommender

    experts: dict[str, Any] = {"cf": CFRecommender(resources.cf)}
    if "tower" in config.experts:
        if tower is None:
            raise ValueError("fusion.experts names 'tower' but no text tower was given")
        experts["tower"] = tower
    return FeatureSources(experts, resources.fusion_tables(config.tables), resources.dataset.train_item_counts())


def load_sources(resources: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> FeatureSources:
    """The feature sources of a saved fusion (its tower rebuilt from the saved weights)."""
    from allmrec.config import from_dict
    from allmrec.fusion.tower import TextTower

    config = from_dict(FusionConfig, meta["fusion"], where="fusion/model.json: fusion")
    tower = None
    if "tower" in config.experts:
        tower = TextTower(resources.text_table, config.tower)
        tower.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("tower.")})
        tower.eval()
    return build_sources(resources, config, tower)


def fit_run_fusion(resources: Any, config: FusionConfig, excluded: np.ndarray, out_dir: Path, inputs: dict[str, Any] | None = None,
                   progress: bool = True) -> FusedScorer:
    """Fit ``config`` on a run (the tower first, when it is an expert) and save it in ``out_dir``
    (``model.json``, ``model.safetensors``, then ``done.json`` holding ``inputs``: what it was
    fitted for)."""
    from allmrec.fusion.tower import train_text_tower

    tower, tower_info = None, None
    if "tower" in config.experts:
        tower, tower_info = train_text_tower(resources.dataset, resources.text_table, config.tower, progress=progress)
    scorer = fit_fusion(resources.dataset, build_sources(resources, config, tower), config, excluded, progress=False)
    if tower_info is not None:
        scorer.meta["tower"] = tower_info
    extra = {f"tower.{k}": v for k, v in tower.state_dict().items()} if tower is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_temporary(out_dir)  # what a killed fit's writes left
    (out_dir / DONE).unlink(missing_ok=True)
    scorer.save(out_dir, extra)
    write_json(out_dir / DONE, {"identity": scorer.identity(), "inputs": inputs or {}})
    return scorer
