"""NextItNet (Yuan et al., WSDM 2019): a stack of dilated causal 1-D convolutions.

Each residual block (the paper's Fig. 4b) is: dilated causal conv (dilation ``r``) -> LayerNorm
-> ReLU -> dilated causal conv (dilation ``2r``) -> LayerNorm -> ReLU, added to the block input.
Causality comes from left zero-padding each convolution by ``(kernel_size - 1) * dilation``.
The hidden state at each position predicts the next item with the shared BCE-with-one-negative
objective (the paper uses a full softmax; BCE keeps all sequential backbones comparable); the
user representation is the last position's state.

Padding positions are zeroed after every convolution, so they look exactly like the convolution's
own zero padding and the output does not depend on how much left padding a history carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from allmrec.cf.base import CFConfig
from allmrec.cf.sequential import SequentialBackbone


@dataclass
class NextItNetConfig(CFConfig):
    """NextItNet options: one residual block per entry of ``dilations`` (each block uses ``r`` and
    ``2r``); the default ``(1, 4, 1, 4)`` with kernel 3 sees 61 positions, more than ``max_len``."""

    dilations: tuple[int, ...] = (1, 4, 1, 4)
    kernel_size: int = 3
    dropout: float = 0.2  # on the input embeddings


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilations = (dilation, 2 * dilation)
        self.conv1 = nn.Conv1d(dim, dim, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size, dilation=2 * dilation)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def _causal(self, conv: nn.Conv1d, x: torch.Tensor, dilation: int) -> torch.Tensor:
        # x: (B, L, d) -> causal conv over L -> (B, L, d)
        y = F.pad(x.transpose(1, 2), ((self.kernel_size - 1) * dilation, 0))
        return conv(y).transpose(1, 2)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self._causal(self.conv1, x, self.dilations[0]))) * keep
        h = F.relu(self.norm2(self._causal(self.conv2, h, self.dilations[1]))) * keep
        return x + h


class NextItNet(SequentialBackbone):
    name: ClassVar[str] = "nextitnet"
    config_class: ClassVar[type[CFConfig]] = NextItNetConfig
    padding_invariant: ClassVar[bool] = True
    config: NextItNetConfig

    def __init__(self, config: NextItNetConfig) -> None:
        super().__init__(config)
        if not config.dilations or any(int(r) <= 0 for r in config.dilations):
            raise ValueError(f"NextItNetConfig.dilations must be positive integers, got {config.dilations}")
        d = config.dim
        self.blocks = nn.ModuleList(_ResidualBlock(d, config.kernel_size, int(r)) for r in config.dilations)
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def sequence_output(self, histories: torch.Tensor) -> torch.Tensor:
        histories = self._clip(histories)
        keep = (histories != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        x = self.emb_dropout(self.item_emb(histories)) * keep
        for block in self.blocks:
            x = block(x, keep)
        return x
