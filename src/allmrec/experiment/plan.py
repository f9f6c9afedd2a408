"""What an experiment trains and scores, derived from its config alone (nothing is loaded).

Every table row is a *variant* of the ``base`` pipeline config (the paper-mode A-LLMRec, MLP-LLM,
an ablation, another CF backbone, a few-shot run, ...) trained in its own run folder; two
variants with identical configs are one variant (an *alias*). An :class:`EvalSpec` is one method
of one variant on one table's users.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from allmrec.align.stage2.config import MODE_LABELS
from allmrec.config import defining_options, merge
from allmrec.experiment.config import STAGE1_ABLATIONS, STAGE2_ABLATIONS, ExperimentConfig
from allmrec.experiment.store import stable_hash
from allmrec.methods.allmrec import allmrec_label
from allmrec.methods.base import BACKBONE_LABELS
from allmrec.pipeline.config import RunConfig

ABLATION_LABELS = {
    "no_matching": "w/o L_matching",
    "no_recon": "w/o L_item-recon & L_text-recon",
    "no_rec": "w/o L_rec",
    "frozen_encoder": "Freeze SBERT",
    "no_user": "w/o user representation",
    "no_joint": "w/o joint embedding",
    "random_joint": "with random joint embedding",
}


class Unavailable(Exception):
    """A unit that cannot run here (a dataset without the needed field, a backbone that cannot
    transfer). Recorded with its reason, retried on the next run."""


@dataclass
class Variant:
    """One pipeline configuration of the experiment (a run folder)."""

    name: str
    group: str
    config: dict[str, Any]
    restrict: str | None = None  # "few_shot:<K>": train on the scenario's K users only
    alias_of: str | None = None  # same config as this variant: its folder and results are reused
    identity: str = ""  # hash of what it trains, defaults filled in (see variant_identity)


@dataclass
class EvalSpec:
    """One method of one variant on one table's users."""

    table: str
    variant: str
    method: str  # cf | llm-only | allmrec | allmrec-sbert | tallrec
    row: str  # key of the paper's reference number
    label: str
    sample: str  # scenario giving the users: overall, cold_items, ..., few_shot:<K>
    n_users: int | None

    @property
    def uid(self) -> str:
        return f"eval/{self.table}/{self.variant}/{self.method}"


@dataclass
class Step:
    uid: str
    spec: Callable[[], dict[str, Any]]
    run: Callable[[], dict[str, Any]]
    needs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # copied into the record (table, row, label, ...)


# ---- identities -------------------------------------------------------------------------------------
def _stage2_defining(run: RunConfig) -> dict[str, Any]:
    s2 = run.stage2()
    return {"mode": s2.mode, "model": dataclasses.asdict(s2.model), "train": defining_options(s2.train)}


def variant_identity(config: dict[str, Any], restrict: str | None) -> str:
    """What a variant trains, with every default filled in (``cf: {}`` and ``cf: {backbone:
    sasrec}`` are the same variant); the ``eval`` section does not count."""
    run = RunConfig(config)
    sections = {"dataset": config.get("dataset"), "text_encoder": run.text_encoder, "data": dataclasses.asdict(run.data()),
                "cf": defining_options(run.cf()), "stage1": defining_options(run.stage1()), "stage2": _stage2_defining(run),
                "llm": dataclasses.asdict(run.llm())}
    return stable_hash({"sections": sections, "restrict": restrict})


def shared_names(v: Variant) -> tuple[str, str]:
    """Folder names of a variant's CF model and stage 1 under ``shared/``: the options that
    define them, hashed (a variant with other options gets other folders, never a mismatch)."""
    run = RunConfig(v.config)
    cf = defining_options(run.cf())
    cf_key = stable_hash({"dataset": v.config.get("dataset"), "data": dataclasses.asdict(run.data()), "restrict": v.restrict, "cf": cf})
    s1_key = stable_hash({"cf": cf_key, "text_encoder": v.config.get("text_encoder", "default"), "stage1": defining_options(run.stage1())})
    return f"cf-{cf['backbone']}-{cf_key[:10]}", f"stage1-{s1_key[:10]}"


# ---- variants -----------------------------------------------------------------------------------------
def base_backbone(cfg: ExperimentConfig) -> str:
    return str((cfg.base.get("cf") or {}).get("backbone", "sasrec"))


def define_variants(cfg: ExperimentConfig) -> dict[str, Variant]:
    c, ov = cfg, cfg.overrides
    best, paper = {"stage2": c.stage2_mode("best")}, {"stage2": c.stage2_mode("paper")}
    vm = best if c.allmrec.variant_mode == "best" else paper
    variants: dict[str, Variant] = {}

    def add(name: str, group: str, *fragments: dict[str, Any], restrict: str | None = None) -> None:
        config = merge(c.base, *fragments)
        ident = variant_identity(config, restrict)
        same = next((o.name for o in variants.values() if o.alias_of is None and o.identity == ident), None)
        variants[name] = Variant(name, group, config, restrict, alias_of=same, identity=ident)

    add("main", "main", best)
    if c.allmrec.paper_mode:
        add("paper", "paper", paper, ov.get("paper", {}))
    if c.baselines.enabled:
        for bb in c.baselines.cf:
            if bb != base_backbone(c):
                add(f"cf-{bb}", "cf_baselines", ov.get("cf_baselines", {}), {"cf": {"backbone": bb}})
        for name in ("morec", "ctrl", "recformer"):  # CF backbones built on item text
            if getattr(c.baselines, name):
                add(name, name, ov.get(name, {}), {"cf": {"backbone": name}})
        if c.baselines.mlp_llm:
            add("mlp-llm", "mlp_llm", vm, ov.get("mlp_llm", {}), {"stage2": {"model": {"item_table": "cf"}}})
    if c.ablations.enabled and (c.ablations.stage1 or c.ablations.stage2):
        add("ablation-reference", "ablations", vm, ov.get("ablations", {}))
        for name in c.ablations.stage1:
            add(f"ablation-{name}", "ablations", vm, ov.get("ablations", {}), STAGE1_ABLATIONS[name])
        for name in c.ablations.stage2:
            add(f"ablation-{name}", "ablations", vm, ov.get("ablations", {}), STAGE2_ABLATIONS[name])
    if c.scenarios.enabled:
        for bb in c.scenarios.model_agnostic:
            add(f"agnostic-{bb}", "model_agnostic", vm, ov.get("model_agnostic", {}), {"cf": {"backbone": bb}})
        for k in c.scenarios.few_shot:
            add(f"few-shot-{k}", "few_shot", vm, ov.get("few_shot", {}), restrict=f"few_shot:{k}")
            if c.baselines.enabled and c.baselines.morec:
                add(f"few-shot-{k}-morec", "few_shot", ov.get("morec", {}), ov.get("few_shot", {}), {"cf": {"backbone": "morec"}}, restrict=f"few_shot:{k}")
    return variants


# ---- evaluation specs -------------------------------------------------------------------------------
def n_users(cfg: ExperimentConfig, sample: str) -> int | None:
    mu = cfg.scenarios.max_users
    overall = mu.get("overall", cfg.eval.max_users)
    if sample == "ablations":
        return cfg.ablations.max_users if cfg.ablations.max_users is not None else overall
    if sample == "model_agnostic":
        return mu.get("model_agnostic", overall)
    if sample == "cross_domain":
        cd = cfg.scenarios.cross_domain
        return cd.max_users if cd.max_users is not None else mu.get("cross_domain", cfg.eval.max_users)
    return mu.get(sample, cfg.eval.max_users)


def _main_tables(cfg: ExperimentConfig) -> list[EvalSpec]:
    """Overall, cold/warm items and cold users: the baselines and both A-LLMRec modes."""
    b, sc, bb0 = cfg.baselines, cfg.scenarios, base_backbone(cfg)
    samples = ["overall"] + (["cold_items", "warm_items"] if sc.enabled and sc.cold_warm else []) + (["cold_users"] if sc.enabled and sc.cold_users > 0 else [])
    vm = cfg.allmrec.variant_mode
    out: list[EvalSpec] = []
    for s in samples:
        def add(variant: str, method: str, row: str, label: str) -> None:
            out.append(EvalSpec(s, variant, method, row, label, s, n_users(cfg, s)))

        add("main", "cf", bb0, BACKBONE_LABELS.get(bb0, bb0))
        if b.enabled:
            for bb in b.cf:
                if bb != bb0:
                    add(f"cf-{bb}", "cf", bb, BACKBONE_LABELS[bb])
            for name, label in (("morec", "MoRec"), ("ctrl", "CTRL"), ("recformer", "RECFORMER")):
                if getattr(b, name):
                    add(name, "cf", name, label)
            if b.llm_only and s == "overall":
                add("main", "llm-only", "llm_only", "LLM-Only")
            if b.tallrec:
                add("tallrec", "tallrec", "tallrec", "TALLRec")
            if b.mlp_llm and s in ("overall", "cold_users"):
                add("mlp-llm", "allmrec", "mlp_llm", f"MLP-LLM ({MODE_LABELS[vm]})")
        add("main", "allmrec", "allmrec", allmrec_label("best"))
        if s in ("cold_items", "warm_items"):
            add("main", "allmrec-sbert", "allmrec_sbert", allmrec_label("best", sbert=True))
        if cfg.allmrec.paper_mode:
            add("paper", "allmrec", "allmrec", allmrec_label("paper"))
            if s in ("cold_items", "warm_items"):
                add("paper", "allmrec-sbert", "allmrec_sbert", allmrec_label("paper", sbert=True))
    return out


def _other_tables(cfg: ExperimentConfig) -> list[EvalSpec]:
    """Ablations, model-agnostic and few-shot tables."""
    out: list[EvalSpec] = []
    vm, bb0, b, sc = cfg.allmrec.variant_mode, base_backbone(cfg), cfg.baselines, cfg.scenarios
    if cfg.ablations.enabled:
        n = n_users(cfg, "ablations")
        for table, names in (("ablation_stage1", cfg.ablations.stage1), ("ablation_stage2", cfg.ablations.stage2)):
            if names:
                out.append(EvalSpec(table, "ablation-reference", "allmrec", "allmrec", allmrec_label(vm), "overall", n))
            for name in names:
                out.append(EvalSpec(table, f"ablation-{name}", "allmrec", name, f"{ABLATION_LABELS[name]} ({MODE_LABELS[vm]})", "overall", n))
    if sc.enabled:
        n = n_users(cfg, "model_agnostic")
        for bb in sc.model_agnostic:
            out.append(EvalSpec("model_agnostic", f"agnostic-{bb}", "cf", bb, BACKBONE_LABELS[bb], "overall", n))
            out.append(EvalSpec("model_agnostic", f"agnostic-{bb}", "allmrec", f"allmrec_{bb}", f"A-LLMRec ({BACKBONE_LABELS[bb]}) ({MODE_LABELS[vm]})", "overall", n))
        for k in sc.few_shot:
            table, sample, n = f"few_shot_{k}", f"few_shot:{k}", n_users(cfg, "few_shot")
            out.append(EvalSpec(table, f"few-shot-{k}", "cf", bb0, BACKBONE_LABELS.get(bb0, bb0), sample, n))
            if b.enabled and b.morec:
                out.append(EvalSpec(table, f"few-shot-{k}-morec", "cf", "morec", "MoRec", sample, n))
            if b.enabled and b.tallrec:
                out.append(EvalSpec(table, f"tallrec-few-shot-{k}", "tallrec", "tallrec", "TALLRec", sample, n))
            out.append(EvalSpec(table, f"few-shot-{k}", "allmrec", "allmrec", allmrec_label(vm), sample, n))
            out.append(EvalSpec(table, f"few-shot-{k}", "allmrec-sbert", "allmrec_sbert", allmrec_label(vm, sbert=True), sample, n))
    return out


def eval_specs(cfg: ExperimentConfig) -> list[EvalSpec]:
    return _main_tables(cfg) + _other_tables(cfg)


def cross_domain_specs(cfg: ExperimentConfig, variants: dict[str, Variant]) -> list[EvalSpec]:
    if not (cfg.scenarios.enabled and cfg.scenarios.cross_domain.enabled):
        return []
    n, bb0 = n_users(cfg, "cross_domain"), base_backbone(cfg)
    out = [EvalSpec("cross_domain", "main", "cf", bb0, f"{BACKBONE_LABELS.get(bb0, bb0)} (item table decoded from text)", "cross_domain", n)]
    if cfg.baselines.enabled and cfg.baselines.recformer:  # text-only: scores the target's items through their text
        out.append(EvalSpec("cross_domain", "recformer", "cf", "recformer", "RECFORMER", "cross_domain", n))
    if cfg.baselines.enabled and cfg.baselines.llm_only:
        out.append(EvalSpec("cross_domain", "main", "llm-only", "llm_only", "LLM-Only", "cross_domain", n))
    if cfg.baselines.enabled and cfg.baselines.tallrec:
        out.append(EvalSpec("cross_domain", "tallrec", "tallrec", "tallrec", "TALLRec", "cross_domain", n))
    for variant, mode in (("main", "best"), ("paper", "paper")):
        if variant in variants:
            out.append(EvalSpec("cross_domain", variant, "allmrec", "allmrec", allmrec_label(mode), "cross_domain", n))
            out.append(EvalSpec("cross_domain", variant, "allmrec-sbert", "allmrec_sbert", allmrec_label(mode, sbert=True), "cross_domain", n))
    return out
