"""Fusion: the run's CF model, a text tower and item-text similarities (the frozen encoder's,
stage 1's ``q_i`` and ``e_i``) combined per candidate by a small listwise net, with no LLM
forward. It is the best mode's prior (the LLM path adds a residual to it) and, alone, the
controls "Text similarity" and "SASRec + text (no LLM)" of docs/allround.md.

:mod:`.features` (candidate features), :mod:`.tower` (the text tower), :mod:`.model` (the net),
:mod:`.training` (fitting on validation items of training users), :mod:`.scorer` (a fitted
fusion as a recommender, its files).
"""

from allmrec.fusion.features import FeatureSources, similarity_features
from allmrec.fusion.model import Design, Fusion
from allmrec.fusion.scorer import FusedScorer
from allmrec.fusion.tower import TextTower, TowerConfig, train_text_tower
from allmrec.fusion.training import FusionConfig, control_config, fit_fusion

__all__ = ["Design", "FeatureSources", "FusedScorer", "Fusion", "FusionConfig", "TextTower", "TowerConfig", "control_config", "fit_fusion",
           "similarity_features", "train_text_tower"]
