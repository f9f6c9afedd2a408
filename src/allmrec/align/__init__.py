"""Alignment stages of A-LLMRec: stage 1 (CF item embeddings <-> text) and stage 2 (-> LLM)."""

from allmrec.align.stage1 import Stage1Config, Stage1Model, Stage1Result, joint_item_table, load_stage1, train_stage1, untrained_item_mask
from allmrec.align.stage2 import Stage2Config, Stage2Model, Stage2ModelConfig, Stage2Scorer, Stage2TrainConfig, load_stage2, save_stage2, stage2_config, train_stage2

__all__ = [
    "Stage1Config",
    "Stage1Model",
    "Stage1Result",
    "Stage2Config",
    "Stage2Model",
    "Stage2ModelConfig",
    "Stage2Scorer",
    "Stage2TrainConfig",
    "joint_item_table",
    "load_stage1",
    "load_stage2",
    "save_stage2",
    "stage2_config",
    "train_stage1",
    "train_stage2",
    "untrained_item_mask",
]
