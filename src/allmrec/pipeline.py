"""The pipeline behind the CLI: one run folder, one step per method, each reused or resumed.

    raw data -> prepared dataset (cache) -> CF model (run/cf) -> stage 1 (run/stage1)
             -> stage 2 (run/stage2) -> evaluation (run/results)

The configuration is one nested mapping with a section per step; ``PipelineConfig`` lists them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from allmrec.config import read_config_file
from allmrec.utils.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What ``allmrec evaluate`` scores, and on which users."""

    split: str = "test"
    methods: list[str] = field(default_factory=lambda: ["cf", "llm-only", "allmrec"])
    mode: str = "rank"  # rank | generate | both (LLM methods only)
    max_users: int | None = None  # seeded sample of evaluated users; None = all
    scenarios: list[str] = field(default_factory=lambda: ["overall", "cold_items", "warm_items"])
    seed: int = 2024


@dataclass
class PipelineConfig:
    """Top-level sections. ``data``/``cf``/``stage1``/``llm``/``stage2`` take the options of
    PrepareConfig, TrainCFConfig, Stage1Config, LLMConfig and Stage2Config respectively."""

    dataset: str = "ml-100k"  # a preset name or a YAML file holding a data config
    data: dict[str, Any] = field(default_factory=dict)
    cf: dict[str, Any] = field(default_factory=dict)
    text_encoder: str = "default"
    stage1: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


SECTIONS = {f.name for f in dataclasses.fields(PipelineConfig)}


def demo_config_file() -> Path:
    return Path(str(resources.files("allmrec") / "configs" / "demo.yaml"))


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["cf.epochs=20", "eval.methods=[cf,allmrec]"]`` -> ``{"cf.epochs": 20, ...}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in update.items():
        if "." in key:
            section, sub = key.split(".", 1)
            _check_section(section, where)
            if value is not None:
                base.setdefault(section, {})
                _merge(base[section], {sub: value}, where)
            continue
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, where)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _check_section(section: str, where: str) -> None:
    if section not in SECTIONS:
        raise ValueError(f"{where}: unknown section {section!r}; valid: {', '.join(sorted(SECTIONS))}")


class Pipeline:
    """A resolved configuration plus its run folder."""

    def __init__(self, config: dict[str, Any], run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self._dataset = None

    # ---- configuration --------------------------------------------------------------------
    @classmethod
    def from_sources(cls, run: Path | None = None, config_file: Path | None = None, sets: list[str] = (),
                     flags: dict[str, Any] | None = None) -> "Pipeline":
        """defaults < the run folder's saved config < ``config_file`` < flags < ``--set``."""
        cfg = dataclasses.asdict(PipelineConfig())
        layers: list[tuple[str, dict[str, Any]]] = []
        file_cfg = read_config_file(config_file) if config_file else {}
        run_key = file_cfg.pop("run", None)
        flags = dict(flags or {})
        run_dir = Path(run) if run else None
        if run_dir is None and run_key:
            run_dir = Path(run_key)
        if run_dir is not None and (run_dir / "config.yaml").exists():
            layers.append((str(run_dir / "config.yaml"), read_config_file(run_dir / "config.yaml")))
        if config_file:
            layers.append((str(config_file), file_cfg))
        layers.append(("command line", flags))
        layers.append(("--set", parse_sets(list(sets))))
        for where, layer in layers:
            for key in layer:
                _check_section(key.split(".", 1)[0], where)
            _merge(cfg, layer, where)
        if run_dir is None:
            run_dir = Path("runs") / Path(str(cfg["dataset"])).stem
        return cls(cfg, run_dir.resolve())

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name) or {})

    def save_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.yaml"
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return path

    # ---- steps ------------------------------------------------------------------------------
    def data_config(self):
        from allmrec.config import from_dict
        from allmrec.data import PrepareConfig, load_preset

        name = str(self.config["dataset"])
        if name.endswith((".yaml", ".yml")):
            base = dataclasses.asdict(from_dict(PrepareConfig, read_config_file(name), where=name))
        else:
            base = dataclasses.asdict(load_preset(name))
        base.update(self.section("data"))
        return from_dict(PrepareConfig, base, where="data")

    def prepare(self, force: bool = False, show: bool = False):
        from allmrec.data import prepare

        if self._dataset is None or force:
            self._dataset = prepare(self.data_config(), force=force)
        if show:
            from allmrec.data import dataset_dir, print_stats

            print_stats(self._dataset)
            print(f"prepared dataset (statistics in meta.json): {dataset_dir(self.data_config())}")
        return self._dataset

    # ---- CF -----------------------------------------------------------------------------------
    @property
    def cf_dir(self) -> Path:
        return self.run_dir / "cf"

    def cf_config(self):
        from allmrec.config import from_dict
        from allmrec.cf import TrainCFConfig

        return from_dict(TrainCFConfig, self.section("cf"), where="cf")

    def train_cf(self, show: bool = False):
        from allmrec.cf import load_cf, train_cf

        ds = self.prepare()
        self.save_config()
        if (self.cf_dir / "model.safetensors").exists() and (self.cf_dir / "done.json").exists():
            log.info("CF model already trained in %s; reusing it", self.cf_dir)
            model = load_cf(self.cf_dir)
        else:
            model, _ = train_cf(ds, self.cf_config(), self.cf_dir, resume=True, progress=True)
            from allmrec.utils.io import write_json

            write_json(self.cf_dir / "done.json", {"finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if show:
            from allmrec.cf import evaluate_cf

            users = self.eval_users(ds, "valid")
            metrics = evaluate_cf(model, ds, "valid", users)
            print(f"{model.name} validation ({len(users)} users): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "users"))
            print(f"model: {self.cf_dir / 'model.safetensors'}")
        return model

    def load_cf(self):
        from allmrec.cf import load_cf

        if not (self.cf_dir / "model.safetensors").exists():
            raise FileNotFoundError(f"no trained CF model in {self.cf_dir}; run `allmrec train-cf --run {self.run_dir}` first")
        return load_cf(self.cf_dir)

    # ---- evaluation helpers ---------------------------------------------------------------------
    def eval_options(self) -> EvalOptions:
        from allmrec.config import from_dict

        return from_dict(EvalOptions, self.section("eval"), where="eval")

    def eval_users(self, ds, split: str, max_users: int | None = None) -> np.ndarray:
        """Users evaluated on ``split``: all users whose split is defined (cold users only on test),
        or a seeded sample of ``max_users`` of them (the same sample for every method)."""
        from allmrec.utils.seed import rng

        opts = self.eval_options()
        users = np.arange(ds.n_users) if split == "test" else np.flatnonzero(ds.train_users)
        users = users[[len(ds.sequences[u]) >= 3 for u in users]]
        limit = max_users if max_users is not None else opts.max_users
        if limit is not None and limit < len(users):
            users = np.sort(rng(opts.seed, "eval-users", split).choice(users, size=limit, replace=False))
        return users
