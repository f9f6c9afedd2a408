"""NCF (He et al., WWW 2017), NeuMF-style, the non-sequential backbone.

Two embedding pairs: a GMF pair ``(p_u, q_i)`` and an MLP pair ``(p'_u, q'_i)``. The score is

    s(u, i) = p_u . q_i + MLP([p'_u ; q'_i])

i.e. NeuMF's fused output layer with the GMF half of its weight vector fixed to ones (so that the
GMF part is a plain dot product in the space A-LLMRec uses). ``mlp_layers=()`` gives plain
matrix factorisation. Trained point-wise with BCE: every training interaction is a positive,
with ``n_negatives`` sampled negatives per positive each epoch.

For A-LLMRec: ``item_embeddings()`` is the GMF item table ``q`` and ``user_representation`` is
``p_u``, so ``x^u . E_i`` is the GMF half of the score; :meth:`score` adds the MLP tower, i.e.
it ranks exactly as trained.

Unknown users (ids outside ``0..n_users-1``, or users the model was not trained on, such as
held-out cold users) fall back to the mean embedding of their history's items (GMF and MLP
tables alike); an empty history gives a zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from allmrec.cf.base import CFBackbone, CFConfig


@dataclass
class NCFConfig(CFConfig):
    """NCF options. ``max_len`` only bounds the history used by the unknown-user fallback."""

    mlp_layers: tuple[int, ...] = (64, 32, 16)
    n_negatives: int = 4
    dropout: float = 0.0  # between MLP layers


class NCF(CFBackbone):
    name: ClassVar[str] = "ncf"
    config_class: ClassVar[type[CFConfig]] = NCFConfig
    batch_kind: ClassVar[str] = "pointwise"
    padding_invariant: ClassVar[bool] = True
    config: NCFConfig

    def __init__(self, config: NCFConfig) -> None:
        super().__init__(config)
        if config.n_items <= 0 or config.n_users <= 0:
            raise ValueError("NCFConfig.n_items and NCFConfig.n_users must be set (NCF has one embedding per user)")
        d = config.dim
        self.user_gmf = nn.Embedding(config.n_users, d)
        self.item_gmf = nn.Embedding(config.n_items + 1, d, padding_idx=0)
        layers: list[nn.Module] = []
        if config.mlp_layers:
            self.user_mlp = nn.Embedding(config.n_users, d)
            self.item_mlp = nn.Embedding(config.n_items + 1, d, padding_idx=0)
            width = 2 * d
            for out in config.mlp_layers:
                layers += [nn.Linear(width, int(out)), nn.ReLU(), nn.Dropout(config.dropout)]
                width = int(out)
            layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        # Users the trainer fitted; others get the history fallback (see module docstring).
        self.register_buffer("trained_users", torch.ones(config.n_users, dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for emb in (m for m in self.modules() if isinstance(m, nn.Embedding)):
            nn.init.normal_(emb.weight, std=0.01)  # He et al.'s initialisation
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()
        for lin in (m for m in self.mlp if isinstance(m, nn.Linear)):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def prepare_training(self, train_users: torch.Tensor) -> None:
        self.trained_users.copy_(torch.as_tensor(train_users, dtype=torch.bool))

    def item_embeddings(self) -> torch.Tensor:
        return self.item_gmf.weight

    def _users(self, users: torch.Tensor, histories: torch.Tensor | None, user_table: nn.Embedding, item_table: nn.Embedding) -> torch.Tensor:
        n = self.config.n_users
        users = users.long()
        in_range = (users >= 0) & (users < n)
        safe = users.clamp(0, n - 1)
        known = in_range & self.trained_users[safe]
        x = user_table(safe)
        if histories is None or bool(known.all()):
            return x
        hist = histories[:, -self.config.max_len :]
        mask = (hist != 0).unsqueeze(-1).to(x.dtype)
        mean = (item_table(hist) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.where(known.unsqueeze(-1), x, mean)

    def user_representation(self, users: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        return self._users(users, histories, self.user_gmf, self.item_gmf)

    def _mlp_score(self, user_vecs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # user_vecs (..., d) broadcast against items (...,) -> (...,)
        item_vecs = self.item_mlp(items)
        user_vecs = user_vecs.expand_as(item_vecs)
        return self.mlp(torch.cat([user_vecs, item_vecs], dim=-1)).squeeze(-1)

    def score(self, users: torch.Tensor, histories: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        x = self.user_representation(users, histories)
        out = torch.einsum("bd,bcd->bc", x, self.item_gmf(candidates))
        if self.config.mlp_layers:
            mu = self._users(users, histories, self.user_mlp, self.item_mlp)
            out = out + self._mlp_score(mu.unsqueeze(1), candidates)
        return out

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items, labels = batch["users"], batch["items"], batch["labels"]
        logits = (self.user_gmf(users) * self.item_gmf(items)).sum(-1)
        if self.config.mlp_layers:
            logits = logits + self._mlp_score(self.user_mlp(users), items)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
