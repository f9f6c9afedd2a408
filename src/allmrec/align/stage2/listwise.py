"""The listwise output head of stage 2 (``objective: listwise``): the frozen LLM reads the
A-LLMRec prompt once and the 20 candidates are scored from its hidden states, instead of asking
the LLM to spell out a title.

Why: with a small LLM and a CPU budget, the paper's next-token loss on the target title teaches
the answer format but not the collaborative signal (see docs/modes.md). Scoring from the hidden
states gives every training example a gradient that says *which* candidate is right.

For candidate ``j`` the LLM's final hidden state at its item soft token, ``h_j`` (it has read the
user token, the history, the candidate's title and its soft token), and the state at the last
prompt position, ``h_last``, feed a 2-layer MLP with two outputs, ``delta_j`` and ``gate_j``:

* ``residual: true``  ``s_j = exp(gate_j) * z_j + delta_j`` where ``z_j`` is the frozen CF
  model's score of candidate ``j`` standardised over the user's candidates. The MLP's last layer
  starts at zero, so training starts exactly at the CF model's ranking and the LLM path learns
  what to add (text knowledge for cold items) and how much to trust the CF score per candidate.
* ``residual: false`` ``s_j = delta_j`` (the LLM path alone).

The loss is the cross-entropy of the true candidate among the shown ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from allmrec.llm.scoring import body_and_head
from allmrec.llm.splice import SplicedBatch


class ScoreHead(nn.Module):
    """``(h_j, h_last) -> (delta_j, gate_j)``; the last layer is zero-initialised."""

    def __init__(self, hidden: int, width: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.hidden, self.width = int(hidden), int(width)
        self.net = nn.Sequential(nn.Linear(2 * hidden, width), nn.GELU(), nn.Linear(width, 2))
        gen = torch.Generator().manual_seed(int(seed) + 7)
        nn.init.xavier_normal_(self.net[0].weight, generator=gen)
        nn.init.zeros_(self.net[0].bias)
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, h_cand: torch.Tensor, h_last: torch.Tensor, cf_scores: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(B, C)`` from ``h_cand`` ``(B, C, H)``, ``h_last`` ``(B, H)`` and optional CF
        scores ``(B, C)`` (raw; standardised here)."""
        dtype = self.net[0].weight.dtype
        h_cand = h_cand.to(dtype)
        feats = torch.cat([h_cand, h_last.to(dtype).unsqueeze(1).expand_as(h_cand)], -1)
        out = self.net(feats)
        delta, gate = out[..., 0], out[..., 1]
        if cf_scores is None:
            return delta
        return gate.clamp(-5, 5).exp() * standardize(cf_scores.to(dtype)) + delta


def standardize(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-row z-scores (a CF model's raw scale is arbitrary; the head sees comparable numbers)."""
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, keepdim=True, unbiased=False)
    return (scores - mean) / (std + eps)


def candidate_states(llm: nn.Module, batch: SplicedBatch, n_candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h_cand, h_last)``: final hidden states at each row's last ``n_candidates`` soft tokens
    (the candidates' item tokens, in display order) ``(B, C, H)`` and at its last real position
    ``(B, H)``. The batch must hold prompts only (no targets)."""
    kwargs = dict(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False)
    parts = body_and_head(llm)
    if parts is not None:
        hidden = parts[0](**kwargs).last_hidden_state
    else:
        hidden = llm(**kwargs, output_hidden_states=True).hidden_states[-1]
    counts = batch.soft_mask.sum(1)
    if bool((counts < n_candidates).any()):
        raise ValueError(f"every prompt needs {n_candidates} candidate soft tokens; some have {int(counts.min())} soft tokens in all")
    b_idx, p_idx = batch.soft_mask.nonzero(as_tuple=True)
    rank = torch.cumsum(batch.soft_mask.long(), 1)[b_idx, p_idx] - 1  # 0-based slot number within the row
    keep = rank >= (counts[b_idx] - n_candidates)
    pos = p_idx[keep].view(-1, n_candidates)
    rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
    h_cand = hidden[rows, pos]
    cols = torch.arange(hidden.shape[1], device=hidden.device)
    last = (batch.attention_mask * cols).argmax(1)  # last real position, whichever side is padded
    h_last = hidden[rows.squeeze(1), last]
    return h_cand, h_last


def listwise_loss(scores: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true candidate (column ``target_pos[b]`` of row ``b``)."""
    return F.cross_entropy(scores.float(), target_pos.to(scores.device))
