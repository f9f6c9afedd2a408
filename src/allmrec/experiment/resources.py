"""What an experiment's units share in one process: one prepared dataset (and its few-shot views),
one LLM per LLM config, the variants' run folders with their :class:`Resources`, the TALLRec
models, and the seeded user samples.

Artifacts that variants share are trained once: ``<variant>/cf`` and ``<variant>/stage1`` are
links into ``<experiment>/shared/``, keyed by the options that define them (see
:func:`allmrec.experiment.plan.shared_names`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from allmrec.config import from_dict
from allmrec.experiment.config import ExperimentConfig
from allmrec.experiment.plan import Variant, shared_names
from allmrec.experiment.store import stable_hash
from allmrec.pipeline.config import RunConfig
from allmrec.pipeline.resources import Resources, RunFolder
from allmrec.utils.io import write_json


class SharedResources:
    def __init__(self, cfg: ExperimentConfig, root: Path, variants: dict[str, Variant]) -> None:
        self.cfg, self.root, self.variants = cfg, root, variants
        self._datasets: dict[str, Any] = {}
        self._llms: dict[str, Any] = {}
        self._runs: dict[str, Resources] = {}
        self._tallrec: dict[str, Any] = {}
        self._samples: dict[tuple[int, str, int | None], np.ndarray] = {}
        self.needs: dict[str, set[str]] = {}  # per variant: "cf" and/or "stage2" (set by the runner's plan)

    def actual(self, name: str) -> Variant:
        v = self.variants[name]
        return self.variants[v.alias_of] if v.alias_of else v

    # ---- datasets and LLMs ----------------------------------------------------------------------------
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

    # ---- run folders --------------------------------------------------------------------------------------
    def run(self, name: str) -> Resources:
        """The :class:`Resources` of variant ``name`` (an alias: its original's)."""
        v = self.actual(name)
        if v.name not in self._runs:
            config = RunConfig(v.config)
            res = Resources(config, RunFolder(self.root / v.name), dataset=lambda: self.dataset(config.data(), v.restrict),
                            llm=lambda: self.llm(config.section("llm")))
            cf_name, s1_name = shared_names(v)
            link(res.folder.cf, self.root / "shared" / cf_name)
            if "stage2" in self.needs.get(v.name, ()) and config.stage2().model.item_table == "joint":
                link(res.folder.stage1, self.root / "shared" / s1_name)
            # What `allmrec evaluate --run <folder>` cannot know from config.yaml alone.
            write_json(res.folder.root / "experiment-variant.json", {"experiment": str(self.root), "variant": v.name, "group": v.group,
                                                                     "training_users": v.restrict or "all", "shared": {"cf": cf_name, "stage1": s1_name}})
            self._runs[v.name] = res
        return self._runs[v.name]

    @property
    def main(self) -> Resources:
        return self.run("main")

    def target_dataset(self):
        cd = self.cfg.scenarios.cross_domain
        return self.dataset(RunConfig({"dataset": cd.dataset, "data": cd.data}).data())

    def sample_users(self, ds: Any, scenario: str, n: int | None) -> np.ndarray:
        """The seeded evaluable users of ``scenario``: a prefix of one seeded permutation, so
        smaller samples are subsets of larger ones."""
        from allmrec.data import get_scenario
        from allmrec.eval.users import evaluable, sample_users

        key = (id(ds), scenario, n)
        if key not in self._samples:
            pool = evaluable(ds, get_scenario(ds, scenario).eval_users)
            self._samples[key] = sample_users(pool, n, self.cfg.eval.seed, "experiment-users", scenario, nested=True)
        return self._samples[key]

    # ---- TALLRec -----------------------------------------------------------------------------------------
    def tallrec_config(self):
        """TallrecConfig from ``baselines.tallrec_options``; the prompt and data sizes the paper
        keeps equal to A-LLMRec's default to the base stage-2 settings."""
        from allmrec.baselines.tallrec import TallrecConfig, stage2_sizes

        values = {**stage2_sizes(self.main.config.stage2()), **self.cfg.baselines.tallrec_options}
        return from_dict(TallrecConfig, values, where="baselines.tallrec_options")

    def tallrec_model(self, name: str, model: Any | None = None):
        """The TALLRec model of run ``name`` (one LoRA copy in memory at a time)."""
        from allmrec.baselines.tallrec import load_tallrec

        if model is not None or name not in self._tallrec:
            self.drop_tallrec()
            self._tallrec[name] = model if model is not None else load_tallrec(self.root / name, self.main.llm[0])
        return self._tallrec[name]

    def drop_tallrec(self) -> None:
        self._tallrec.clear()
        free_memory()


def link(link_path: Path, target: Path) -> None:
    """``link_path`` -> ``target`` (relative symlink); an existing folder of its own is an error."""
    target.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, link_path.parent)
    if link_path.is_symlink():
        if os.readlink(link_path) == rel:
            return
        link_path.unlink()
    elif link_path.exists():
        raise ValueError(f"{link_path} is a folder of its own, not a link to the shared {target.name}: move it away "
                         "(experiment variants share their CF models and stage-1 runs)")
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(rel, target_is_directory=True)


def free_memory() -> None:
    """Collect garbage and free cached accelerator memory (after dropping a model)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
