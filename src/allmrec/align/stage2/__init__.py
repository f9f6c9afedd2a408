"""Stage 2 of A-LLMRec: project the joint embeddings and the user representation into the frozen
LLM's token space (paper eq. 7-8), or score candidates from its hidden states (the best mode).

:mod:`.config` (modes, model and training options), :mod:`.model` (projectors, head),
:mod:`.examples` (training examples), :mod:`.training`, :mod:`.scoring` (a trained model at
work), :mod:`.io` (files and identities).
"""

from allmrec.align.stage2.config import MODE_LABELS, MODES, Stage2Config, Stage2ModelConfig, Stage2TrainConfig, stage2_config
from allmrec.align.stage2.io import load_stage2, save_stage2
from allmrec.align.stage2.model import Stage2Model
from allmrec.align.stage2.scoring import Stage2Scorer
from allmrec.align.stage2.training import train_stage2

__all__ = ["MODES", "MODE_LABELS", "Stage2Config", "Stage2Model", "Stage2ModelConfig", "Stage2Scorer", "Stage2TrainConfig", "load_stage2", "save_stage2",
           "stage2_config", "train_stage2"]
