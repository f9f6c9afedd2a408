"""GRU4Rec (Hidasi et al., ICLR 2016) as a next-item model over user sequences.

Item embeddings (with dropout) feed a GRU whose hidden size is ``dim``; the hidden state at each
position predicts the next item, trained with the same BCE-with-one-negative objective as SASRec
(the original's session-parallel mini-batches and TOP1/BPR losses are not reproduced). The user
representation is the hidden state after the last item.

Left padding is removed before the GRU (rows are packed by length), so the output does not
depend on padding: a GRU fed zero vectors would still move its state through its biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from allmrec.cf.base import CFConfig
from allmrec.cf.sequential import SequentialBackbone


@dataclass
class GRU4RecConfig(CFConfig):
    """GRU4Rec options; ``dropout`` applies to the input embeddings (and between GRU layers)."""

    n_layers: int = 1
    dropout: float = 0.3


class GRU4Rec(SequentialBackbone):
    name: ClassVar[str] = "gru4rec"
    config_class: ClassVar[type[CFConfig]] = GRU4RecConfig
    padding_invariant: ClassVar[bool] = True
    config: GRU4RecConfig

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__(config)
        d = config.dim
        self.gru = nn.GRU(d, d, num_layers=config.n_layers, batch_first=True, dropout=config.dropout if config.n_layers > 1 else 0.0)
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def sequence_output(self, histories: torch.Tensor) -> torch.Tensor:
        histories = self._clip(histories)
        b, length = histories.shape
        lengths = (histories != 0).sum(1)
        pad = length - lengths
        cols = torch.arange(length, device=histories.device).unsqueeze(0)
        # Left-padded -> right-padded (rotate each row by its padding), run packed, rotate back.
        to_right = (cols + pad.unsqueeze(1)) % length
        x = self.emb_dropout(self.item_emb(histories.gather(1, to_right)))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        to_left = (cols - pad.unsqueeze(1)) % length
        out = out.gather(1, to_left.unsqueeze(-1).expand(b, length, out.shape[-1]))
        return out * (histories != 0).unsqueeze(-1)
