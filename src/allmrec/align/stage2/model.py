"""The stage-2 model (paper eq. 7): the projectors ``F_U: d_cf -> H`` and ``F_I: d' -> H`` that
turn ``x^u`` and the joint item embeddings into soft tokens of the frozen LLM, and (listwise
objective) the head that scores candidates from the LLM's hidden states.

``F_U``/``F_I`` are 2-layer MLPs as in the authors' code: ``Linear(d, H) -> LayerNorm(H) ->
LeakyReLU (F_U) / GELU (F_I) -> Linear(H, H)``, Xavier normal weights, no output normalisation
(the LLM reads the raw projection).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from allmrec.align.stage2.config import Stage2ModelConfig
from allmrec.align.stage2.listwise import ScoreHead, candidate_states
from allmrec.llm.prompt import Prompt, PromptConfig
from allmrec.llm.splice import splice


def _mlp(d_in: int, d_out: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), act, nn.Linear(d_out, d_out))


class Stage2Model(nn.Module):
    """The two projectors (and the listwise head) of stage 2.

    Parameters
    ----------
    user_dim : width of ``x^u`` (the CF model's dim).
    item_dim : width of the joint item embeddings (stage-1 ``d'``).
    hidden : the LLM's token-embedding width.
    config : the model options (objective, residual, head width, prompt).
    seed : seeds the initialisation (Xavier normal weights, PyTorch-default uniform biases).
    soft_norm : target norm of every soft token (``None``: raw projections, as in the paper).

    Notes
    -----
    A soft token that is exactly zero at position 0 gives NaN gradients in SmolLM2; the
    non-zero initial biases keep ``F_U`` away from that (do not zero them).
    """

    def __init__(self, user_dim: int, item_dim: int, hidden: int, config: Stage2ModelConfig | None = None, seed: int = 0,
                 soft_norm: float | None = None) -> None:
        super().__init__()
        self.config = config = config or Stage2ModelConfig()
        self.user_dim, self.item_dim, self.hidden = int(user_dim), int(item_dim), int(hidden)
        self.user_proj = _mlp(user_dim, hidden, nn.LeakyReLU())
        self.item_proj = _mlp(item_dim, hidden, nn.GELU())
        gen = torch.Generator().manual_seed(int(seed))
        for mlp in (self.user_proj, self.item_proj):
            for layer in (mlp[0], mlp[3]):
                nn.init.xavier_normal_(layer.weight, generator=gen)
                bound = 1.0 / math.sqrt(layer.weight.shape[1])
                nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
        self.head = ScoreHead(hidden, config.head_width, seed) if config.objective == "listwise" else None
        if soft_norm:
            self.register_buffer("soft_norm", torch.tensor(float(soft_norm)))
        else:
            self.soft_norm = None
        self.meta: dict[str, Any] = {}  # identities and training state (set by training / loading)

    @property
    def device(self) -> torch.device:
        return self.user_proj[0].weight.device

    @property
    def objective(self) -> str:
        return self.config.objective

    @property
    def residual(self) -> bool:
        return self.config.residual

    def prompt_config(self) -> PromptConfig:
        """The prompt settings this model was trained with."""
        return self.config.prompt_config()

    def forward(self, user_reps: torch.Tensor, item_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(O_u, O_i) = (F_U(x^u), F_I(e_i))``."""
        return self.user_proj(user_reps), self.item_proj(item_vectors)

    def soft_vectors(self, prompts: Sequence[Prompt], user_reps: torch.Tensor | None, joint_items: torch.Tensor) -> torch.Tensor:
        """One vector per soft token of ``prompts`` in order of appearance, ``(n_soft, H)``.

        ``user_reps[b]`` is ``x^u`` of prompt ``b`` (needed when the prompts have a user token);
        item tokens read ``joint_items[item]``.
        """
        weight = self.user_proj[0].weight
        order: list[int] = []
        items: list[int] = []
        n_users = len(prompts)
        for b, prompt in enumerate(prompts):
            for tok in prompt.soft_tokens:
                if tok.kind == "user":
                    order.append(b)
                else:
                    order.append(n_users + len(items))
                    items.append(tok.item)
        if not order:
            return weight.new_zeros((0, self.hidden))
        pieces = []
        if any(i < n_users for i in order):
            if user_reps is None:
                raise ValueError("the prompts have a user soft token but no user representations were given")
            pieces.append(self.user_proj(user_reps.to(weight)))
        else:
            pieces.append(weight.new_zeros((n_users, self.hidden)))
        if items:
            idx = torch.as_tensor(items, dtype=torch.long, device=joint_items.device)
            pieces.append(self.item_proj(joint_items[idx].to(weight)))
        table = torch.cat(pieces, 0)
        if self.soft_norm is not None:
            table = table * (self.soft_norm / table.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return table[torch.as_tensor(order, device=table.device)]

    def listwise_states(self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], user_reps: torch.Tensor | None,
                        joint_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM's hidden states at the candidates' soft tokens and at the prompt's end."""
        n_cand = len(prompts[0].candidates)
        if any(len(p.candidates) != n_cand for p in prompts):
            raise ValueError("listwise scoring needs the same number of candidates in every prompt of a batch")
        soft = self.soft_vectors(prompts, user_reps, joint_items)
        batch = splice(prompts, tokenizer, llm.get_input_embeddings(), soft, padding_side="left")
        return candidate_states(llm, batch, n_cand)

    def score_states(self, h_cand: torch.Tensor, h_last: torch.Tensor, cf_scores: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(B, C)`` from :meth:`listwise_states` (plus the CF scores for a residual model)."""
        if self.head is None:
            raise ValueError("this stage-2 model was trained with the LM objective; it has no listwise head")
        if self.residual:
            if cf_scores is None:
                raise ValueError("a residual stage-2 model needs the CF model's candidate scores")
            return self.head(h_cand, h_last, cf_scores.to(h_cand.device))
        return self.head(h_cand, h_last)

    def listwise_scores(self, llm: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], user_reps: torch.Tensor | None, joint_items: torch.Tensor,
                        cf_scores: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(B, C)`` of each prompt's candidates in display order (listwise objective)."""
        h_cand, h_last = self.listwise_states(llm, tokenizer, prompts, user_reps, joint_items)
        return self.score_states(h_cand, h_last, cf_scores)
