"""Stage 1 of A-LLMRec: the autoencoders and losses (:mod:`.model`), their training (:mod:`.training`)."""

from allmrec.align.stage1.model import Stage1Config, Stage1Model, joint_item_table, untrained_item_mask
from allmrec.align.stage1.training import Stage1Result, load_stage1, stage1_summary, train_stage1

__all__ = ["Stage1Config", "Stage1Model", "Stage1Result", "joint_item_table", "load_stage1", "stage1_summary", "train_stage1", "untrained_item_mask"]
