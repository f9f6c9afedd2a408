"""What a method is: a name, a table label, what it needs trained, and how to build its
:class:`~allmrec.recommend.Recommender` from a run's :class:`~allmrec.pipeline.resources.Resources`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from allmrec.recommend.base import Recommender

# How tables name CF backbones (the CF method's label follows the trained model's backbone).
BACKBONE_LABELS = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "nextitnet": "NextItNet", "ncf": "NCF", "morec": "MoRec"}


class Method(ABC):
    """A way to recommend, built from a trained run.

    ``needs`` names the run's training steps it reads (``cf``, ``stage1``, ``stage2``,
    ``tallrec``); ``uses_llm`` whether it runs the LLM (its evaluation costs LLM forwards).
    """

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    uses_llm: ClassVar[bool] = False

    @abstractmethod
    def label(self, resources: Any) -> str:
        """How tables name this method for ``resources``' run (e.g. the CF backbone, the mode)."""

    @abstractmethod
    def build(self, resources: Any, seed: int) -> Recommender:
        """The recommender; ``seed`` seeds anything drawn per query (an LLM prompt's candidate order)."""
