"""A-LLMRec: the frozen LLM reading the soft-token prompt of a trained stage 2, in whichever
mode it was trained (the label says which). ``allmrec-sbert`` feeds ``q_i`` instead of the joint
embedding for items without training interactions (the paper's A-LLMRec (SBERT)). A stage 2 fed
the CF item table (``stage2.model.item_table: cf``) is the MLP-LLM baseline."""

from __future__ import annotations

from typing import Any

from allmrec.align.stage2.config import MODE_LABELS
from allmrec.align.stage2.scoring import Stage2Scorer
from allmrec.llm.reader import PromptReader
from allmrec.methods.base import Method
from allmrec.recommend.llm import LLMRecommender


def allmrec_label(mode: str, sbert: bool = False) -> str:
    """``A-LLMRec (best mode: listwise residual)``, ``A-LLMRec (SBERT) (paper: LM loss)``, ..."""
    return f"A-LLMRec{' (SBERT)' if sbert else ''} ({MODE_LABELS[mode]})"


class ALLMRec(Method):
    name = "allmrec"
    needs = ("cf", "stage1", "stage2")
    uses_llm = True
    use_text = "none"

    def label(self, resources: Any) -> str:
        cfg = resources.trained_stage2_config()
        if cfg.model.item_table == "cf":
            return f"MLP-LLM ({MODE_LABELS[cfg.mode_name]})"
        return allmrec_label(cfg.mode_name, sbert=self.use_text != "none")

    def build(self, resources: Any, seed: int) -> LLMRecommender:
        cf = resources.cf  # first: a missing CF model is the first step to name
        stage2 = resources.stage2
        llm, tok = resources.llm
        ds = resources.dataset
        scorer = Stage2Scorer(stage2, resources.trained_item_table(self.use_text), cf)
        return LLMRecommender(PromptReader(llm, tok, ds.titles, ds.wording, stage2.prompt_config(), scorer, seed=seed, progress=True))


class ALLMRecSBERT(ALLMRec):
    name = "allmrec-sbert"
    use_text = "unknown"
