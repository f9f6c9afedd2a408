"""The experiment YAML: a ``base`` pipeline config plus one section per part of the paper's
evaluation suite, each with its sizes and an on/off switch.

Layout (every key optional except ``base``; defaults below)::

    name: beauty_cpu              # experiment folder <out_dir>/<name>; default: the file's stem
    out_dir: runs                 # relative to the current folder
    paper_dataset: ""             # paper column: Beauty, Toys, Video Games, Movies and TV;
                                  # "" = from the dataset name, "none" = no paper column
    continue_on_error: false      # record a failing unit and go on instead of stopping
    base: {dataset, data, cf, text_encoder, stage1, llm, stage2, eval}   # a pipeline config
    eval: {split: test, mode: rank, max_users: 100, seed: 2024}
    allmrec: {paper_mode: true, variant_mode: best}
    baselines: {enabled, cf: [...], morec, ctrl, recformer, llm_only, mlp_llm, tallrec, tallrec_options: {...}}
    scenarios: {enabled, cold_warm, cold_users, few_shot: [256, 128], model_agnostic: [...],
                cross_domain: {enabled, dataset, data, max_users}, max_users: {...}}
    ablations: {enabled, stage1: [...], stage2: [...], max_users}
    efficiency: {enabled, batch_size, train_steps, users}
    genres: {enabled, users, options: {...}}
    overrides: {paper: {...}, cf_baselines: {...}, morec: {...}, ctrl: {...}, recformer: {...}, mlp_llm: {...},
                ablations: {...}, few_shot: {...}, model_agnostic: {...}}

``overrides.<group>`` are pipeline-config fragments (``{stage2: {train: {max_steps: 50}}}``) merged over
``base`` for that group's variants: the way to size each part's training separately.
Errors name the file, the line and the field.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from allmrec.pipeline.config import SECTIONS
from allmrec.config import from_dict, merge, parse_sets
from allmrec.pipeline.config import PipelineConfig, RunConfig

PIPELINE_SECTIONS = SECTIONS
STAGE1_ABLATIONS = {
    "no_matching": {"stage1": {"matching_weight": 0.0}},
    "no_recon": {"stage1": {"alpha": 0.0, "beta": 0.0}},
    "no_rec": {"stage1": {"rec_weight": 0.0}},
    "frozen_encoder": {"stage1": {"freeze_text_encoder": True}},
}
STAGE2_ABLATIONS = {
    "no_user": {"stage2": {"model": {"user_token": False}}},
    "no_joint": {"stage2": {"model": {"item_table": "zeros"}}},
    "random_joint": {"stage2": {"model": {"item_table": "random"}}},
}
OVERRIDE_GROUPS = ("paper", "cf_baselines", "morec", "ctrl", "recformer", "mlp_llm", "ablations", "few_shot", "model_agnostic")
SCENARIO_SAMPLES = ("overall", "cold_items", "warm_items", "cold_users", "few_shot", "model_agnostic", "cross_domain")
BACKBONES = ("sasrec", "gru4rec", "nextitnet", "ncf")
# The paper's dataset a prepared dataset is compared with, by dataset name.
PAPER_DATASETS = {"amazon-beauty": "Beauty", "beauty": "Beauty", "amazon-toys": "Toys", "toys": "Toys",
                  "amazon-games": "Video Games", "video-games": "Video Games", "amazon-movies": "Movies and TV",
                  "movies-and-tv": "Movies and TV", "ml-100k": "Movies and TV", "ml-1m": "Movies and TV"}
# Datasets compared with a *different* paper dataset (the nearest one).
NEAREST_ONLY = {"ml-100k", "ml-1m"}


@dataclass
class EvalSection:
    """How every unit is evaluated: the same split, inference mode, user sample and seed."""

    split: str = "test"
    mode: str = "rank"  # rank | both (adds generation exact match for the LM-loss methods)
    max_users: int | None = 100  # seeded sample per scenario (nested: a smaller sample is a prefix); None = all
    seed: int = 2024


@dataclass
class AllmrecSection:
    """Which A-LLMRec stage-2 modes run (:data:`allmrec.align.stage2.MODES`): the best mode always,
    the paper's LM-loss mode as an extra variant, and which one the other parts use."""

    paper_mode: bool = True  # also train and evaluate the paper's LM-loss mode
    variant_mode: str = "best"  # mode of MLP-LLM, ablations, model-agnostic, few-shot: best | paper


@dataclass
class BaselinesSection:
    enabled: bool = True
    cf: list[str] = field(default_factory=lambda: list(BACKBONES))
    morec: bool = True
    ctrl: bool = True  # CTRL: SASRec initialised by contrastive alignment with the text encoder (allmrec.cf.ctrl)
    recformer: bool = True  # RECFORMER: a text encoder over item sentences (allmrec.cf.recformer)
    llm_only: bool = True
    mlp_llm: bool = True
    tallrec: bool = True
    tallrec_options: dict[str, Any] = field(default_factory=dict)  # TallrecConfig fields


@dataclass
class CrossDomainSection:
    """Train on ``base``, evaluate on another dataset (text-derived item embeddings)."""

    enabled: bool = False
    dataset: str = ""  # preset name or data YAML of the target
    data: dict[str, Any] = field(default_factory=dict)  # PrepareConfig overrides of the target (path, ...)
    max_users: int | None = None  # None: eval.max_users


@dataclass
class ScenariosSection:
    enabled: bool = True
    cold_warm: bool = True
    cold_users: int = 0  # users held out of all training (sets base data.cold_users); 0 = off
    few_shot: list[int] = field(default_factory=lambda: [256, 128])
    model_agnostic: list[str] = field(default_factory=lambda: list(BACKBONES))
    cross_domain: CrossDomainSection = field(default_factory=CrossDomainSection)
    max_users: dict[str, int | None] = field(default_factory=dict)  # per sample, see SCENARIO_SAMPLES


@dataclass
class AblationsSection:
    enabled: bool = True
    stage1: list[str] = field(default_factory=lambda: list(STAGE1_ABLATIONS))
    stage2: list[str] = field(default_factory=lambda: list(STAGE2_ABLATIONS))
    max_users: int | None = None  # None: eval.max_users


@dataclass
class EfficiencySection:
    """A-LLMRec vs TALLRec wall time on the same LLM, data, batch size and machine, one process."""

    enabled: bool = True
    batch_size: int = 4
    train_steps: int = 10  # timed optimiser steps of each model
    users: int = 10  # users timed for inference (rank mode)


@dataclass
class GenresSection:
    enabled: bool = True
    users: int = 20
    options: dict[str, Any] = field(default_factory=dict)  # GenreConfig fields


@dataclass
class ExperimentConfig:
    name: str = ""
    out_dir: str = "runs"
    paper_dataset: str = ""
    continue_on_error: bool = False
    base: dict[str, Any] = field(default_factory=dict)
    eval: EvalSection = field(default_factory=EvalSection)
    allmrec: AllmrecSection = field(default_factory=AllmrecSection)
    baselines: BaselinesSection = field(default_factory=BaselinesSection)
    scenarios: ScenariosSection = field(default_factory=ScenariosSection)
    ablations: AblationsSection = field(default_factory=AblationsSection)
    efficiency: EfficiencySection = field(default_factory=EfficiencySection)
    genres: GenresSection = field(default_factory=GenresSection)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def dataset_name(self) -> str:
        return Path(str(self.base.get("dataset", "ml-100k"))).stem

    def resolved_paper_dataset(self) -> str | None:
        """The paper's dataset to compare with (``None``: no paper column)."""
        if self.paper_dataset.lower() == "none":
            return None
        if self.paper_dataset:
            return self.paper_dataset
        name = str((self.base.get("data") or {}).get("name") or self.dataset_name).lower()
        return PAPER_DATASETS.get(name) or PAPER_DATASETS.get(self.dataset_name.lower())

    @staticmethod
    def stage2_mode(mode: str) -> dict[str, Any]:
        """The ``stage2`` fragment that selects ``mode``."""
        return {"mode": mode}


class ExperimentConfigError(ValueError):
    """A bad experiment YAML; the message names the file, line and field."""


def load_experiment(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read, check and resolve an experiment YAML.

    Parameters
    ----------
    path : the YAML file.
    sets : ``key.path=value`` overrides (values parsed as YAML), e.g. ``ablations.enabled=false``
        or ``base.stage2.train.max_steps=20``.

    Relative data paths are resolved against the current folder (as the pipeline does) so the
    variants' saved configs work from anywhere.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"experiment config not found: {path}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ExperimentConfigError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ExperimentConfigError(f"{path}:1: the top level must be a mapping (name, base, baselines, ...)")
    lines = _key_lines(text)
    data = merge(data, parse_sets(list(sets)))
    return parse_experiment(data, where=str(path), lines=lines, default_name=path.stem)


def parse_experiment(data: dict[str, Any], where: str = "experiment", lines: dict[tuple[str, ...], int] | None = None,
                     default_name: str = "experiment") -> ExperimentConfig:
    """Build and check an :class:`ExperimentConfig` from a mapping (see :func:`load_experiment`)."""
    lines = lines or {}

    def fail(keys: tuple[str, ...], message: str) -> None:
        line = _nearest_line(lines, keys)
        dotted = ".".join(keys)
        raise ExperimentConfigError(f"{where}:{line}: {dotted}: {message}" if line else f"{where}: {dotted}: {message}")

    data = copy.deepcopy(data)
    _check_unknown(ExperimentConfig, data, (), fail)
    if "base" not in data or not isinstance(data["base"], dict):
        fail(("base",), "required: the pipeline config (dataset, data, cf, stage1, llm, stage2, ...) every variant starts from")
    for key in data["base"]:
        if key not in PIPELINE_SECTIONS:
            fail(("base", key), f"unknown pipeline section; valid: {', '.join(PIPELINE_SECTIONS)}")
    for group, fragment in (data.get("overrides") or {}).items():
        if group not in OVERRIDE_GROUPS:
            fail(("overrides", group), f"unknown group; valid: {', '.join(OVERRIDE_GROUPS)}")
        if not isinstance(fragment, dict):
            fail(("overrides", group), "expected a pipeline-config fragment such as {stage2: {train: {max_steps: 50}}}")
        for key in fragment:
            if key.split(".")[0] not in PIPELINE_SECTIONS:
                fail(("overrides", group, key), f"unknown pipeline section; valid: {', '.join(PIPELINE_SECTIONS)}")
    try:
        cfg = from_dict(ExperimentConfig, data, where=where)
    except (TypeError, ValueError) as err:
        # from_dict names the section in its message ("<where>: <section>: ..."); find its line.
        section = str(err).removeprefix(f"{where}: ").split(":")[0].strip()
        fail((section,), str(err).removeprefix(f"{where}: {section}: ").removeprefix(f"{where}: "))
    cfg.name = cfg.name or default_name
    cfg.base = merge(dataclasses.asdict(PipelineConfig()), cfg.base)  # the pipeline's defaults under the file's values
    _check_values(cfg, fail)
    _resolve_paths(cfg)
    if cfg.scenarios.enabled and cfg.scenarios.cold_users > 0:
        data_section = cfg.base.setdefault("data", {})
        held = int(data_section.get("cold_users") or 0)
        if held and held != cfg.scenarios.cold_users:
            fail(("scenarios", "cold_users"), f"{cfg.scenarios.cold_users} differs from base.data.cold_users={held}; set one of them")
        data_section["cold_users"] = cfg.scenarios.cold_users
    _check_pipeline(cfg, fail)
    return cfg


# ---- checks ------------------------------------------------------------------------------------
def _check_unknown(cls: type, data: Any, keys: tuple[str, ...], fail) -> None:
    if not isinstance(data, dict):
        fail(keys, f"expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            fail((*keys, str(key)), f"unknown option; valid: {', '.join(sorted(fields))}")
        tp = fields[key].type
        sub = _DATACLASS_FIELDS.get(tp if isinstance(tp, str) else getattr(tp, "__name__", ""))
        if sub is not None and value is not None:
            _check_unknown(sub, value, (*keys, key), fail)


def _check_values(cfg: ExperimentConfig, fail) -> None:
    if cfg.eval.mode not in ("rank", "both"):
        fail(("eval", "mode"), f"expected rank or both, got {cfg.eval.mode!r}")
    if cfg.eval.split not in ("test", "valid"):
        fail(("eval", "split"), f"expected test or valid, got {cfg.eval.split!r}")
    if cfg.allmrec.variant_mode not in ("best", "paper"):
        fail(("allmrec", "variant_mode"), f"expected best or paper, got {cfg.allmrec.variant_mode!r}")
    if cfg.allmrec.variant_mode == "paper" and not cfg.allmrec.paper_mode:
        fail(("allmrec", "variant_mode"), "'paper' needs allmrec.paper_mode: true")
    for name, value in (("eval.max_users", cfg.eval.max_users), ("ablations.max_users", cfg.ablations.max_users),
                        ("scenarios.cross_domain.max_users", cfg.scenarios.cross_domain.max_users)):
        if value is not None and int(value) < 1:
            fail(tuple(name.split(".")), f"must be >= 1 or null, got {value}")
    for sample, value in cfg.scenarios.max_users.items():
        if sample not in SCENARIO_SAMPLES:
            fail(("scenarios", "max_users", sample), f"unknown sample; valid: {', '.join(SCENARIO_SAMPLES)}")
        if value is not None and int(value) < 1:
            fail(("scenarios", "max_users", sample), f"must be >= 1 or null, got {value}")
    for bb in cfg.baselines.cf:
        if bb not in BACKBONES:
            fail(("baselines", "cf"), f"unknown CF baseline {bb!r}; valid: {', '.join(BACKBONES)} (MoRec: baselines.morec)")
    for bb in cfg.scenarios.model_agnostic:
        if bb not in BACKBONES:
            fail(("scenarios", "model_agnostic"), f"unknown backbone {bb!r}; valid: {', '.join(BACKBONES)}")
    for k in cfg.scenarios.few_shot:
        if not isinstance(k, int) or k < 1:
            fail(("scenarios", "few_shot"), f"expected positive user counts K, got {k!r}")
    for name in cfg.ablations.stage1:
        if name not in STAGE1_ABLATIONS:
            fail(("ablations", "stage1"), f"unknown ablation {name!r}; valid: {', '.join(STAGE1_ABLATIONS)}")
    for name in cfg.ablations.stage2:
        if name not in STAGE2_ABLATIONS:
            fail(("ablations", "stage2"), f"unknown ablation {name!r}; valid: {', '.join(STAGE2_ABLATIONS)}")
    cd = cfg.scenarios.cross_domain
    if cfg.scenarios.enabled and cd.enabled and not cd.dataset:
        fail(("scenarios", "cross_domain", "dataset"), "required when cross_domain is enabled (a preset name or data YAML)")
    eff = cfg.efficiency
    for name in ("batch_size", "train_steps", "users"):
        if int(getattr(eff, name)) < 1:
            fail(("efficiency", name), f"must be >= 1, got {getattr(eff, name)}")
    if int(cfg.genres.users) < 1:
        fail(("genres", "users"), f"must be >= 1, got {cfg.genres.users}")
    if cfg.baselines.enabled and cfg.baselines.tallrec and cfg.baselines.tallrec_options:
        from allmrec.baselines.tallrec import TallrecConfig

        _check_options(TallrecConfig, cfg.baselines.tallrec_options, ("baselines", "tallrec_options"), fail)
    if cfg.genres.enabled and cfg.genres.options:
        from allmrec.experiment.genres import GenreConfig

        _check_options(GenreConfig, cfg.genres.options, ("genres", "options"), fail)


def _check_options(cls: type, options: dict[str, Any], keys: tuple[str, ...], fail) -> None:
    try:
        from_dict(cls, options, where=".".join(keys))
    except (TypeError, ValueError) as err:
        fail(keys, str(err).removeprefix(".".join(keys) + ": "))


def _check_pipeline(cfg: ExperimentConfig, fail) -> None:
    """Build every option dataclass of ``base`` (and of ``base`` + each override group) once, so
    a bad option fails now and not an hour into the run."""
    fragments = [((), {})] + [(("overrides", g), f) for g, f in cfg.overrides.items()]
    fragments += [(("allmrec",), {"stage2": cfg.stage2_mode(mode)}) for mode in ("best", "paper")]
    for keys, fragment in fragments:
        run = RunConfig(merge(cfg.base, fragment))
        for section, build in (("data", run.data), ("cf", run.cf), ("stage1", run.stage1), ("stage2", run.stage2), ("eval", run.eval), ("llm", run.llm)):
            try:
                build()
            except (TypeError, ValueError, KeyError, FileNotFoundError) as err:
                fail(keys + (section,) if keys else ("base", section), str(err).removeprefix(f"{section}: "))
    cd = cfg.scenarios.cross_domain
    if cfg.scenarios.enabled and cd.enabled:
        try:
            RunConfig({"dataset": cd.dataset, "data": cd.data}).data()
        except (TypeError, ValueError, KeyError, FileNotFoundError) as err:
            fail(("scenarios", "cross_domain"), str(err))


def _resolve_paths(cfg: ExperimentConfig) -> None:
    for section in (cfg.base.get("data") or {}, cfg.scenarios.cross_domain.data):
        p = section.get("path")
        if p and not str(p).startswith("pkg:") and not Path(str(p)).is_absolute():
            section["path"] = str(Path(str(p)).resolve())
    llm = cfg.base.get("llm") or {}
    p = llm.get("name_or_path")
    if p and p != "default" and Path(str(p)).exists():
        llm["name_or_path"] = str(Path(str(p)).resolve())


# ---- YAML line numbers ------------------------------------------------------------------------------
def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key path in a YAML document."""
    out: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*prefix, str(k.value))
                out[key] = k.start_mark.line + 1
                walk(v, key)

    walk(root, ())
    return out


def _nearest_line(lines: dict[tuple[str, ...], int], keys: tuple[str, ...]) -> int | None:
    for n in range(len(keys), 0, -1):
        if keys[:n] in lines:
            return lines[keys[:n]]
    return None


_DATACLASS_FIELDS: dict[str, type] = {
    "EvalSection": EvalSection,
    "AllmrecSection": AllmrecSection,
    "BaselinesSection": BaselinesSection,
    "CrossDomainSection": CrossDomainSection,
    "ScenariosSection": ScenariosSection,
    "AblationsSection": AblationsSection,
    "EfficiencySection": EfficiencySection,
    "GenresSection": GenresSection,
}
