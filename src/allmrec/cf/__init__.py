"""Collaborative-filtering backbones (SASRec, GRU4Rec, NextItNet, NCF, MoRec), their training and evaluation."""

from allmrec.cf.base import CFBackbone, CFConfig, available_backbones, build_backbone, get_backbone_class, register_backbone
from allmrec.cf.evaluate import evaluate_cf, score_candidates, user_representations
from allmrec.cf.trainer import TrainCFConfig, load_cf, save_cf, train_cf
from allmrec.cf import morec as _morec  # noqa: F401  (registers "morec"; base.py's built-in list predates it)

__all__ = [
    "CFBackbone",
    "CFConfig",
    "TrainCFConfig",
    "available_backbones",
    "build_backbone",
    "evaluate_cf",
    "get_backbone_class",
    "load_cf",
    "register_backbone",
    "save_cf",
    "score_candidates",
    "train_cf",
    "user_representations",
]
