"""Alignment stages of A-LLMRec: stage 1 (CF item embeddings <-> text) and stage 2 (-> LLM)."""

# Stage 1 (allmrec.align.stage1)
from allmrec.align.stage1 import (
    Stage1Config,
    Stage1Model,
    Stage1Result,
    joint_item_table,
    load_stage1,
    train_stage1,
    untrained_item_mask,
)
from allmrec.text.embeddings import item_text_embeddings

# Stage 2 (allmrec.align.stage2)
from allmrec.align.stage2 import Stage2Config, Stage2Model, load_stage2, save_stage2, train_stage2

__all__ = [
    "Stage1Config",
    "Stage1Model",
    "Stage1Result",
    "Stage2Config",
    "Stage2Model",
    "item_text_embeddings",
    "joint_item_table",
    "load_stage1",
    "load_stage2",
    "save_stage2",
    "train_stage1",
    "train_stage2",
    "untrained_item_mask",
]
