"""The interface every collaborative-filtering backbone implements (the registry that finds
backbones by name is :mod:`allmrec.cf.registry`).

A-LLMRec needs exactly three things from a CF model, all defined here:

* ``item_embeddings()``: the item table ``E`` of shape ``(n_items + 1, dim)`` (row 0 padding);
* ``user_representation(users, histories)``: ``x^u`` of shape ``(B, dim)``; for sequential
  models the last hidden state of the history, for NCF the user embedding;
* ``score(users, histories, candidates)``: ``(B, C)`` scores, higher is better.

``histories`` are left-padded ``(B, max_len)`` int64 tensors (0 = padding), most recent item last.

Two class attributes tell the trainer how to feed a backbone:

* ``batch_kind``: which sampler of :mod:`allmrec.cf.sampling` builds its training batches,
  ``"sequence"`` (``inputs``/``positives``/``negatives`` of shape ``(B, L)``) or
  ``"pointwise"`` (``users``/``items``/``labels`` of shape ``(N,)``);
* ``padding_invariant``: ``True`` when the output for a history does not depend on how much
  left padding it carries, so batches may be trimmed to their longest row (a large speed-up on
  short sequences). Leave it ``False`` unless a test proves it.

Sequential backbones can subclass :class:`allmrec.cf.sequential.SequentialBackbone`, which
supplies the user representation (last position) and the BCE-with-one-negative loss from a
single ``sequence_output(histories) -> (B, L, dim)``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn


@dataclasses.dataclass
class CFConfig:
    """Options shared by all backbones; a backbone subclasses this to add its own."""

    n_items: int = 0
    n_users: int = 0
    dim: int = 50
    max_len: int = 50
    dropout: float = 0.5


class CFBackbone(nn.Module, ABC):
    name: ClassVar[str] = ""  # the registry name (see allmrec.cf.registry)
    config_class: ClassVar[type[CFConfig]] = CFConfig
    batch_kind: ClassVar[str] = "sequence"
    padding_invariant: ClassVar[bool] = False

    def __init__(self, config: CFConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def dim(self) -> int:
        return self.config.dim

    @abstractmethod
    def item_embeddings(self) -> torch.Tensor:
        """``(n_items + 1, dim)`` item embedding table, row 0 = padding."""

    @abstractmethod
    def user_representation(self, users: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        """``(B, dim)`` user representation ``x^u``."""

    def score(self, users: torch.Tensor, histories: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` scores of ``candidates`` ``(B, C)``; default ``x^u . E_i``."""
        x = self.user_representation(users, histories)
        return torch.einsum("bd,bcd->bc", x, self.item_embeddings()[candidates])

    @abstractmethod
    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss for one batch produced by the backbone's ``batch_kind`` sampler."""

    def prepare_training(self, train_users: torch.Tensor) -> None:
        """Called once by the trainer before training with the ``(n_users,)`` bool mask of the
        users whose sequences train the model (NCF uses it to know which user rows are learnt)."""
