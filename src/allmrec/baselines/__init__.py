"""Baselines of the paper that are not CF backbones: TALLRec (LoRA fine-tuning of the LLM).

MoRec (SASRec over text-encoder item embeddings) is a CF backbone: :mod:`allmrec.cf.morec`.
"""

from allmrec.baselines.tallrec import (
    TallrecConfig,
    load_tallrec,
    tallrec_inference_model,
    tallrec_prompt_config,
    train_tallrec,
)

__all__ = ["TallrecConfig", "load_tallrec", "tallrec_inference_model", "tallrec_prompt_config", "train_tallrec"]
