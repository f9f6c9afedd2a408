"""Run the paper's evaluation suite for one experiment config, resuming what is done.

Every table row is a *variant* of the ``base`` pipeline config (the paper-mode A-LLMRec, MLP-LLM,
an ablation, another CF backbone, a few-shot run, ...) trained in its own run folder
``<experiment>/<variant>/`` by :class:`allmrec.pipeline.Pipeline`. Artifacts that variants share
are trained once: ``<variant>/cf`` and ``<variant>/stage1`` are links into ``<experiment>/shared/``,
keyed by the options that define them (a CF model by the data and CF options, a stage 1 by
those plus the text encoder and stage-1 options); two variants with identical configs are one
variant (an *alias*). One dataset object and one LLM are loaded per process.

The work is split into units (train a variant, evaluate one method of one variant on one
table's users, cross-domain, genres, efficiency), each recorded in ``units/<id>.json`` by
:class:`allmrec.experiment.store.UnitStore`; a rerun skips finished units whose inputs have not
changed. ``results.json`` gathers the records of the current plan; the report and the plots are
built from it alone (:mod:`allmrec.experiment.report`, :mod:`allmrec.experiment.plots`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from allmrec.config import from_dict
from allmrec.experiment.config import BACKBONES, NEAREST_ONLY, STAGE1_ABLATIONS, STAGE2_ABLATIONS, ExperimentConfig, merge_config
from allmrec.experiment.store import UnitStore, file_hash, invocations, stable_hash
from allmrec.experiment.work import (
    Unavailable,
    columns_from_llm_rows,
    free_memory,
    metrics_from_columns,
    needed_items,
    optional_module,
    require_backbone,
    text_derived_tables,
    time_inference,
    time_stage2_training,
    transplant_cf,
)
from allmrec.eval.report import BACKBONE_LABELS, MODE_LABELS, allmrec_label
from allmrec.pipeline import Pipeline
from allmrec.utils.io import read_json, write_json
from allmrec.utils.seed import rng

log = logging.getLogger(__name__)

FORMAT = "allmrec-experiment/1"
ABLATION_LABELS = {
    "no_matching": "w/o L_matching",
    "no_recon": "w/o L_item-recon & L_text-recon",
    "no_rec": "w/o L_rec",
    "frozen_encoder": "Freeze SBERT",
    "no_user": "w/o user representation",
    "no_joint": "w/o joint embedding",
    "random_joint": "with random joint embedding",
}
# Options that do not change what a shared CF model / stage 1 computes.
VOLATILE = {"cf": {"threads", "device", "eval_batch_size"}, "stage1": {"threads", "device", "keep_checkpoints", "text_batch_size"},
            "stage2": {"checkpoint_every", "keep_checkpoints", "log_every", "cf_batch_size", "eval_every"}}
MAIN_SAMPLES = ("overall", "cold_items", "warm_items", "cold_users")


@dataclass
class Variant:
    """One pipeline configuration of the experiment (a run folder)."""

    name: str
    group: str
    config: dict[str, Any]
    restrict: str | None = None  # "few_shot:<K>": train on the scenario's K users only
    alias_of: str | None = None  # same config as this variant: its folder and results are reused
    identity: str = ""  # hash of what it trains, defaults filled in (see _identity)


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


class ExperimentPipeline(Pipeline):
    """A pipeline whose dataset and LLM come from the runner (one copy per process)."""

    def __init__(self, config: dict[str, Any], run_dir: Path, runner: "ExperimentRunner", restrict: str | None = None) -> None:
        super().__init__(config, run_dir)
        self._runner = runner
        self._restrict = restrict

    def prepare(self, force: bool = False, show: bool = False):
        if self._dataset is None:
            self._dataset = self._runner.dataset(self.data_config(), self._restrict)
        return self._dataset

    def load_llm(self):
        return self._runner.llm(self.section("llm"))


class ExperimentRunner:
    """Plan and run the units of one experiment; write ``results.json``, the report and plots.

    Parameters
    ----------
    config : a checked :class:`ExperimentConfig` (:func:`allmrec.experiment.config.load_experiment`).
    root : the experiment folder (default ``<config.out_dir>/<config.name>``).
    console : a ``rich`` console for progress lines (default: a new one).
    """

    def __init__(self, config: ExperimentConfig, root: str | Path | None = None, console: Any = None) -> None:
        from rich.console import Console

        self.cfg = config
        self.root = Path(root or Path(config.out_dir) / config.name).resolve()
        self.console = console or Console()
        self.store = UnitStore(self.root)
        self.variants: dict[str, Variant] = {}
        self._pipes: dict[str, ExperimentPipeline] = {}
        self._datasets: dict[str, Any] = {}
        self._llms: dict[str, Any] = {}
        self._tallrec: dict[str, Any] = {}
        self._cross: dict[str, Any] = {}
        self._needs: dict[str, set[str]] = {}
        self._samples: dict[tuple[int, str, int | None], np.ndarray] = {}
        self._plan: list[str] = []
        self._past_runs: list[dict[str, Any]] = []  # earlier invocations on this folder (read by run())
        self._define_variants()

    # ---- variants ------------------------------------------------------------------------------------
    @property
    def base_backbone(self) -> str:
        return str((self.cfg.base.get("cf") or {}).get("backbone", "sasrec"))

    @property
    def variant_mode(self) -> str:
        return self.cfg.allmrec.variant_mode

    def mode_label(self, mode: str, sbert: bool = False) -> str:
        return allmrec_label(mode, sbert)

    def _define_variants(self) -> None:
        c, ov = self.cfg, self.cfg.overrides
        best, paper = {"stage2": c.stage2_mode("best")}, {"stage2": c.stage2_mode("paper")}
        vm = best if self.variant_mode == "best" else paper
        add = self._add
        add("main", "main", merge_config(c.base, best))
        if c.allmrec.paper_mode:
            add("paper", "paper", merge_config(c.base, paper, ov.get("paper", {})))
        if c.baselines.enabled:
            for bb in c.baselines.cf:
                if bb != self.base_backbone:
                    add(f"cf-{bb}", "cf_baselines", merge_config(c.base, ov.get("cf_baselines", {}), {"cf": {"backbone": bb}}))
            if c.baselines.morec:
                add("morec", "morec", merge_config(c.base, ov.get("morec", {}), {"cf": {"backbone": "morec"}}))
            if c.baselines.mlp_llm:
                add("mlp-llm", "mlp_llm", merge_config(c.base, vm, ov.get("mlp_llm", {}), {"stage2": {"item_table": "cf"}}))
        if c.ablations.enabled and (c.ablations.stage1 or c.ablations.stage2):
            add("ablation-reference", "ablations", merge_config(c.base, vm, ov.get("ablations", {})))
            for name in c.ablations.stage1:
                add(f"ablation-{name}", "ablations", merge_config(c.base, vm, ov.get("ablations", {}), STAGE1_ABLATIONS[name]))
            for name in c.ablations.stage2:
                add(f"ablation-{name}", "ablations", merge_config(c.base, vm, ov.get("ablations", {}), STAGE2_ABLATIONS[name]))
        if c.scenarios.enabled:
            for bb in c.scenarios.model_agnostic:
                add(f"agnostic-{bb}", "model_agnostic", merge_config(c.base, vm, ov.get("model_agnostic", {}), {"cf": {"backbone": bb}}))
            for k in c.scenarios.few_shot:
                add(f"few-shot-{k}", "few_shot", merge_config(c.base, vm, ov.get("few_shot", {})), restrict=f"few_shot:{k}")
                if c.baselines.enabled and c.baselines.morec:
                    add(f"few-shot-{k}-morec", "few_shot", merge_config(c.base, ov.get("morec", {}), ov.get("few_shot", {}), {"cf": {"backbone": "morec"}}),
                        restrict=f"few_shot:{k}")

    def _add(self, name: str, group: str, config: dict[str, Any], restrict: str | None = None) -> None:
        ident = _identity(config, restrict)
        for other in self.variants.values():
            if other.alias_of is None and other.identity == ident:
                self.variants[name] = Variant(name, group, config, restrict, alias_of=other.name, identity=ident)
                return
        self.variants[name] = Variant(name, group, config, restrict, identity=ident)

    def actual(self, name: str) -> Variant:
        v = self.variants[name]
        return self.variants[v.alias_of] if v.alias_of else v

    def pipeline(self, name: str) -> ExperimentPipeline:
        v = self.actual(name)
        if v.name not in self._pipes:
            pipe = ExperimentPipeline(v.config, self.root / v.name, self, v.restrict)
            cf_name, s1_name = self._shared_names(v)
            _link(pipe.cf_dir, self.root / "shared" / cf_name)
            if "stage2" in self._needs.get(v.name, ()) and pipe.stage2_config().item_table == "joint":
                _link(pipe.stage1_dir, self.root / "shared" / s1_name)
            # What `allmrec evaluate --run <folder>` cannot know from config.yaml alone.
            write_json(pipe.run_dir / "experiment-variant.json", {"experiment": str(self.root), "variant": v.name, "group": v.group,
                                                                   "training_users": v.restrict or "all", "shared": {"cf": cf_name, "stage1": s1_name}})
            self._pipes[v.name] = pipe
        return self._pipes[v.name]

    def _shared_names(self, v: Variant) -> tuple[str, str]:
        """Folder names of a variant's CF model and stage 1 under ``shared/``: the options that
        define them, hashed (a variant with other options gets other folders, never a mismatch)."""
        pipe = Pipeline(v.config, Path("."))
        data = dataclasses.asdict(pipe.data_config())
        cf = _strip(dataclasses.asdict(pipe.cf_config()), "cf")
        cf_key = stable_hash({"dataset": v.config.get("dataset"), "data": data, "restrict": v.restrict, "cf": cf})
        s1 = _strip(dataclasses.asdict(pipe.stage1_config()), "stage1")
        s1_key = stable_hash({"cf": cf_key, "text_encoder": v.config.get("text_encoder", "default"), "stage1": s1})
        return f"cf-{cf['backbone']}-{cf_key[:10]}", f"stage1-{s1_key[:10]}"

    # ---- shared objects --------------------------------------------------------------------------------
    def dataset(self, data_config: Any, restrict: str | None = None):
        """The prepared dataset (loaded once), or its few-shot view: the same users, items and
        candidates, but only the scenario's K users marked as training users."""
        key = stable_hash({"data": dataclasses.asdict(data_config), "restrict": restrict})
        if key not in self._datasets:
            from allmrec.data import get_scenario, prepare

            if restrict is None:
                ds = prepare(data_config)
            else:
                base = self.dataset(data_config)
                sc = get_scenario(base, restrict)
                ds = dataclasses.replace(base, train_users=sc.train_users.copy(), fingerprint=f"{base.fingerprint}|{restrict}")
            self._datasets[key] = ds
        return self._datasets[key]

    def llm(self, section: dict[str, Any]):
        key = stable_hash(section)
        if key not in self._llms:
            from allmrec.llm import LLMConfig, load_llm

            self._llms[key] = load_llm(from_dict(LLMConfig, dict(section), where="llm"))
        return self._llms[key]

    def main_pipe(self) -> ExperimentPipeline:
        return self.pipeline("main")

    def base_dataset(self):
        return self.main_pipe().prepare()

    def target_dataset(self):
        cd = self.cfg.scenarios.cross_domain
        return self.dataset(Pipeline({"dataset": cd.dataset, "data": cd.data}, Path(".")).data_config())

    def sample_users(self, ds, scenario: str, n: int | None) -> np.ndarray:
        """The seeded users of ``scenario`` (those with a history for the split): a prefix of one
        seeded permutation, so smaller samples are subsets of larger ones."""
        from allmrec.data import get_scenario

        key = (id(ds), scenario, n)
        if key not in self._samples:
            pool = get_scenario(ds, scenario).eval_users
            pool = pool[[len(ds.sequences[int(u)]) >= 3 for u in pool]]
            if n is not None and n < len(pool):
                pool = np.sort(rng(self.cfg.eval.seed, "experiment-users", scenario).permutation(pool)[:n])
            self._samples[key] = np.asarray(pool, dtype=np.int64)
        return self._samples[key]

    def n_users(self, sample: str) -> int | None:
        c = self.cfg
        mu = c.scenarios.max_users
        overall = mu.get("overall", c.eval.max_users)
        if sample == "ablations":
            return c.ablations.max_users if c.ablations.max_users is not None else overall
        if sample == "model_agnostic":
            return mu.get("model_agnostic", overall)
        if sample == "cross_domain":
            return c.scenarios.cross_domain.max_users if c.scenarios.cross_domain.max_users is not None else mu.get("cross_domain", c.eval.max_users)
        return mu.get(sample, c.eval.max_users)

    # ---- the plan ------------------------------------------------------------------------------------------
    def eval_specs(self) -> list[EvalSpec]:
        c, bb0 = self.cfg, self.base_backbone
        b, sc = c.baselines, c.scenarios
        out: list[EvalSpec] = []
        samples = ["overall"]
        if sc.enabled and sc.cold_warm:
            samples += ["cold_items", "warm_items"]
        if sc.enabled and sc.cold_users > 0:
            samples.append("cold_users")
        tallrec = b.enabled and b.tallrec
        for s in samples:
            n = self.n_users(s)
            add = lambda variant, method, row, label: out.append(EvalSpec(s, variant, method, row, label, s, n))  # noqa: E731
            add("main", "cf", bb0, BACKBONE_LABELS.get(bb0, bb0))
            if b.enabled:
                for bb in b.cf:
                    if bb != bb0:
                        add(f"cf-{bb}", "cf", bb, BACKBONE_LABELS[bb])
                if b.morec:
                    add("morec", "cf", "morec", "MoRec")
                if b.llm_only and s == "overall":
                    add("main", "llm-only", "llm_only", "LLM-Only")
                if tallrec:
                    add("tallrec", "tallrec", "tallrec", "TALLRec")
                if b.mlp_llm and s in ("overall", "cold_users"):
                    add("mlp-llm", "allmrec", "mlp_llm", f"MLP-LLM ({MODE_LABELS[self.variant_mode]})")
            add("main", "allmrec", "allmrec", self.mode_label("best"))
            if s in ("cold_items", "warm_items"):
                add("main", "allmrec-sbert", "allmrec_sbert", self.mode_label("best", sbert=True))
            if c.allmrec.paper_mode:
                add("paper", "allmrec", "allmrec", self.mode_label("paper"))
                if s in ("cold_items", "warm_items"):
                    add("paper", "allmrec-sbert", "allmrec_sbert", self.mode_label("paper", sbert=True))
        if c.ablations.enabled:
            n = self.n_users("ablations")
            for table, names in (("ablation_stage1", c.ablations.stage1), ("ablation_stage2", c.ablations.stage2)):
                if names:
                    out.append(EvalSpec(table, "ablation-reference", "allmrec", "allmrec", self.mode_label(self.variant_mode), "overall", n))
                for name in names:
                    out.append(EvalSpec(table, f"ablation-{name}", "allmrec", name, f"{ABLATION_LABELS[name]} ({MODE_LABELS[self.variant_mode]})", "overall", n))
        if sc.enabled:
            n = self.n_users("model_agnostic")
            for bb in sc.model_agnostic:
                out.append(EvalSpec("model_agnostic", f"agnostic-{bb}", "cf", bb, BACKBONE_LABELS[bb], "overall", n))
                out.append(EvalSpec("model_agnostic", f"agnostic-{bb}", "allmrec", f"allmrec_{bb}",
                                    f"A-LLMRec ({BACKBONE_LABELS[bb]}) ({MODE_LABELS[self.variant_mode]})", "overall", n))
            for k in sc.few_shot:
                table, sample, n = f"few_shot_{k}", f"few_shot:{k}", self.n_users("few_shot")
                out.append(EvalSpec(table, f"few-shot-{k}", "cf", bb0, BACKBONE_LABELS.get(bb0, bb0), sample, n))
                if b.enabled and b.morec:
                    out.append(EvalSpec(table, f"few-shot-{k}-morec", "cf", "morec", "MoRec", sample, n))
                if tallrec:
                    out.append(EvalSpec(table, f"tallrec-few-shot-{k}", "tallrec", "tallrec", "TALLRec", sample, n))
                out.append(EvalSpec(table, f"few-shot-{k}", "allmrec", "allmrec", self.mode_label(self.variant_mode), sample, n))
                out.append(EvalSpec(table, f"few-shot-{k}", "allmrec-sbert", "allmrec_sbert", self.mode_label(self.variant_mode, sbert=True), sample, n))
        return out

    def cross_domain_specs(self) -> list[EvalSpec]:
        c = self.cfg
        if not (c.scenarios.enabled and c.scenarios.cross_domain.enabled):
            return []
        n, bb0 = self.n_users("cross_domain"), self.base_backbone
        out = [EvalSpec("cross_domain", "main", "cf", bb0, f"{BACKBONE_LABELS.get(bb0, bb0)} (item table decoded from text)", "cross_domain", n)]
        if c.baselines.enabled and c.baselines.llm_only:
            out.append(EvalSpec("cross_domain", "main", "llm-only", "llm_only", "LLM-Only", "cross_domain", n))
        if c.baselines.enabled and c.baselines.tallrec:
            out.append(EvalSpec("cross_domain", "tallrec", "tallrec", "tallrec", "TALLRec", "cross_domain", n))
        for variant, mode in (("main", "best"), ("paper", "paper")):
            if variant in self.variants:
                out.append(EvalSpec("cross_domain", variant, "allmrec", "allmrec", self.mode_label(mode), "cross_domain", n))
                out.append(EvalSpec("cross_domain", variant, "allmrec-sbert", "allmrec_sbert", self.mode_label(mode, sbert=True), "cross_domain", n))
        return out

    def steps(self) -> list[Step]:
        """Every unit of the plan, cheap and central ones first, TALLRec and timings last."""
        c = self.cfg
        specs = self.eval_specs()
        cross = self.cross_domain_specs()
        needs: dict[str, set[str]] = {}
        for s in specs + cross:
            if s.method == "cf":
                needs.setdefault(self.actual(s.variant).name, set()).add("cf")
            elif s.method.startswith("allmrec"):
                needs.setdefault(self.actual(s.variant).name, set()).add("stage2")
        self._needs = needs
        genres = c.genres.enabled
        if genres and "paper" in self.variants:
            needs.setdefault("paper", set()).add("stage2")
        if c.efficiency.enabled:
            for name in ("main", "paper"):
                if name in self.variants:
                    needs.setdefault(name, set()).add("stage2")
        steps: list[Step] = []
        for name, v in self.variants.items():
            if v.alias_of is None and name in needs:
                steps.append(Step(f"train/{name}", self._train_spec(name, needs[name]), self._train_runner(name, needs[name]),
                                  info={"kind": "train", "variant": name, "group": v.group}))
                steps += [self._eval_step(s) for s in specs if s.method != "tallrec" and self.actual(s.variant).name == name]
        steps += [self._cross_step(s) for s in cross if s.method != "tallrec"]
        if genres:
            steps += [self._genres_step("llm-only"), self._genres_step("allmrec")]
        if c.baselines.enabled and c.baselines.tallrec:
            tallrec_runs = [("tallrec", None)] + [(f"tallrec-few-shot-{k}", f"few_shot:{k}") for k in (c.scenarios.few_shot if c.scenarios.enabled else [])]
            for name, restrict in tallrec_runs:
                steps.append(Step(f"train/{name}", self._tallrec_spec(restrict), self._tallrec_train_runner(name, restrict), info={"kind": "train", "variant": name, "group": "tallrec"}))
                steps += [self._eval_step(s) for s in specs if s.method == "tallrec" and s.variant == name]
                if name == "tallrec":
                    steps += [self._cross_step(s) for s in cross if s.method == "tallrec"]
        if c.efficiency.enabled:
            steps.append(self._efficiency_step())
        seen: set[str] = set()
        unique = []
        for st in steps:  # an alias's llm-only unit may come twice
            if st.uid not in seen:
                seen.add(st.uid)
                unique.append(st)
        return unique

    # ---- training units --------------------------------------------------------------------------------------
    def _train_spec(self, name: str, needs: set[str]) -> Callable[[], dict[str, Any]]:
        v = self.variants[name]
        return lambda: {"kind": "train", "variant": name, "config": v.config, "restrict": v.restrict, "needs": sorted(needs)}

    def _train_runner(self, name: str, needs: set[str]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            pipe = self.pipeline(name)
            backbone = pipe.cf_config().backbone
            if backbone not in BACKBONES:
                require_backbone(backbone)
            out: dict[str, Any] = {"variant": name, "run_dir": self._rel(pipe.run_dir), "restrict": self.variants[name].restrict}
            t0 = time.perf_counter()
            pipe.train_cf()
            out["cf"] = {"dir": self._rel(pipe.cf_dir.resolve()), "wall_seconds": round(time.perf_counter() - t0, 2), **_cf_summary(pipe.cf_dir)}
            stamp = {"cf": file_hash(pipe.cf_dir / "model.safetensors")}
            if "stage2" in needs:
                if pipe.stage2_config().item_table == "joint":
                    _link(pipe.stage1_dir, self.root / "shared" / self._shared_names(self.variants[name])[1])
                    t0 = time.perf_counter()
                    result = pipe.align()
                    out["stage1"] = {"dir": self._rel(pipe.stage1_dir.resolve()), "wall_seconds": round(time.perf_counter() - t0, 2), **_stage1_summary(result)}
                    stamp["stage1"] = _stage1_hash(pipe.stage1_dir)
                t0 = time.perf_counter()
                pipe.train_stage2()
                out["stage2"] = {"dir": self._rel(pipe.stage2_dir), "wall_seconds": round(time.perf_counter() - t0, 2), **_stage2_summary(pipe.stage2_dir)}
                stamp["stage2"] = file_hash(pipe.stage2_dir / "model.safetensors")
            out["stamp"] = stamp
            return out

        return run

    def _tallrec_config(self, overrides: dict[str, Any] | None = None):
        """TallrecConfig from ``baselines.tallrec_options``; prompt and data sizes the paper keeps
        equal to A-LLMRec's default to the base stage-2 settings."""
        mod = optional_module("allmrec.baselines.tallrec")
        fields = {f.name for f in dataclasses.fields(mod.TallrecConfig)}
        s2 = self.main_pipe().stage2_config()
        values = {k: getattr(s2, k) for k in ("batch_size", "epochs", "max_steps", "max_train_users", "history_len", "n_candidates", "max_title_tokens") if k in fields}
        values.update(self.cfg.baselines.tallrec_options)
        values.update(overrides or {})
        return from_dict(mod.TallrecConfig, values, where="baselines.tallrec_options")

    def _tallrec_spec(self, restrict: str | None) -> Callable[[], dict[str, Any]]:
        def spec() -> dict[str, Any]:
            cfg = self._tallrec_config()
            return {"kind": "train-tallrec", "config": dataclasses.asdict(cfg), "data": dataclasses.asdict(self.main_pipe().data_config()),
                    "restrict": restrict, "llm": self.main_pipe().section("llm")}

        return spec

    def _tallrec_train_runner(self, name: str, restrict: str | None) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            mod = optional_module("allmrec.baselines.tallrec")
            config = self._tallrec_config()
            ds = self.dataset(self.main_pipe().data_config(), restrict)
            llm, tok = self.main_pipe().load_llm()
            self._tallrec.clear()
            model, state = mod.train_tallrec(ds, llm, tok, config, self.root / name, resume=True, progress=True)
            self._tallrec[name] = model
            steps = int(state.get("step", 0))
            return {"variant": name, "run_dir": name, "restrict": restrict,
                    "tallrec": {"config": dataclasses.asdict(config), "steps": steps, "seconds": float(state.get("seconds", 0.0)),
                                "seconds_per_step": float(state.get("step_seconds") or 0.0), "loss_log": state.get("loss_log", [])},
                    "stamp": {"tallrec": file_hash(self.root / name / "model.safetensors")}}

        return run

    def _tallrec_model(self, name: str):
        if name not in self._tallrec:
            mod = optional_module("allmrec.baselines.tallrec")
            self._tallrec.clear()  # one LoRA copy at a time
            free_memory()
            llm, _ = self.main_pipe().load_llm()
            self._tallrec[name] = mod.load_tallrec(self.root / name, llm)
        return self._tallrec[name]

    # ---- evaluation units --------------------------------------------------------------------------------------
    def _train_uid(self, s: EvalSpec) -> str | None:
        if s.method == "tallrec":
            return f"train/{s.variant}"
        if s.method == "llm-only":
            return None
        return f"train/{self.actual(s.variant).name}"

    def _stamp(self, s: EvalSpec) -> dict[str, Any]:
        uid = self._train_uid(s)
        if uid is None:  # LLM-Only: the LLM and the prompt settings
            s2 = self.pipeline(s.variant).stage2_config()
            return {"llm": self.pipeline(s.variant).section("llm"), "history_len": s2.history_len, "max_title_tokens": s2.max_title_tokens}
        stamp = dict((self.store.get(uid) or {}).get("stamp") or {})
        return {"cf": stamp.get("cf")} if s.method == "cf" else stamp

    def _mode(self, s: EvalSpec) -> str:
        return "rank" if s.method == "cf" else self.cfg.eval.mode

    def _score_key(self, s: EvalSpec, target: str = "base") -> str:
        actual = s.variant if s.method == "tallrec" else self.actual(s.variant).name
        return stable_hash({"variant": actual, "method": s.method, "mode": self._mode(s), "split": self.cfg.eval.split,
                            "seed": self.cfg.eval.seed, "stamp": self._stamp(s), "target": target})

    def _eval_step(self, s: EvalSpec) -> Step:
        def users() -> np.ndarray:
            return self.sample_users(self.base_dataset(), s.sample, s.n_users)

        def spec() -> dict[str, Any]:
            u = users()
            return {"kind": "eval", "table": s.table, "variant": s.variant, "method": s.method, "sample": s.sample, "n_users": len(u),
                    "users": stable_hash(u.tolist()), "mode": self._mode(s), "split": self.cfg.eval.split, "score_key": self._score_key(s)}

        def run() -> dict[str, Any]:
            return self._evaluate(s, users(), self._score_key(s), lambda missing: self._score(s, missing))

        uid = self._train_uid(s)
        return Step(s.uid, spec, run, needs=[uid] if uid else [], info=self._info(s))

    def _info(self, s: EvalSpec) -> dict[str, Any]:
        v = self.variants.get(s.variant)
        return {"kind": "eval", "table": s.table, "variant": s.variant, "actual_variant": self.actual(s.variant).name if v else s.variant,
                "alias_of": v.alias_of if v else None, "method": s.method, "row": s.row, "label": s.label, "sample": s.sample}

    def _evaluate(self, s: EvalSpec, users: np.ndarray, score_key: str, score: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, Any]:
        """Score the users not yet scored by the same model (see :class:`UnitStore`), then the
        metrics of the whole sample from the per-user rows."""
        t0 = time.perf_counter()
        rows, missing = self._scored_rows(score_key, users, score)
        seconds = time.perf_counter() - t0
        names = sorted({c for u in users for c in rows[int(u)]})
        columns = {c: np.array([rows[int(u)][c] for u in users]) for c in names}
        out: dict[str, Any] = {"score_key": score_key, "mode": self._mode(s), "split": self.cfg.eval.split,
                               "metrics": metrics_from_columns(columns), "scored_users": int(len(missing)), "reused_users": int(len(users) - len(missing)),
                               "scoring_seconds": round(seconds, 3), "seconds_per_user": round(seconds / len(missing), 4) if len(missing) else None,
                               "users": [int(u) for u in users]}
        out.update({c: [_py(x) for x in columns[c]] for c in names})
        return out

    def _scored_rows(self, score_key: str, users: np.ndarray, score: Callable[[np.ndarray], dict[str, np.ndarray]]):
        """The store's per-user rows under ``score_key``, after scoring the ``users`` not there yet
        (see :class:`UnitStore`); returns them and the users scored now."""
        rows = self.store.rows(score_key)
        missing = np.array([u for u in users if int(u) not in rows], dtype=np.int64)
        if len(missing):
            cols = score(missing)
            for i, u in enumerate(missing):
                rows[int(u)] = {c: _py(cols[c][i]) for c in cols}
        return rows, missing

    def _score(self, s: EvalSpec, users: np.ndarray) -> dict[str, np.ndarray]:
        if s.method == "tallrec":
            return self._score_tallrec(s.variant, self.base_dataset(), users)
        if s.method == "allmrec-sbert":
            return self._score_sbert(s, users)
        pipe = self.pipeline(s.variant)
        opts = dataclasses.replace(pipe.eval_options(), split=self.cfg.eval.split, mode=self._mode(s), seed=self.cfg.eval.seed)
        # The per-user columns `allmrec evaluate` reports (same code path).
        return pipe.score_method(s.method, pipe.prepare(), users, opts)

    def _score_sbert(self, s: EvalSpec, users: np.ndarray) -> dict[str, np.ndarray]:
        """A-LLMRec (SBERT) differs from A-LLMRec only in the rows of items without training
        interactions (q_i instead of e_i). A user whose prompt shows none of them gets exactly
        A-LLMRec's scores, so those users share A-LLMRec's rows (scored once); only the others
        run with the SBERT table. On 5-core data no item lacks training interactions."""
        from allmrec.align import untrained_item_mask

        pipe = self.pipeline(s.variant)
        ds, split = pipe.prepare(), self.cfg.eval.split
        untrained = untrained_item_mask(ds)
        shown = pipe.stage2_config().history_len
        cands = ds.candidates(split)
        own = np.array([bool(untrained[cands[u]].any() or untrained[ds.history(int(u), split)[-shown:]].any()) for u in users], dtype=bool)
        opts = dataclasses.replace(pipe.eval_options(), split=split, mode=self._mode(s), seed=self.cfg.eval.seed)
        plain = self._score_key(dataclasses.replace(s, method="allmrec"))
        shared, _ = self._scored_rows(plain, users[~own], lambda todo: pipe.score_method("allmrec", ds, todo, opts))
        rows = {int(u): shared[int(u)] for u in users[~own]}
        if own.any():
            sbert = pipe.score_method("allmrec-sbert", ds, users[own], opts)
            rows.update({int(u): {c: _py(sbert[c][i]) for c in sbert} for i, u in enumerate(users[own])})
        log.info("%s: %d of %d users see an item without training interactions (scored with q_i); the others share A-LLMRec's rows",
                 s.uid, int(own.sum()), len(users))
        names = sorted({c for row in rows.values() for c in row})
        return {c: np.array([rows[int(u)][c] for u in users]) for c in names}

    def _score_tallrec(self, name: str, ds, users: np.ndarray) -> dict[str, np.ndarray]:
        from allmrec.recommend import InferenceConfig, evaluate_llm

        mod = optional_module("allmrec.baselines.tallrec")
        model = self._tallrec_model(name)
        _, tok = self.main_pipe().load_llm()
        cfg = InferenceConfig(mode=self.cfg.eval.mode, seed=self.cfg.eval.seed, progress=True)
        _, rows = evaluate_llm(ds, model, tok, self.cfg.eval.split, users, prompt=mod.tallrec_prompt_config(model), config=cfg)
        return columns_from_llm_rows(rows)

    # ---- cross-domain ---------------------------------------------------------------------------------------------
    def _cross_step(self, s: EvalSpec) -> Step:
        cd = self.cfg.scenarios.cross_domain

        def users() -> np.ndarray:
            return self.sample_users(self.target_dataset(), "cross_domain", s.n_users)

        def spec() -> dict[str, Any]:
            u = users()
            return {"kind": "cross_domain", "target": {"dataset": cd.dataset, "data": cd.data}, "variant": s.variant, "method": s.method,
                    "n_users": len(u), "users": stable_hash(u.tolist()), "mode": self._mode(s), "score_key": self._score_key(s, "cross")}

        def run() -> dict[str, Any]:
            ds = self.target_dataset()
            out = self._evaluate(s, users(), self._score_key(s, "cross"), lambda missing: self._score_cross(s, ds, missing))
            out["source"] = self.base_dataset().name
            out["target"] = ds.name
            return out

        uid = self._train_uid(s)
        info = {**self._info(s), "kind": "cross_domain"}
        return Step(s.uid, spec, run, needs=[uid] if uid else [], info=info)

    def _cross_tables(self, source: str, ds, users: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """The source CF model moved onto the target catalogue, and the target's text-derived tables."""
        pipe = self.pipeline(source)
        cf = pipe.load_cf()
        key = f"{source}:{stable_hash(users.tolist())}"
        if key not in self._cross:
            items = needed_items(ds, users, self.cfg.eval.split, int(getattr(cf.config, "max_len", 50)))
            tables = text_derived_tables(pipe.stage1_dir, ds, items)
            self._cross = {key: (transplant_cf(cf, ds, tables["cf"]), tables)}
        return self._cross[key]

    def _score_cross(self, s: EvalSpec, ds, users: np.ndarray) -> dict[str, np.ndarray]:
        from allmrec.align import load_stage2
        from allmrec.eval.metrics import target_ranks
        from allmrec.llm import PromptConfig
        from allmrec.recommend import InferenceConfig, evaluate_llm

        split, mode = self.cfg.eval.split, self._mode(s)
        if s.method == "tallrec":
            return self._score_tallrec(s.variant, ds, users)
        llm, tok = self.main_pipe().load_llm()
        if s.method == "llm-only":
            s2 = self.main_pipe().stage2_config()
            prompt = PromptConfig(style="text", history_len=s2.history_len, max_title_tokens=s2.max_title_tokens)
            _, rows = evaluate_llm(ds, llm, tok, split, users, prompt=prompt, config=InferenceConfig(mode=mode, seed=self.cfg.eval.seed, progress=True))
            return columns_from_llm_rows(rows)
        cf_t, tables = self._cross_tables(s.variant, ds, users)
        if s.method == "cf":
            from allmrec.cf import score_candidates

            return {"rank": target_ranks(score_candidates(cf_t, ds, split, users))}
        pipe = self.pipeline(s.variant)
        stage2 = load_stage2(pipe.stage2_dir, llm=llm)
        joint = tables["e"] if s.method == "allmrec" else tables["q"]
        modes = ["rank"] if mode == "rank" or stage2.objective == "listwise" else ["rank", "generate"]
        out: dict[str, np.ndarray] = {}
        for m in modes:
            _, rows = evaluate_llm(ds, llm, tok, split, users, stage2=stage2, cf_model=cf_t, joint_items=joint,
                                   config=InferenceConfig(mode=m, seed=self.cfg.eval.seed, progress=True))
            out.update(columns_from_llm_rows(rows))
        return out

    # ---- favourite genres -------------------------------------------------------------------------------------------
    def _genre_config(self):
        mod = optional_module("allmrec.eval.genres")
        fields = {f.name for f in dataclasses.fields(mod.GenreConfig)}
        s2 = self.main_pipe().stage2_config()
        values = {k: getattr(s2, k) for k in ("history_len", "max_title_tokens") if k in fields}
        values.update(self.cfg.genres.options)
        return from_dict(mod.GenreConfig, values, where="genres.options")

    def _genres_step(self, method: str) -> Step:
        uid = f"genres/{method}"
        variant = "paper" if method == "allmrec" else "main"

        def users() -> np.ndarray:
            return self.sample_users(self.base_dataset(), "overall", self.cfg.genres.users)

        def spec() -> dict[str, Any]:
            cfg = self._genre_config()
            stamp = (self.store.get("train/paper") or {}).get("stamp") if method == "allmrec" else self.main_pipe().section("llm")
            return {"kind": "genres", "method": method, "config": dataclasses.asdict(cfg), "users": stable_hash(users().tolist()), "stamp": stamp}

        def run() -> dict[str, Any]:
            mod = optional_module("allmrec.eval.genres")
            cfg = self._genre_config()
            ds = self.base_dataset()
            if cfg.field not in ds.item_fields:
                raise Unavailable(f"dataset {ds.name} has no item field {cfg.field!r} (fields: {', '.join(sorted(ds.item_fields)) or 'none'})")
            if method == "allmrec" and "paper" not in self.variants:
                raise Unavailable("favourite genres need a generating A-LLMRec: enable allmrec.paper_mode (the best mode does not generate)")
            llm, tok = self.main_pipe().load_llm()
            kwargs: dict[str, Any] = {}
            if method == "allmrec":
                from allmrec.align import load_stage2

                pipe = self.pipeline("paper")
                cf = pipe.load_cf()
                kwargs = {"stage2": load_stage2(pipe.stage2_dir, llm=llm, cf_model=cf), "cf_model": cf, "joint_items": pipe.item_table(cf)}
            u = users()
            t0 = time.perf_counter()
            result = mod.favourite_genres(ds, llm, tok, u, config=cfg, **kwargs)
            seconds = time.perf_counter() - t0
            return {"genres": _jsonable(result), "users": [int(x) for x in u], "seconds_per_user": round(seconds / max(len(u), 1), 4)}

        label = self.mode_label("paper") if method == "allmrec" else "LLM-Only"
        needs = ["train/paper"] if method == "allmrec" and "paper" in self.variants else []
        return Step(uid, spec, run, needs=needs, info={"kind": "genres", "method": method, "label": label, "variant": variant})

    # ---- efficiency ----------------------------------------------------------------------------------------------------
    def _efficiency_step(self) -> Step:
        e = self.cfg.efficiency
        names = [n for n in ("paper", "main") if n in self.variants]

        def users() -> np.ndarray:
            return self.sample_users(self.base_dataset(), "overall", e.users)

        def spec() -> dict[str, Any]:
            try:
                tallrec = dataclasses.asdict(self._tallrec_config())
            except Unavailable as err:
                tallrec = str(err)
            stamps = {n: (self.store.get(f"train/{n}") or {}).get("stamp") for n in names}
            return {"kind": "efficiency", "sizes": dataclasses.asdict(e), "users": stable_hash(users().tolist()), "stamps": stamps,
                    "tallrec": tallrec if self.cfg.baselines.enabled and self.cfg.baselines.tallrec else None}

        def run() -> dict[str, Any]:
            return self._efficiency(users(), names)

        return Step("efficiency", spec, run, needs=[f"train/{n}" for n in names], info={"kind": "efficiency"})

    def _efficiency(self, users: np.ndarray, names: list[str]) -> dict[str, Any]:
        from allmrec.align import load_stage2
        from allmrec.recommend import InferenceConfig, evaluate_llm

        e, split, seed = self.cfg.efficiency, self.cfg.eval.split, self.cfg.eval.seed
        ds = self.base_dataset()
        llm, tok = self.main_pipe().load_llm()
        out: dict[str, Any] = {"batch_size": e.batch_size, "train_steps": e.train_steps, "users": len(users), "train": {}, "inference": {}, "notes": []}
        infer = InferenceConfig(mode="rank", seed=seed)
        for name in names:
            key = f"allmrec-{'paper' if name == 'paper' else 'best'}"
            pipe = self.pipeline(name)
            cf = pipe.load_cf()
            joint = pipe.item_table(cf)
            out["train"][key] = time_stage2_training(ds, cf, joint, llm, tok, pipe.stage2_config(), e.train_steps, e.batch_size)
            stage2 = load_stage2(pipe.stage2_dir, llm=llm, cf_model=cf)
            out["inference"][key] = time_inference(lambda: evaluate_llm(ds, llm, tok, split, users, stage2=stage2, cf_model=cf, joint_items=joint, config=infer), len(users))
        from allmrec.llm import PromptConfig

        s2 = self.main_pipe().stage2_config()
        prompt = PromptConfig(style="text", history_len=s2.history_len, max_title_tokens=s2.max_title_tokens)
        out["inference"]["llm-only"] = time_inference(lambda: evaluate_llm(ds, llm, tok, split, users, prompt=prompt, config=infer), len(users))
        if self.cfg.baselines.enabled and self.cfg.baselines.tallrec:
            try:
                mod = optional_module("allmrec.baselines.tallrec")
                self._tallrec.clear()
                base = dataclasses.replace(self._tallrec_config(), batch_size=e.batch_size, epochs=max(self._tallrec_config().epochs, 1000), checkpoint_every=10**9)
                mod.train_tallrec(ds, llm, tok, dataclasses.replace(base, max_steps=1), None, progress=False)  # warm-up, as for A-LLMRec
                model, state = mod.train_tallrec(ds, llm, tok, dataclasses.replace(base, max_steps=e.train_steps), None, progress=False)
                out["train"]["tallrec"] = {"steps": int(state["step"]), "seconds": float(state["seconds"]),
                                           "seconds_per_step": float(state["seconds"]) / max(int(state["step"]), 1)}
                prompt_t = mod.tallrec_prompt_config(model)
                out["inference"]["tallrec"] = time_inference(lambda: evaluate_llm(ds, model, tok, split, users, prompt=prompt_t, config=infer), len(users))
                del model
                free_memory()
            except Unavailable as err:
                out["notes"].append(f"TALLRec not timed: {err}")
        ratios: dict[str, float] = {}
        for key in [k for k in out["train"] if k.startswith("allmrec")]:
            if "tallrec" in out["train"]:
                ratios[f"train: TALLRec / {key}"] = out["train"]["tallrec"]["seconds_per_step"] / out["train"][key]["seconds_per_step"]
            if "tallrec" in out["inference"]:
                ratios[f"inference: TALLRec / {key}"] = out["inference"]["tallrec"]["seconds_per_user"] / out["inference"][key]["seconds_per_user"]
        out["ratios"] = ratios
        out["device"] = str(llm.get_input_embeddings().weight.device)
        out["llm"] = getattr(llm, "allmrec_identity", "")
        return out

    # ---- sizing -------------------------------------------------------------------------------------------------------------
    def plan_summary(self) -> dict[str, Any]:
        """What the plan trains and scores, without running anything (for sizing a config):
        per training unit the CF epochs, stage-1 epochs and stage-2 / TALLRec steps; per evaluation
        unit the users asked for (before reuse between units)."""
        rows: list[dict[str, Any]] = []
        steps = self.steps()
        specs = {s.uid: s for s in self.eval_specs() + self.cross_domain_specs()}
        for st in steps:
            row: dict[str, Any] = {"unit": st.uid, "done": bool(self.store.get(st.uid) and self.store.get(st.uid).get("status") == "done")}
            if st.uid.startswith("train/"):
                name = st.uid.split("/", 1)[1]
                if name in self.variants:
                    pipe = Pipeline(self.variants[name].config, Path("."))
                    needs = self._needs.get(name, set())
                    row["cf"] = f"{pipe.cf_config().backbone} <= {pipe.cf_config().epochs} epochs" + (f" on {self.variants[name].restrict}" if self.variants[name].restrict else "")
                    if "stage2" in needs:
                        s2 = pipe.stage2_config()
                        if s2.item_table == "joint":
                            row["stage1"] = f"{pipe.stage1_config().epochs} epochs"
                        row["stage2_steps"] = s2.max_steps if s2.max_steps is not None else f"{s2.epochs} epochs x all users / {s2.batch_size}"
                else:
                    try:
                        t = self._tallrec_config()
                        row["tallrec_steps"] = t.max_steps if t.max_steps is not None else f"{t.epochs} epochs / {t.batch_size}"
                    except Unavailable as err:
                        row["tallrec_steps"] = str(err)
            elif st.uid in specs:
                s = specs[st.uid]
                row.update(method=s.method, users=s.n_users if s.n_users is not None else "all", llm=s.method != "cf")
            rows.append(row)
        llm_users = sum(r["users"] for r in rows if r.get("llm") and isinstance(r.get("users"), int))
        s2_steps = sum(r["stage2_steps"] for r in rows if isinstance(r.get("stage2_steps"), int))
        t_steps = sum(r["tallrec_steps"] for r in rows if isinstance(r.get("tallrec_steps"), int))
        return {"units": rows, "llm_user_evaluations_at_most": llm_users, "stage2_steps": s2_steps, "tallrec_steps": t_steps,
                "trainings": sum(1 for r in rows if r["unit"].startswith("train/"))}

    # ---- running ----------------------------------------------------------------------------------------------------------
    def run(self, plots: bool = True) -> dict[str, Any]:
        """Run every unit of the plan (skipping finished ones); write results, report and plots."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "experiment.json", self.cfg.to_dict())
        steps = self.steps()
        self._plan = [s.uid for s in steps]
        previous = self.root / "results.json"
        self._past_runs = invocations(read_json(previous)) if previous.exists() else []
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        t0 = time.perf_counter()
        for i, step in enumerate(steps, 1):
            self._run_step(step, i, len(steps))
            self.write_results(started, time.perf_counter() - t0, plots=False)
        return self.write_results(started, time.perf_counter() - t0, plots=plots)

    def _run_step(self, step: Step, i: int, n: int) -> dict[str, Any]:
        prefix = f"[{i}/{n}] {step.uid}"
        for dep in step.needs:
            rec = self.store.get(dep)
            if not rec or rec.get("status") != "done":
                reason = f"needs {dep}, which is {rec.get('status') if rec else 'not run'}" + (f" ({rec.get('reason')})" if rec and rec.get("reason") else "")
                self.console.print(f"{prefix}: [yellow]skipped[/yellow]: {reason}")
                return self.store.write(step.uid, {**step.info, "status": "skipped", "reason": reason})
        t0 = time.perf_counter()
        try:
            spec = step.spec()
            key = stable_hash(spec)
            if self.store.is_done(step.uid, key):
                self.console.print(f"{prefix}: done before, reused")
                return self.store.get(step.uid)
            self.console.print(f"{prefix}: running")
            result = step.run()
        except Unavailable as err:
            self.console.print(f"{prefix}: [yellow]unavailable[/yellow]: {err}")
            return self.store.write(step.uid, {**step.info, "status": "unavailable", "reason": str(err)})
        except Exception as err:  # noqa: BLE001 - recorded, then re-raised unless continue_on_error
            rec = self.store.write(step.uid, {**step.info, "status": "failed", "reason": f"{type(err).__name__}: {err}",
                                              "traceback": traceback.format_exc(limit=8)})
            self.console.print(f"{prefix}: [red]failed[/red]: {type(err).__name__}: {err}")
            if not self.cfg.continue_on_error:
                raise
            return rec
        seconds = time.perf_counter() - t0
        record = {**step.info, "status": "done", "key": key, "spec": spec, **result, "seconds": round(seconds, 2),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": _machine()}
        hit = (result.get("metrics") or {}).get("hit@1")
        self.console.print(f"{prefix}: done in {seconds:.1f} s" + (f", Hit@1 {hit:.4f} on {len(result['users'])} users" if hit is not None else ""))
        return self.store.write(step.uid, record)

    def collect(self, started: str = "", elapsed: float = 0.0) -> dict[str, Any]:
        """``results.json``: the records of the current plan (per-user columns left in the unit files)."""
        plan = self._plan or [s.uid for s in self.steps()]
        units = {uid: _public(self.store.get(uid)) for uid in plan if self.store.get(uid)}
        base_ds = self._datasets and next(iter(self._datasets.values()))
        dataset_name = getattr(base_ds, "name", self.cfg.dataset_name) if base_ds else self.cfg.dataset_name
        variants = {n: {"group": v.group, "alias_of": v.alias_of, "restrict": v.restrict, "identity": v.identity, "config": v.config}
                    for n, v in self.variants.items()}
        return {
            "format": FORMAT,
            "experiment": self.cfg.name,
            "dataset": dataset_name,
            "paper_dataset": self.cfg.resolved_paper_dataset(),
            "paper_nearest_only": self.cfg.dataset_name.lower() in NEAREST_ONLY,
            "base_backbone": self.base_backbone,
            "variant_mode": self.variant_mode,
            "machine": _machine(),
            "started": started,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "this_run_seconds": round(elapsed, 1),
            # a resumed experiment's cost is the sum (unit records keep only their last run's time)
            "invocations": self._past_runs + ([{"started": started, "seconds": round(elapsed, 1)}] if started else []),
            "units_seconds": round(sum(float(u.get("seconds", 0.0)) for u in units.values() if u.get("status") == "done"), 1),
            "plan": plan,
            "config": self.cfg.to_dict(),
            "variants": variants,
            "units": units,
        }

    def write_results(self, started: str = "", elapsed: float = 0.0, plots: bool = True) -> dict[str, Any]:
        from allmrec.experiment.report import write_report

        results = self.collect(started, elapsed)
        write_json(self.root / "results.json", results)
        if plots:
            from allmrec.experiment.plots import write_plots

            results["plots"] = [self._rel(p) for p in write_plots(results, self.root / "plots")]
            write_json(self.root / "results.json", results)
        write_report(results, self.root / "report.md")
        return results

    def _rel(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)


# ---- helpers ---------------------------------------------------------------------------------------------------------------
def _identity(config: dict[str, Any], restrict: str | None) -> str:
    """What a variant trains, with every default filled in (``cf: {}`` and ``cf: {backbone:
    sasrec}`` are the same variant); the ``eval`` section does not count."""
    from allmrec.llm import LLMConfig

    pipe = Pipeline(config, Path("."))
    sections = {"dataset": config.get("dataset"), "text_encoder": config.get("text_encoder", "default"),
                "data": dataclasses.asdict(pipe.data_config()), "cf": _strip(dataclasses.asdict(pipe.cf_config()), "cf"),
                "stage1": _strip(dataclasses.asdict(pipe.stage1_config()), "stage1"), "stage2": _strip(dataclasses.asdict(pipe.stage2_config()), "stage2"),
                "llm": dataclasses.asdict(from_dict(LLMConfig, pipe.section("llm"), where="llm"))}
    return stable_hash({"sections": sections, "restrict": restrict})


def _strip(options: dict[str, Any], section: str) -> dict[str, Any]:
    """``options`` without those that do not change the trained model (threads, logging, ...)."""
    return {k: v for k, v in options.items() if k not in VOLATILE[section]}


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (relative symlink); an existing folder of its own is an error."""
    target.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == rel:
            return
        link.unlink()
    elif link.exists():
        raise ValueError(f"{link} is a folder of its own, not a link to the shared {target.name}: move it away "
                         "(experiment variants share their CF models and stage-1 runs)")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(rel, target_is_directory=True)


def _cf_summary(cf_dir: Path) -> dict[str, Any]:
    path = cf_dir / "trainer_state.json"
    if not path.exists():
        return {}
    state = read_json(path)
    hist = state.get("history", [])
    train = sum(float(h.get("train_seconds", 0.0)) for h in hist)
    evals = sum(float(h.get("eval_seconds", 0.0)) for h in hist)
    return {"backbone": (state.get("config") or {}).get("backbone"), "epochs": state.get("epoch"), "best_epoch": state.get("best_epoch"),
            "best_valid_ndcg@10": state.get("best_metric"), "train_seconds": round(train, 2), "eval_seconds": round(evals, 2)}


def _stage1_summary(result: Any) -> dict[str, Any]:
    hist = list(getattr(result, "history", []) or [])
    last = hist[-1] if hist else {}
    return {"epochs": len(hist), "seconds": round(sum(float(h.get("seconds", 0.0)) for h in hist), 2),
            "last_epoch": {k: last[k] for k in ("loss", "matching", "item_recon", "text_recon", "rec") if k in last}}


def _stage1_hash(stage1_dir: Path) -> str | None:
    latest = stage1_dir / "latest.json"
    if not latest.exists():
        return None
    ckpt = stage1_dir / read_json(latest)["checkpoint"]
    return file_hash(ckpt / "stage1.safetensors")


def _stage2_summary(stage2_dir: Path) -> dict[str, Any]:
    path = stage2_dir / "model.json"
    if not path.exists():
        return {}
    meta = read_json(path)
    state = meta.get("trainer_state") or {}
    cfg = meta.get("stage2") or {}
    steps = int(state.get("step", 0))
    seconds = float(state.get("seconds", 0.0))
    return {"objective": cfg.get("objective"), "residual": cfg.get("residual"), "train_target": cfg.get("train_target"), "item_table": cfg.get("item_table"),
            "batch_size": cfg.get("batch_size"), "steps": steps, "seconds": round(seconds, 2), "seconds_per_step": round(seconds / steps, 4) if steps else None,
            "curve": state.get("curve", []), "loss_log": state.get("loss_log", [])}


def _public(rec: dict[str, Any] | None) -> dict[str, Any]:
    rec = dict(rec or {})
    for key in ("users", "rank", "gen_hit", "gen_no_match", "traceback"):
        if key in rec and isinstance(rec[key], list):
            rec[f"n_{key}"] = len(rec.pop(key))
        elif key == "traceback":
            rec.pop(key, None)
    return rec


def _py(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return x


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else (o.tolist() if hasattr(o, "tolist") else str(o))))


def _machine() -> str:
    from allmrec.eval.report import machine_description

    return machine_description()
