"""A-LLMRec: the frozen LLM reading the soft-token prompt of a trained stage 2, in whichever
mode it was trained (the label says which). ``allmrec-sbert`` feeds ``q_i`` instead of the joint
embedding for items without training interactions (the paper's A-LLMRec (SBERT)). A stage 2 fed
the CF item table (``stage2.model.item_table: cf``) is the MLP-LLM baseline.

A best-mode stage 2 adds its LLM path to the run's fitted fusion; when training found that the
path does not beat the fusion on held-out users (``llm_path: auto``, ``stage2/model.json``
``llm_path``), the method recommends with the fusion alone and its label says so."""

from __future__ import annotations

from typing import Any

from allmrec.align.stage2.config import MODE_LABELS
from allmrec.align.stage2.scoring import Stage2Scorer
from allmrec.llm.reader import PromptReader
from allmrec.methods.base import Method
from allmrec.recommend.base import Recommender
from allmrec.recommend.cf import CFRecommender
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
        label = allmrec_label(cfg.mode_name, sbert=self.use_text != "none")
        return label[:-1] + "; LLM path not adopted)" if not llm_path_adopted(resources) else label

    def build(self, resources: Any, seed: int) -> Recommender:
        cf = resources.cf  # first: a missing CF model is the first step to name
        stage2 = resources.stage2
        prior = resources.fusion if stage2.residual and stage2.config.prior == "fusion" else None
        if not llm_path_adopted(resources):
            return prior if prior is not None else CFRecommender(cf)
        llm, tok = resources.llm
        ds = resources.dataset
        scorer = Stage2Scorer(stage2, resources.trained_item_table(self.use_text), cf, prior=prior)
        return LLMRecommender(PromptReader(llm, tok, ds.titles, ds.wording, stage2.prompt_config(), scorer, seed=seed, progress=True))


def llm_path_adopted(resources: Any) -> bool:
    """Whether the trained stage 2 keeps its LLM path (``llm_path`` in its model.json; a model
    trained before the check existed, or not yet trained, counts as keeping it)."""
    from allmrec.utils.io import read_json

    path = resources.folder.stage2 / "model.json"
    return bool(read_json(path).get("llm_path", {}).get("adopted", True)) if path.exists() else True


class ALLMRecSBERT(ALLMRec):
    name = "allmrec-sbert"
    use_text = "unknown"
