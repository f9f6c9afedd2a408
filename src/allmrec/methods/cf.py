"""The run's CF backbone (SASRec, GRU4Rec, NextItNet, NCF, MoRec, ...) scoring on its own."""

from __future__ import annotations

from typing import Any

from allmrec.methods.base import BACKBONE_LABELS, Method
from allmrec.recommend.cf import CFRecommender


class CF(Method):
    name = "cf"
    needs = ("cf",)

    def label(self, resources: Any) -> str:
        name = resources.config.cf().backbone
        return BACKBONE_LABELS.get(name, name)

    def build(self, resources: Any, seed: int) -> CFRecommender:
        return CFRecommender(resources.cf)
