"""A trained stage 2 at work on batches of prompts: the soft tokens ``F_U(x^u)``, ``F_I(e_i)``
(``x^u`` from the frozen CF model), and the listwise head's candidate scores (on top of the
prior's scores for a residual model: the CF model's, or the fitted fusion's).

:class:`Stage2Scorer` is what inference (:mod:`allmrec.recommend`) and stage 2's own learning
curve both call, so the two score a prompt the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from allmrec.align.stage2.model import Stage2Model
from allmrec.cf.base import CFBackbone
from allmrec.cf.evaluate import candidate_scores, user_representations
from allmrec.data.queries import Queries
from allmrec.llm.prompt import Prompt


@dataclass
class Stage2Scorer:
    """A stage-2 model with what it reads: the joint item table, the frozen CF model and, for a
    model with ``prior: fusion``, the fitted fusion (a :class:`~allmrec.recommend.Recommender`)."""

    stage2: Stage2Model
    joint_items: torch.Tensor
    cf_model: CFBackbone | None = None
    cf_batch_size: int = 256
    prior: Any = None

    @property
    def listwise(self) -> bool:
        return self.stage2.head is not None

    def user_reps(self, users: Sequence[int], histories: Sequence[Sequence[int]]) -> torch.Tensor:
        if self.cf_model is None:
            raise ValueError("the prompts have a user soft token but no CF model was given")
        return user_representations(self.cf_model, list(users), list(histories), self.cf_batch_size, trim=False)

    def base_scores(self, users: Sequence[int], histories: Sequence[Sequence[int]], shown: np.ndarray) -> torch.Tensor | None:
        """The prior's scores of the shown candidates, for a residual model (else ``None``)."""
        if not self.stage2.residual:
            return None
        if self.stage2.config.prior == "fusion":
            if self.prior is None:
                raise ValueError("this stage-2 model adds its LLM path to the run's fitted fusion (stage2.model.prior: fusion), but no fusion "
                                 "was given; run `allmrec fuse`, or train with stage2.mode: cf-residual")
            queries = Queries(np.asarray(users), [np.asarray(h) for h in histories], shown, [str(u) for u in users])
            return torch.as_tensor(self.prior.score(queries), dtype=torch.float32)
        if self.cf_model is None:
            raise ValueError("a residual stage-2 model needs the CF model's candidate scores")
        return candidate_scores(self.cf_model, list(users), list(histories), shown, self.cf_batch_size, trim=False)

    def soft_vectors(self, prompts: Sequence[Prompt], users: Sequence[int], histories: Sequence[Sequence[int]]) -> torch.Tensor:
        needs_user = any(t.kind == "user" for p in prompts for t in p.soft_tokens)
        x_u = self.user_reps(users, histories) if needs_user else None
        return self.stage2.soft_vectors(prompts, x_u, self.joint_items.to(self.stage2.device))

    def states(self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], users: Sequence[int], histories: Sequence[Sequence[int]]):
        """The LLM's hidden states ``(h_cand, h_last)`` the listwise head reads."""
        x_u = self.user_reps(users, histories) if self.cf_model is not None else None
        return self.stage2.listwise_states(llm, tokenizer, prompts, x_u, self.joint_items.to(self.stage2.device))

    def listwise_scores(self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], users: Sequence[int], histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Head scores ``(B, C)`` of a listwise stage-2 model (candidates in display order)."""
        if self.cf_model is None:
            raise ValueError("a listwise stage-2 model needs the CF model (user token and residual score)")
        h_cand, h_last = self.states(llm, tokenizer, prompts, users, histories)
        shown = np.asarray([p.candidates for p in prompts], dtype=np.int64)
        return self.stage2.score_states(h_cand, h_last, self.base_scores(users, histories, shown))
