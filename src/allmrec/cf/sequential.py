"""Shared parts of the sequential backbones (SASRec, GRU4Rec, NextItNet).

A sequential backbone maps a left-padded history ``(B, L)`` to one hidden state per position
``(B, L, dim)``; the state at position ``t`` summarises items ``<= t`` and predicts item
``t + 1``. From that follow the user representation (the last position) and the training
objective shared by all three: binary cross-entropy of ``h_t . E_pos`` against
``h_t . E_neg`` with one sampled negative per position, padding positions ignored
(Kang & McAuley 2018, eq. 7).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from torch import nn

from allmrec.cf.base import CFBackbone, CFConfig


class SequentialBackbone(CFBackbone):
    batch_kind: ClassVar[str] = "sequence"
    # True if packed_output() is implemented: training batches then share rows between users.
    supports_packing: ClassVar[bool] = False

    def __init__(self, config: CFConfig) -> None:
        super().__init__(config)
        if config.n_items <= 0:
            raise ValueError(f"{type(config).__name__}.n_items must be set (number of items, ids 1..n_items)")
        # Created first in every subclass, so parameter order and seeded init stay as they were.
        self.item_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight

    @abstractmethod
    def sequence_output(self, histories: torch.Tensor) -> torch.Tensor:
        """``(B, L, dim)`` hidden states of left-padded ``histories`` ``(B, L)``; padding rows are 0."""

    def packed_output(self, inputs: torch.Tensor, segments: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Hidden states of packed rows (see :func:`allmrec.cf.sampling.pack_batch`): several
        sequences per row, ``segments`` telling them apart and ``columns`` giving each token's
        column in its own left-padded window. Must equal :meth:`sequence_output` token for token."""
        raise NotImplementedError(f"{type(self).__name__} does not support packed batches")

    def _clip(self, histories: torch.Tensor) -> torch.Tensor:
        # Histories longer than the model's window keep their most recent max_len items.
        return histories[:, -self.config.max_len :] if histories.shape[1] > self.config.max_len else histories

    def user_representation(self, users: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        return self.sequence_output(histories)[:, -1]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "segments" in batch:
            h = self.packed_output(batch["inputs"], batch["segments"], batch["columns"])
        else:
            h = self.sequence_output(batch["inputs"])
        positives, negatives = batch["positives"], batch["negatives"]
        mask = positives != 0
        h = h[mask]
        table = self.item_embeddings()
        pos_logits = (h * table[positives[mask]]).sum(-1)
        neg_logits = (h * table[negatives[mask]]).sum(-1)
        return F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits)) + F.binary_cross_entropy_with_logits(
            neg_logits, torch.zeros_like(neg_logits)
        )
