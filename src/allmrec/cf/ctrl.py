"""CTRL (Li et al., 2023, arXiv 2306.02841, "Connect Tabular and Language Model for CTR
Prediction"), adapted to next-item ranking as A-LLMRec (Kim et al., KDD'24, Appendix C) does:
contrastive learning against the items' text initialises a SASRec, which is then fine-tuned on
the recommendation task alone.

* **Stage 1** (:meth:`CTRL.pretrain`, run by :func:`allmrec.cf.train_cf` before epoch 1): the
  CF model's representations of a sample and a language model's encoding of the same sample
  rendered as text are pulled together by a two-way InfoNCE loss with in-batch negatives and a
  temperature, each side through its own linear projection into a shared ``proj_dim`` space
  (CTRL's cross-modal contrastive objective). Two kinds of samples, each step:

  - a user: SASRec's ``x^u`` of the training sequence against the text
    ``"title_n; title_n-1; ..."`` of its ``prompt_items`` most recent items (most recent first,
    so that truncation to ``prompt_max_tokens`` drops the oldest);
  - an item: its SASRec embedding against the embedding of its text (``dataset.texts``, the
    same Sentence-BERT table A-LLMRec's stage 1 and MoRec read, cached on disk).

  The language model (``text_encoder``: the bundled all-MiniLM-L6-v2 or any Sentence-
  Transformers model) is kept **frozen** and its text embeddings are computed once and cached
  (the user prompts in ``<run>/pretrain/user_text.safetensors``). That is a CPU-budget choice:
  CTRL fine-tunes both towers during the contrastive stage. The projections exist only during
  stage 1 (they are saved in its checkpoints, never in the model).
* **Stage 2**: the usual SASRec training of :func:`allmrec.cf.train_cf` (BCE with one negative,
  early stopping on validation NDCG@10), starting from the stage-1 weights; only SASRec trains.
* **Inference** is SASRec's: same architecture, same scores, same cost. A CTRL model loads
  without the text encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from allmrec.cf.base import CFConfig
from allmrec.cf.pretraining import PretrainOptions, info_nce, run_pretraining
from allmrec.cf.sampling import left_pad, trim_left
from allmrec.eval.users import sample_users
from allmrec.cf.sasrec import SASRec, SASRecConfig
from allmrec.data.dataset import SequenceDataset
from allmrec.utils.fingerprint import strings_fingerprint
from allmrec.utils.io import load_tensors, save_tensors, tensors_metadata
from allmrec.utils.seed import rng


@dataclass
class CTRLConfig(SASRecConfig):
    """SASRec options plus CTRL's contrastive pre-training.

    Parameters
    ----------
    text_encoder : str
        Spec for :func:`allmrec.text.load_text_encoder` (default ``"default"``: the bundled
        all-MiniLM-L6-v2); frozen.
    prompt_items : int
        Most recent training items whose titles make a user's text (default 10).
    prompt_max_tokens : int
        Word pieces the text encoder reads of a user's text (default 128).
    proj_dim : int
        Width of the shared space of the contrastive loss (default 128).
    temperature : float
        InfoNCE temperature (default 0.07).
    item_weight : float
        Weight of the item-level loss next to the user-level one (default 1.0; 0 = users only).
    pretrain_epochs : int
        Passes over the pre-training users (default 20; 0 = no pre-training, i.e. SASRec).
    pretrain_batch_size : int
        Users (and as many items) per step (default 128).
    pretrain_lr : float
        Adam learning rate of stage 1 (default 1e-3).
    pretrain_users : int
        Seeded sample of training users to pre-train on (default 0 = all).
    save_every : int
        Steps between stage-1 checkpoints (default 500; also at the end of every epoch).
    """

    text_encoder: str = "default"
    prompt_items: int = 10
    prompt_max_tokens: int = 128
    proj_dim: int = 128
    temperature: float = 0.07
    item_weight: float = 1.0
    pretrain_epochs: int = 20
    pretrain_batch_size: int = 128
    pretrain_lr: float = 1e-3
    pretrain_users: int = 0
    save_every: int = 500


class Projections(nn.Module):
    """CTRL's two projection heads into the shared contrastive space (stage 1 only)."""

    def __init__(self, cf_dim: int, text_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.cf = nn.Linear(cf_dim, proj_dim)
        self.text = nn.Linear(text_dim, proj_dim)


def user_prompt(dataset: SequenceDataset, user: int, n_items: int) -> str:
    """``"title_n; title_n-1; ..."``: the titles of the ``n_items`` most recent training items."""
    recent = dataset.train_sequence(user)[::-1][:n_items]
    return "; ".join(dataset.titles[int(i)] for i in recent)


class CTRL(SASRec):
    """A SASRec with CTRL's contrastive pre-training as :meth:`pretrain` (see the module docstring)."""
    name: ClassVar[str] = "ctrl"

    config_class: ClassVar[type[CFConfig]] = CTRLConfig
    config: CTRLConfig

    def contrastive_loss(self, heads: Projections, histories: torch.Tensor, user_text: torch.Tensor,
                         items: torch.Tensor | None = None, item_text: torch.Tensor | None = None) -> torch.Tensor:
        """Stage-1 loss of one batch: two-way InfoNCE of the users' ``x^u`` (from left-padded
        ``histories``) against their texts ``user_text`` ``(B, d_text)``, plus ``item_weight``
        times the same for the embeddings of ``items`` against ``item_text`` ``(B', d_text)``."""
        c = self.config
        loss = info_nce(heads.cf(self.user_representation(None, histories)), heads.text(user_text), c.temperature, symmetric=True)
        if items is not None and c.item_weight:
            loss = loss + c.item_weight * info_nce(heads.cf(self.item_emb(items)), heads.text(item_text), c.temperature, symmetric=True)
        return loss

    def pretrain(self, dataset: SequenceDataset, out_dir: str | Path, *, train_mask: np.ndarray, seed: int, progress: bool = True,
                 encoder: Any = None) -> dict[str, Any]:
        """Stage 1 on the users of ``train_mask`` with at least one training item (a seeded
        sample of ``pretrain_users`` of them); trains this model in place; resumable from
        ``out_dir``. ``encoder``: an already loaded :class:`allmrec.text.TextEncoder` (default:
        loaded from ``text_encoder``). Returns the summary of
        :func:`allmrec.cf.pretraining.run_pretraining`."""
        from allmrec.utils.fingerprint import dataset_fingerprint
        from allmrec.text import item_text_embeddings, load_text_encoder

        c, out_dir = self.config, Path(out_dir)
        lens = np.fromiter((len(s) - 2 for s in dataset.sequences), dtype=np.int64, count=dataset.n_users)
        users = sample_users(np.flatnonzero(np.asarray(train_mask, bool) & (lens >= 1)), c.pretrain_users or None, seed, "ctrl-pretrain-users")
        identity = {"backbone": self.name, "config": dataclasses.asdict(c), "dataset": dataset_fingerprint(dataset)}
        if c.pretrain_epochs == 0:
            return {"step": 0, "seconds": 0.0, "epoch_loss": {}, "epochs": 0, "users": 0}
        encoder = (encoder or load_text_encoder(c.text_encoder)).freeze()
        identity["text_encoder"] = encoder.fingerprint()
        device = self.item_emb.weight.device
        item_text = item_text_embeddings(encoder, dataset).to(device)
        user_text = self._user_text(dataset, users, encoder, out_dir, progress).to(device)
        torch.manual_seed(int(rng(seed, "ctrl-heads").integers(0, 2**63 - 1)))
        heads = Projections(c.dim, item_text.shape[1], c.proj_dim).to(device)

        def step_loss(batch: np.ndarray, g: np.random.Generator) -> torch.Tensor:
            (hist,) = trim_left(left_pad([dataset.train_sequence(int(u)) for u in batch], c.max_len))
            items = torch.as_tensor(g.choice(dataset.n_items, size=min(len(batch), dataset.n_items), replace=False) + 1, device=device)
            rows = torch.as_tensor(np.searchsorted(users, batch), device=device)
            return self.contrastive_loss(heads, torch.as_tensor(hist, device=device), user_text[rows], items, item_text[items])

        return run_pretraining(nn.ModuleDict({"model": self, "heads": heads}), step_loss, users, out_dir, self._options(seed), identity, progress)

    def _options(self, seed: int) -> PretrainOptions:
        c = self.config
        return PretrainOptions(name=self.name, epochs=c.pretrain_epochs, batch_size=c.pretrain_batch_size, lr=c.pretrain_lr, save_every=c.save_every, seed=seed)

    def _user_text(self, dataset: SequenceDataset, users: np.ndarray, encoder: Any, out_dir: Path, progress: bool = False) -> torch.Tensor:
        """``(len(users), d_text)`` frozen embeddings of the users' prompts, cached in ``out_dir``
        under a key of the encoder's weights, its truncation length and the prompts."""
        prompts = [user_prompt(dataset, int(u), self.config.prompt_items) for u in users]
        key = hashlib.sha256(f"{encoder.fingerprint()}|{self.config.prompt_max_tokens}|{strings_fingerprint(prompts)}".encode()).hexdigest()[:24]
        path = out_dir / "user_text.safetensors"
        if path.exists() and tensors_metadata(path).get("key") == key:
            return load_tensors(path)["embeddings"]
        old = encoder.max_seq_length
        encoder.max_seq_length = self.config.prompt_max_tokens
        try:
            emb = encoder.encode(prompts, progress=progress)  # the longest part of CTRL on Beauty: ~20 min for 22k prompts on one thread
        finally:
            encoder.max_seq_length = old
        save_tensors(path, {"embeddings": emb}, metadata={"key": key})
        return emb
