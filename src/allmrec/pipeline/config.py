"""A run's configuration: one nested mapping with a section per step, layered as built-in
defaults < the run folder's saved ``config.yaml`` < ``--config FILE`` < command-line flags <
``--set section.key=value`` (the CLI, the pipeline and the experiment suite all build it here).

Sections: ``dataset`` (a preset name or a data YAML) and ``data`` (PrepareConfig overrides),
``cf`` (TrainCFConfig), ``text_encoder``, ``stage1`` (Stage1Config), ``llm`` (LLMConfig),
``fusion`` (FusionConfig), ``stage2`` (``mode`` + ``model`` + ``train``: Stage2Config),
``eval`` (EvalOptions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from allmrec.config import from_dict, merge, parse_sets, read_config_file

EVAL_MODES = ("rank", "generate", "both")


@dataclass
class EvalOptions:
    """What ``allmrec evaluate`` scores, and on which users."""

    split: str = "test"
    methods: list[str] = field(default_factory=lambda: ["cf", "llm-only", "allmrec"])
    mode: str = "rank"  # rank | generate | both (LLM methods that generate)
    max_users: int | None = None  # seeded sample of evaluated users; None = all
    scenarios: list[str] = field(default_factory=lambda: ["overall", "cold_items", "warm_items"])
    seed: int = 2024

    def __post_init__(self) -> None:
        if self.mode not in EVAL_MODES:
            raise ValueError(f"eval.mode: expected one of {', '.join(EVAL_MODES)}, got {self.mode!r}")
        if self.split not in ("test", "valid"):
            raise ValueError(f"eval.split: expected test or valid, got {self.split!r}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"eval.max_users: must be >= 1 or null, got {self.max_users}")


@dataclass
class PipelineConfig:
    """Top-level sections and their defaults (each section's options are its dataclass's)."""

    dataset: str = "ml-100k"
    data: dict[str, Any] = field(default_factory=dict)
    cf: dict[str, Any] = field(default_factory=dict)
    text_encoder: str = "default"
    stage1: dict[str, Any] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


SECTIONS = tuple(f.name for f in dataclasses.fields(PipelineConfig))


def demo_config_file() -> Path:
    return Path(str(resources.files("allmrec") / "configs" / "demo.yaml"))


def check_sections(layer: dict[str, Any], where: str) -> None:
    for key in layer:
        section = str(key).split(".", 1)[0]
        if section not in SECTIONS:
            raise ValueError(f"{where}: unknown section {section!r}; valid: {', '.join(sorted(SECTIONS))}")


class RunConfig:
    """A resolved configuration (``values``) with a typed view of each section."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values = merge(dataclasses.asdict(PipelineConfig()), values or {})

    @classmethod
    def layered(cls, run_dir: Path | None = None, config_file: Path | None = None, flags: dict[str, Any] | None = None,
                sets: list[str] | tuple[str, ...] = ()) -> tuple["RunConfig", Path]:
        """defaults < the run folder's saved config < ``config_file`` < ``flags`` < ``sets``;
        returns the config and the run folder (``--run``, the file's ``run:`` key, or
        ``runs/<dataset>``). Flags that are ``None`` were not given and are left out."""
        file_cfg = read_config_file(config_file) if config_file else {}
        run_key = file_cfg.pop("run", None)
        if run_dir is None and run_key:
            run_dir = Path(run_key)
        layers: list[tuple[str, dict[str, Any]]] = []
        if run_dir is not None and (run_dir / "config.yaml").exists():
            layers.append((str(run_dir / "config.yaml"), read_config_file(run_dir / "config.yaml")))
        if config_file:
            layers.append((str(config_file), file_cfg))
        layers.append(("command line", {k: v for k, v in (flags or {}).items() if v is not None}))
        layers.append(("--set", parse_sets(list(sets))))
        values = dataclasses.asdict(PipelineConfig())
        for where, layer in layers:
            check_sections(layer, where)
            values = merge(values, layer)
        config = cls(values)
        if run_dir is None:
            run_dir = Path("runs") / Path(str(config.values["dataset"])).stem
        return config, Path(run_dir).resolve()

    def with_values(self, *layers: dict[str, Any]) -> "RunConfig":
        return RunConfig(merge(self.values, *layers))

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.values.get(name) or {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.values, sort_keys=False)

    # ---- typed sections -------------------------------------------------------------------------
    @property
    def text_encoder(self) -> str:
        return str(self.values["text_encoder"])

    def data(self):
        from allmrec.data import PrepareConfig, load_preset

        name = str(self.values["dataset"])
        if name.endswith((".yaml", ".yml")):
            base = dataclasses.asdict(from_dict(PrepareConfig, read_config_file(name), where=name))
        else:
            base = dataclasses.asdict(load_preset(name))
        return from_dict(PrepareConfig, merge(base, self.section("data")), where="data")

    def cf(self):
        from allmrec.cf import TrainCFConfig

        return from_dict(TrainCFConfig, self.section("cf"), where="cf")

    def stage1(self):
        from allmrec.align.stage1 import Stage1Config

        cfg = from_dict(Stage1Config, self.section("stage1"), where="stage1")
        cfg.validate()
        return cfg

    def fusion(self):
        from allmrec.fusion import FusionConfig

        return from_dict(FusionConfig, self.section("fusion"), where="fusion")

    def stage2(self):
        from allmrec.align.stage2 import stage2_config

        return stage2_config(self.section("stage2"))

    def llm(self):
        from allmrec.llm import LLMConfig

        return from_dict(LLMConfig, self.section("llm"), where="llm")

    def eval(self) -> EvalOptions:
        return from_dict(EvalOptions, self.section("eval"), where="eval")

    def check(self) -> None:
        """Build every section once, so a bad option fails now and not an hour into a run."""
        for build in (self.data, self.cf, self.stage1, self.fusion, self.stage2, self.llm, self.eval):
            build()
