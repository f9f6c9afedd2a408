"""Collaborative-filtering backbones (SASRec, GRU4Rec, NextItNet, NCF, MoRec), their training and evaluation."""

from allmrec.cf.base import CFBackbone, CFConfig
from allmrec.cf.evaluate import candidate_scores, evaluate_cf, score_candidates, user_representations
from allmrec.cf.io import load_cf, save_cf
from allmrec.cf.registry import available_backbones, build_backbone, get_backbone_class, register_backbone
from allmrec.cf.training import TrainCFConfig, train_cf

__all__ = [
    "CFBackbone",
    "CFConfig",
    "TrainCFConfig",
    "available_backbones",
    "build_backbone",
    "candidate_scores",
    "evaluate_cf",
    "get_backbone_class",
    "load_cf",
    "register_backbone",
    "save_cf",
    "score_candidates",
    "train_cf",
    "user_representations",
]
