"""Stage 1 of A-LLMRec: align the frozen CF model's item embeddings with Sentence-BERT text
embeddings through two autoencoders (paper section 4.1, equations 2-6).

For item ``i`` with CF embedding ``E_i`` (``d``) and text embedding ``Q_i = SBERT(text_i)``::

    e_i = f_I^enc(E_i)          q_i = f_T^enc(Q_i)                       (latent, d' = 128)
    L_matching   = MSE(e_i, q_i)
    L_item-recon = MSE(E_i, f_I^dec(e_i))
    L_text-recon = MSE(Q_i, f_T^dec(q_i))
    L_rec        = -log s(x^u . f_I^dec(e_pos)) - log(1 - s(x^u . f_I^dec(e_neg)))
    L_stage1     = L_matching + alpha L_item-recon + beta L_text-recon + L_rec

``x^u`` is the frozen CF model's representation of the user's history *before* the positive
item; the negative is drawn uniformly from items the user never interacted with.

Choices where the paper is silent follow the authors' public code:

* each encoder is one ``Linear`` followed by a sigmoid (the paper's "1-layer MLP"), each decoder
  one ``Linear``; ``hidden`` adds layers (the decoder mirrors them);
* the matching and reconstruction losses are computed on both the positive and the negative
  item of each example and summed (the negative's text is encoded too);
* the text-reconstruction target ``Q_i`` is detached, so the encoder is fine-tuned through
  ``q_i`` (matching) and the decoder input, not by moving its own target;
* Adam with betas (0.9, 0.98), learning rate 1e-4, batch 32, 10 epochs, SBERT in train mode
  (dropout) while fine-tuned.

``rec_score="dot"`` (default) scores with the dot product as eq. 5 writes; the authors' code uses
the mean over dimensions (``"mean"``, a dot product divided by ``d``).

Training (checkpoints, resume) is :mod:`allmrec.align.stage1.training`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from allmrec.config import added_field, length_field, runtime_field
from allmrec.data.dataset import SequenceDataset

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "none": nn.Identity}


@dataclass
class Stage1Config:
    """Options of stage 1 (defaults = the paper's Beauty/Toys settings)."""

    d_latent: int = 128  # d', width of e_i and q_i
    hidden: list[int] = field(default_factory=list)  # extra encoder layers; [] = authors' 1-layer encoder
    activation: str = "gelu"  # between hidden layers
    latent_activation: str = "sigmoid"  # on e_i / q_i, as in the authors' code
    alpha: float = 0.5  # item-reconstruction weight
    beta: float = 0.2  # text-reconstruction weight (0.5 for Movies/Games in the paper)
    matching_weight: float = 1.0  # 0 = the "w/o L_matching" ablation
    rec_weight: float = 1.0  # 0 = the "w/o L_rec" ablation
    rec_score: str = "dot"  # "dot" (eq. 5) or "mean" (authors' code)
    detach_text_target: bool = True
    lr: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = length_field(10)
    positions: str = "last"  # "last": last training item per user; "all": every position
    freeze_text_encoder: bool = False  # True = the "SBERT frozen" ablation
    finetune_layers: int = added_field(0)  # fine-tuned encoder: 0 = every layer (the paper); n = only the top n (allmrec.text.top_layers: ~6x cheaper for 1 of MiniLM's 6)
    max_text_len: int = 64  # word pieces per item text
    autocast: str = "auto"  # fine-tuned encoder in bfloat16 autocast: auto (where the CPU runs bf16 natively, or CUDA), on, off
    text_batch_size: int = runtime_field(64)  # texts per forward when precomputing (frozen encoder)
    seed: int = 0
    threads: int = runtime_field(2)
    device: str = runtime_field("cpu")
    keep_checkpoints: int = runtime_field(1)  # checkpoint folders kept on disk (the newest ones)

    def validate(self) -> None:
        if self.positions not in ("last", "all"):
            raise ValueError(f"stage1.positions must be 'last' or 'all', got {self.positions!r}")
        if self.autocast not in ("auto", "on", "off"):
            raise ValueError(f"stage1.autocast must be auto, on or off, got {self.autocast!r}")
        if self.rec_score not in ("dot", "mean"):
            raise ValueError(f"stage1.rec_score must be 'dot' or 'mean', got {self.rec_score!r}")
        for name in ("activation", "latent_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise ValueError(f"stage1.{name} must be one of {sorted(_ACTIVATIONS)}, got {getattr(self, name)!r}")
        if self.finetune_layers < 0:
            raise ValueError(f"stage1.finetune_layers must be >= 0 (0 = every layer), got {self.finetune_layers}")
        for name in ("d_latent", "batch_size", "max_text_len", "text_batch_size", "threads", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"stage1.{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"stage1.epochs must be >= 0, got {self.epochs}")
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"stage1.hidden sizes must be >= 1, got {self.hidden}")


def _mlp(dims: list[int], activation: str, last_activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(len(dims) - 1):
        layers.append(nn.Linear(dims[k], dims[k + 1]))
        act = activation if k < len(dims) - 2 else last_activation
        if act != "none":
            layers.append(_ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class Stage1Model(nn.Module):
    """The two autoencoders of stage 1 and their losses.

    Parameters
    ----------
    d_cf
        Width ``d`` of the CF item embeddings ``E``.
    d_text
        Width of the text embeddings ``Q`` (384 for all-MiniLM-L6-v2, 768 in the paper).
    config
        Layer sizes, activations and loss weights.
    """

    def __init__(self, d_cf: int, d_text: int, config: Stage1Config | None = None) -> None:
        super().__init__()
        self.config = config = config or Stage1Config()
        self.d_cf, self.d_text, self.d_latent = int(d_cf), int(d_text), int(config.d_latent)
        hidden = [int(h) for h in config.hidden]
        act, lat = config.activation, config.latent_activation
        self.item_encoder = _mlp([self.d_cf, *hidden, self.d_latent], act, lat)
        self.item_decoder = _mlp([self.d_latent, *reversed(hidden), self.d_cf], act, "none")
        self.text_encoder = _mlp([self.d_text, *hidden, self.d_latent], act, lat)
        self.text_decoder = _mlp([self.d_latent, *reversed(hidden), self.d_text], act, "none")
        self.identity: dict[str, Any] = {}  # set by train_stage1 / load_stage1: what it was trained on

    def encode_items(self, item_emb: torch.Tensor) -> torch.Tensor:
        """``e = f_I^enc(E)``."""
        return self.item_encoder(item_emb)

    def encode_texts(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``q = f_T^enc(Q)``."""
        return self.text_encoder(text_emb)

    def losses(
        self,
        user_rep: torch.Tensor,
        item_pos: torch.Tensor,
        item_neg: torch.Tensor,
        text_pos: torch.Tensor,
        text_neg: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Stage-1 losses of a batch.

        Parameters
        ----------
        user_rep
            ``(B, d)`` CF user representations ``x^u`` of the histories before the positives.
        item_pos, item_neg
            ``(B, d)`` CF embeddings of the positive and the sampled negative items.
        text_pos, text_neg
            ``(B, d_text)`` text embeddings of the same items.

        Returns
        -------
        dict
            ``matching``, ``item_recon``, ``text_recon``, ``rec`` and their weighted sum ``loss``.
        """
        cfg = self.config
        B = item_pos.shape[0]
        e = self.encode_items(torch.cat([item_pos, item_neg]))
        q = self.encode_texts(torch.cat([text_pos, text_neg]))
        item_rec = self.item_decoder(e)
        text_rec = self.text_decoder(q)
        items = torch.cat([item_pos, item_neg])
        texts = torch.cat([text_pos, text_neg])
        if cfg.detach_text_target:
            texts = texts.detach()

        def pair_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            # MSE on the positives plus MSE on the negatives, as the authors' code sums them.
            return F.mse_loss(a[:B], b[:B]) + F.mse_loss(a[B:], b[B:])

        matching = pair_mse(e, q)
        item_recon = pair_mse(item_rec, items)
        text_recon = pair_mse(text_rec, texts)
        reduce = torch.sum if cfg.rec_score == "dot" else torch.mean
        pos_logit = reduce(user_rep * item_rec[:B], dim=-1)
        neg_logit = reduce(user_rep * item_rec[B:], dim=-1)
        rec = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + F.binary_cross_entropy_with_logits(
            neg_logit, torch.zeros_like(neg_logit)
        )
        loss = cfg.matching_weight * matching + cfg.alpha * item_recon + cfg.beta * text_recon + cfg.rec_weight * rec
        return {"loss": loss, "matching": matching, "item_recon": item_recon, "text_recon": text_recon, "rec": rec}


# ---- outputs for stage 2 --------------------------------------------------------------------
@torch.no_grad()
def joint_item_table(
    stage1_model: Stage1Model,
    cf_item_emb: torch.Tensor,
    text_emb: torch.Tensor | None = None,
    use_text: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Joint collaborative-text embeddings of all items, ``(n_items + 1, d')``.

    Row ``i`` is ``e_i = f_I^enc(E_i)``, or ``q_i = f_T^enc(Q_i)`` where ``use_text[i]`` is true
    (items the CF model does not know: cold, unseen or other-domain items; all rows give the
    "A-LLMRec (SBERT)" variant). Row 0 (padding) is zeros.

    Parameters
    ----------
    stage1_model
        Trained stage-1 autoencoders.
    cf_item_emb
        ``(n_items + 1, d)`` CF item table ``E``.
    text_emb
        ``(n_items + 1, d_text)`` text embeddings ``Q`` (from :func:`item_text_embeddings` with the
        fine-tuned encoder); needed only when ``use_text`` selects some item.
    use_text
        ``(n_items + 1,)`` bool mask, or ``None`` for ``e_i`` everywhere.
    """
    device = next(stage1_model.parameters()).device
    out = stage1_model.encode_items(cf_item_emb.detach().float().to(device))
    if use_text is not None:
        mask = torch.as_tensor(np.asarray(use_text, dtype=bool) if not isinstance(use_text, torch.Tensor) else use_text, dtype=torch.bool)
        if mask.shape != (out.shape[0],):
            raise ValueError(f"use_text must have shape ({out.shape[0]},), got {tuple(mask.shape)}")
        if mask.any():
            if text_emb is None:
                raise ValueError("use_text selects items but no text embeddings were given")
            if text_emb.shape[0] != out.shape[0]:
                raise ValueError(f"text_emb has {text_emb.shape[0]} rows, the CF item table {out.shape[0]}")
            mask = mask.to(device)
            q = stage1_model.encode_texts(text_emb.detach().float().to(device)[mask])
            out[mask] = q
    out[0] = 0.0
    return out


def untrained_item_mask(dataset: SequenceDataset) -> np.ndarray:
    """``(n_items + 1,)`` bool: items with no interaction in any training sequence (the CF model
    never learnt their embedding), for ``joint_item_table(..., use_text=...)``. Row 0 is False."""
    mask = dataset.train_item_counts() == 0
    mask[0] = False
    return mask
