"""A run folder and what it holds, loaded on demand.

:class:`RunFolder` is the layout (one folder per step, each a training run of
:mod:`allmrec.training`, finished when it holds ``done.json``)::

    config.yaml   the resolved configuration of the last command
    cf/           the CF model            stage1/   stage 1
    fusion/       the fitted fusions (fusion/: the best mode's prior, control/: SASRec + text)
    stage2/       stage 2                 tallrec/  the TALLRec baseline (LoRA)
    results/      evaluation results (<split>.json, <split>.md)

:class:`Resources` loads what a step or a method needs, once: the prepared dataset, the LLM,
and the trained models, each identified by its own files (a config that disagrees with a
trained model is an error that names both).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from allmrec.pipeline.config import RunConfig
from allmrec.training import is_finished
from allmrec.utils.io import atomic_path, clear_temporary


_COMMANDS = {"cf": "allmrec train-cf", "stage1": "allmrec align", "stage2": "allmrec train", "tallrec": "allmrec experiment"}


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def cf(self) -> Path:
        return self.root / "cf"

    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    @property
    def fusion(self) -> Path:
        return self.root / "fusion"

    @property
    def stage2(self) -> Path:
        return self.root / "stage2"

    @property
    def tallrec(self) -> Path:
        return self.root / "tallrec"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def finished(self, step: str) -> bool:
        """Whether the training run of ``step`` (``cf``, ``stage1``, ``fusion``, ``stage2``, ``tallrec``) finished."""
        return is_finished(self.root / step)

    def require_finished(self, step: str) -> None:
        """Refuse to read the model of a training that was interrupted (a checkpoint there, no
        ``done.json``): its files are an unfinished run's (for the CF model, the best epoch so far)."""
        folder = getattr(self, step)
        if (folder / "latest.json").exists() and not is_finished(folder):
            command = _COMMANDS[step]
            raise ValueError(f"{folder}: its training was interrupted (a checkpoint, no done.json), so its model is not final; "
                             f"run `{command} --run {self.root}` again to resume and finish it")

    def save_config(self, config: RunConfig) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        clear_temporary(self.root)  # what a crashed command's write left (only the run's commands write here)
        path = self.root / "config.yaml"
        with atomic_path(path) as tmp:
            tmp.write_text(config.to_yaml())
        return path


class Resources:
    """What a run's steps and methods read, loaded once.

    ``dataset`` / ``llm`` may be given as providers (the experiment suite shares one dataset and
    one LLM between its run folders); by default they are prepared / loaded from the config.
    """

    def __init__(self, config: RunConfig, folder: RunFolder, dataset: Callable[[], Any] | None = None, llm: Callable[[], Any] | None = None) -> None:
        self.config, self.folder = config, folder
        self._dataset_provider, self._llm_provider = dataset, llm

    def forget(self, *names: str) -> None:
        """Drop loaded objects (a step that has just trained a model), so the next use reloads them."""
        for name in names:
            self.__dict__.pop(name, None)

    @cached_property
    def dataset(self):
        if self._dataset_provider is not None:
            return self._dataset_provider()
        from allmrec.data import prepare

        return prepare(self.config.data())

    @cached_property
    def llm(self) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of the frozen LLM."""
        if self._llm_provider is not None:
            return self._llm_provider()
        from allmrec.llm import load_llm

        return load_llm(self.config.llm())

    @cached_property
    def cf(self):
        """The trained CF model, as its own ``model.json`` describes it."""
        from allmrec.cf.io import load_cf, saved_backbone
        from allmrec.cf.registry import get_backbone_class

        self.folder.require_finished("cf")
        where = self.folder.cf
        if not (where / "model.safetensors").exists():
            raise FileNotFoundError(f"no trained CF model in {where}; run `allmrec train-cf --run {self.folder.root}` first")
        saved, asked = saved_backbone(where), self.config.cf().backbone
        if saved != asked:
            raise ValueError(f"{where}: the run holds a {saved!r} CF model, but the configuration asks for cf.backbone={asked!r}; "
                             f"set cf.backbone: {saved} (or use another --run folder)")
        needs_text = getattr(get_backbone_class(saved), "needs_item_text", False)
        return load_cf(where, dataset=self.dataset if needs_text else None)

    @cached_property
    def stage1(self):
        """``(model, text_encoder, config)`` of the trained stage 1."""
        from allmrec.align.stage1 import load_stage1

        self.folder.require_finished("stage1")
        if not (self.folder.stage1 / "model.json").exists():
            raise FileNotFoundError(f"no trained stage 1 in {self.folder.stage1}; run `allmrec align --run {self.folder.root}` first")
        return load_stage1(self.folder.stage1)

    @cached_property
    def stage2(self):
        """The trained stage-2 model (checked against the LLM, CF model and fusion it was trained with)."""
        from allmrec.align.stage2 import load_stage2
        from allmrec.utils.io import read_json

        self.folder.require_finished("stage2")
        path = self.folder.stage2 / "model.json"
        if not path.exists():
            raise FileNotFoundError(f"no stage-2 model in {self.folder.stage2}; run `allmrec train --run {self.folder.root}` first")
        model = read_json(path)["stage2"]["model"]
        prior = self.fusion if model.get("residual") and model.get("prior") == "fusion" else None
        return load_stage2(self.folder.stage2, llm=self.llm[0], cf_model=self.cf, prior=prior)

    @cached_property
    def text_table(self) -> np.ndarray:
        """``(n_items + 1, d)`` item embeddings of the frozen text encoder (``text_encoder``)."""
        from allmrec.text import item_text_embeddings, load_text_encoder

        return item_text_embeddings(load_text_encoder(self.config.text_encoder), self.dataset).numpy()

    def fusion_tables(self, names: list[str]) -> dict[str, np.ndarray]:
        """The item tables a fusion's similarities read, by :class:`~allmrec.fusion.FusionConfig` name."""
        tables = {"text": lambda: self.text_table, "stage1_q": lambda: self.joint_items("all").numpy(), "stage1_e": lambda: self.joint_items("none").numpy()}
        return {name: tables[name]() for name in names}

    def fitted_fusion(self, name: str = "fusion"):
        """A fitted fusion of the run (``fusion``: the best mode's prior; ``control``), rebuilt
        on the run's CF model and tables."""
        from allmrec.fusion.scorer import FusedScorer
        from allmrec.fusion.training import load_sources

        where = self.folder.fusion / name
        if not is_finished(where):
            raise FileNotFoundError(f"no fitted fusion in {where}; run `allmrec fuse --run {self.folder.root}` first")
        meta, tensors = FusedScorer.read(where)
        return FusedScorer.from_saved(meta, tensors, load_sources(self, meta, tensors))

    @cached_property
    def fusion(self):
        return self.fitted_fusion("fusion")

    @cached_property
    def control(self):
        return self.fitted_fusion("control")

    @cached_property
    def tallrec(self):
        from allmrec.baselines.tallrec import load_tallrec

        self.folder.require_finished("tallrec")
        if not (self.folder.tallrec / "model.json").exists():
            raise FileNotFoundError(f"no TALLRec model in {self.folder.tallrec}; train it first (the experiment suite does)")
        return load_tallrec(self.folder.tallrec, self.llm[0])

    def joint_items(self, use_text: str = "none") -> torch.Tensor:
        """The ``(n_items + 1, d')`` joint embedding table stage 2 reads.

        ``use_text``: ``"none"`` (e_i for every item, the paper's default), ``"unknown"`` (q_i for
        items without training interactions: A-LLMRec (SBERT)) or ``"all"`` (q_i everywhere).
        """
        from allmrec.align.stage1 import joint_item_table, untrained_item_mask
        from allmrec.text.embeddings import item_text_embeddings

        model, encoder, _ = self.stage1
        ds, text, mask = self.dataset, None, None
        if use_text != "none":
            text = item_text_embeddings(encoder, ds)
            mask = untrained_item_mask(ds) if use_text == "unknown" else np.ones(ds.n_items + 1, dtype=bool)
            mask[0] = False
        with torch.no_grad():
            return joint_item_table(model, self.cf.item_embeddings().detach().float(), text, mask)

    def item_table(self, kind: str, seed: int, use_text: str = "none") -> torch.Tensor:
        """The table the stage-2 item soft tokens read (``stage2.model.item_table``): the joint
        embeddings, the CF item embeddings (MLP-LLM), seeded random rows or zeros (ablations)."""
        if kind == "joint":
            return self.joint_items(use_text)
        table = self.cf.item_embeddings().detach().float().cpu()
        if kind == "cf":
            return table.clone()
        if kind == "zeros":
            return torch.zeros_like(table)
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(table.shape, generator=gen) * table[1:].std()

    def trained_stage2_config(self):
        """The stage-2 config the trained model was made with (the current one before training)."""
        from allmrec.align.stage2 import stage2_config
        from allmrec.utils.io import read_json

        path = self.folder.stage2 / "model.json"
        return stage2_config(read_json(path)["stage2"], where=str(path)) if path.exists() else self.config.stage2()

    def trained_item_table(self, use_text: str = "none") -> torch.Tensor:
        """The item table of the trained stage-2 model, as its own config names it."""
        meta = self.stage2.meta["stage2"]
        return self.item_table(meta["model"]["item_table"], meta["train"]["seed"], use_text)
