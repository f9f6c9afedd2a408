"""A fitted fusion at work: the candidate features of queries through the fitted nets (seeds
averaged), minus ``beta`` times the candidates' z-scored popularity (the cold/warm operating
point chosen on validation users). A :class:`~allmrec.recommend.Recommender`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allmrec.data.queries import Queries
from allmrec.fusion.features import FeatureSources, zscore
from allmrec.fusion.model import Design, Fusion
from allmrec.recommend.base import Recommender
from allmrec.utils.fingerprint import state_fingerprint, strings_fingerprint
from allmrec.utils.io import load_tensors, read_json, save_tensors, write_json

FORMAT = "allmrec-fusion/1"


class FusedScorer(Recommender):
    def __init__(self, sources: FeatureSources, design: Design, nets: list[Fusion], beta: float = 0.0, meta: dict[str, Any] | None = None) -> None:
        self.sources, self.design, self.nets, self.beta = sources, design, nets, float(beta)
        self.meta = meta or {}
        self.n_items = len(sources.item_counts) - 1

    def identity(self) -> str:
        """A fingerprint of the fitted nets and ``beta`` (what a stage 2 on top of it was made for)."""
        return strings_fingerprint([state_fingerprint(net.state_dict()) for net in self.nets] + [repr(self.beta), repr(self.design.experts)])

    def raw_scores(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """The nets' mean score, before the popularity offset."""
        Z, G = self.design.inputs(feats)
        with torch.no_grad():
            return np.mean([net(Z, G).numpy() for net in self.nets], 0)

    def score_features(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        s = self.raw_scores(feats)
        return s - self.beta * zscore(feats["logpop"]) if self.beta else s

    def score(self, queries: Queries) -> np.ndarray:
        return self.score_features(self.sources.features(self.check(queries)))

    def add_items(self, experts: dict[str, Any], rows: dict[str, np.ndarray]) -> None:
        """Score new items too (see :meth:`FeatureSources.grown`; a text tower among the experts
        gets the new items' ``text`` rows)."""
        tower = self.sources.experts.get("tower")
        if tower is not None and "tower" not in experts:
            tower.add_items(rows["text"])
        self.sources = self.sources.grown(experts, {name: r for name, r in rows.items() if name in self.sources.tables})
        self.n_items = len(self.sources.item_counts) - 1

    # ---- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
        folder = Path(folder)
        tensors = {f"seed{i}.{k}": v for i, net in enumerate(self.nets) for k, v in net.state_dict().items()}
        tensors.update(extra_tensors or {})
        save_tensors(folder / "model.safetensors", tensors, metadata={"format": FORMAT})
        nets = [{"k": len(self.design.experts), "m": len(self.design.gates) + len(self.design.extras), "n_gate": len(self.design.gates),
                 "kind": n.kind, "width": n.net[0].out_features if n.net is not None else 64} for n in self.nets]
        write_json(folder / "model.json", {**self.meta, "format": FORMAT, "design": asdict(self.design), "beta": self.beta, "nets": nets})
        return folder

    @staticmethod
    def read(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(meta, tensors)`` of a saved fusion (the caller rebuilds its feature sources)."""
        folder = Path(folder)
        if not (folder / "model.json").exists():
            raise FileNotFoundError(f"{folder}: no fitted fusion (model.json); run `allmrec fuse` first")
        meta = read_json(folder / "model.json")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder / 'model.json'}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        return meta, load_tensors(folder / "model.safetensors")

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], sources: FeatureSources) -> "FusedScorer":
        design = Design(**meta["design"])
        nets = []
        for i, spec in enumerate(meta["nets"]):
            net = Fusion(spec["k"], spec["m"], spec["n_gate"], spec["kind"], spec["width"])
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"seed{i}.")})
            nets.append(net.eval())
        return cls(sources, design, nets, meta["beta"], {k: v for k, v in meta.items() if k not in ("design", "nets", "beta", "format")})
