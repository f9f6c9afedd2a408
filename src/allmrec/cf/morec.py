"""MoRec (Yuan et al., SIGIR 2023): SASRec whose item embeddings come from a text encoder.

The item table is ``adapter(Q)``: ``Q`` ``(n_items + 1, d_text)`` holds the frozen text embeddings
of the items (the same Sentence-BERT ``Q`` A-LLMRec's stage 1 reads: :func:`allmrec.text.
item_text_embeddings` with :func:`allmrec.text.load_text_encoder`, cached on disk), and the
trainable adapter is ``Linear(d_text, dim)`` (optionally followed by a LayerNorm). Everything else
is :class:`~allmrec.cf.sasrec.SASRec` (same blocks, loss, packing, padding invariance); the
padding row of the adapted table is zero. The text encoder stays frozen (MoRec's "frozen text
encoder" variant; end-to-end fine-tuning of the encoder is not implemented).

How the backbone gets its text table
------------------------------------
``MoRec.needs_item_text`` tells :func:`allmrec.cf.train_cf` and :func:`allmrec.cf.load_cf` to
call :meth:`MoRec.prepare_item_features` (computes ``Q`` from ``dataset`` with the encoder named
by ``text_encoder``, unless a table is given) and then :meth:`MoRec.set_item_features` on the
built model. ``Q`` is a non-persistent buffer: it moves with ``.to(device)`` but is never saved.

Checkpoints store, instead of ``Q``, its exact fingerprint (``config.text_fingerprint``, in
``model.json``) and a probe (``text_probe``: ``Q`` times a fixed random vector, one float per
item, in ``model.safetensors``). At load, ``Q`` is recomputed (normally read back from the
embedding cache, bit-identical: same scores) and checked: an identical fingerprint passes; a
table that differs only by float rounding (recomputed on other hardware) passes with a warning;
anything else (another encoder, other texts) is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from allmrec.cf.base import CFConfig
from allmrec.cf.sasrec import SASRec, SASRecConfig
from allmrec.utils.fingerprint import state_fingerprint

log = logging.getLogger(__name__)

PROBE_SEED = 0
PROBE_TOLERANCE = 1e-4  # relative to the largest probe value (unit-norm rows: values of order 1)


@dataclass
class MoRecConfig(SASRecConfig):
    """SASRec options plus the text side.

    Parameters
    ----------
    text_encoder : str
        Spec for :func:`allmrec.text.load_text_encoder` (``"default"``: the bundled
        all-MiniLM-L6-v2) used to compute ``Q`` from the dataset's item texts.
    text_dim : int
        Width of ``Q`` (0: filled from the table by the trainer).
    adapter_norm : bool
        LayerNorm after the adapter's linear map.
    text_fingerprint : str
        Fingerprint of ``Q`` (filled when the table is first set; checked at load).
    """

    text_encoder: str = "default"
    text_dim: int = 0
    adapter_norm: bool = False
    text_fingerprint: str = ""


class TextItemEmbedding(nn.Module):
    """``adapter(Q)`` as an item table ``(n_items + 1, dim)`` with a zero padding row.

    Behaves like the ``nn.Embedding`` SASRec expects (``module(items)``, ``module.weight``).
    Inside :meth:`cached`, the adapted table is computed once and reused by every lookup.
    """

    def __init__(self, n_items: int, text_dim: int, dim: int, norm: bool) -> None:
        super().__init__()
        self.n_items = int(n_items)
        self.adapter = nn.Linear(text_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-8) if norm else None
        self.register_buffer("text", None, persistent=False)  # Q, frozen, set by set_table
        self._cache: torch.Tensor | None = None

    def set_table(self, table: torch.Tensor) -> None:
        self.text = table.detach().to(device=self.adapter.weight.device, dtype=self.adapter.weight.dtype)

    def table(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """The adapted table; given ``items``, only their rows are computed (the rest are zero).
        A training step needs only its batch's rows (on Beauty, skipping the others saves 11-13%
        of a step: a packed batch touches most items)."""
        if self._cache is not None:
            return self._cache
        if self.text is None:
            raise RuntimeError("MoRec has no item text table yet: call model.set_item_features(Q) (train_cf and load_cf do)")
        if items is None:
            return torch.cat([self.text.new_zeros(1, self.adapter.out_features), self._adapt(self.text[1:])])
        rows = items.unique()
        rows = rows[rows != 0]
        return self.text.new_zeros(self.text.shape[0], self.adapter.out_features).index_copy(0, rows, self._adapt(self.text[rows]))

    def _adapt(self, text: torch.Tensor) -> torch.Tensor:
        out = self.adapter(text)
        return self.norm(out) if self.norm is not None else out

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.table()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.table()[items]

    @contextmanager
    def cached(self, items: torch.Tensor | None = None) -> Iterator[None]:
        """Compute the adapted table (only the rows of ``items``, if given) once for the block
        (re-entrant; gradients flow through it)."""
        if self._cache is not None:
            yield
            return
        self._cache = self.table(items)
        try:
            yield
        finally:
            self._cache = None


class MoRec(SASRec):
    name: ClassVar[str] = "morec"
    config_class: ClassVar[type[CFConfig]] = MoRecConfig
    needs_item_text: ClassVar[bool] = True
    config: MoRecConfig

    def __init__(self, config: MoRecConfig) -> None:
        if config.text_dim < 1:
            raise ValueError("MoRecConfig.text_dim must be >= 1 (the width of the item text table; train_cf fills it from the table)")
        super().__init__(config)
        # SASRec built (and initialised) a free item table; MoRec replaces it by the adapter.
        self.item_emb = TextItemEmbedding(config.n_items, config.text_dim, config.dim, config.adapter_norm)
        nn.init.xavier_normal_(self.item_emb.adapter.weight)
        nn.init.zeros_(self.item_emb.adapter.bias)
        self.register_buffer("text_probe", torch.zeros(config.n_items + 1))

    # ---- the text table -------------------------------------------------------------------------
    @classmethod
    def prepare_item_features(cls, dataset: Any, options: dict[str, Any], features: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(Q, options)``: the text table (given, or computed from ``dataset.texts`` with the
        encoder ``options["text_encoder"]``, cached on disk) and ``options`` with ``text_dim`` set."""
        options = dict(options)
        if features is None:
            if dataset is None:
                raise ValueError("MoRec needs the item text table: pass the dataset (to compute it) or the table itself")
            from allmrec.text import item_text_embeddings, load_text_encoder

            encoder = load_text_encoder(options.get("text_encoder") or MoRecConfig.text_encoder)
            features = item_text_embeddings(encoder, dataset)
        features = torch.as_tensor(features).detach().float().cpu()
        n_items = options.get("n_items") or (dataset.n_items if dataset is not None else features.shape[0] - 1)
        if features.dim() != 2 or features.shape[0] != n_items + 1:
            raise ValueError(f"MoRec item text table must have shape (n_items + 1, d_text) = ({n_items + 1}, d), got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("MoRec item text table has non-finite values")
        if options.get("text_dim") and options["text_dim"] != features.shape[1]:
            raise ValueError(f"MoRec: text_dim is {options['text_dim']} but the item text table has width {features.shape[1]}")
        options["text_dim"] = int(features.shape[1])
        return features, options

    @staticmethod
    def table_fingerprint(table: torch.Tensor) -> str:
        return state_fingerprint({"text": table.detach().float().cpu()})

    def _probe(self, table: torch.Tensor) -> torch.Tensor:
        vec = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(PROBE_SEED), dtype=torch.float64)
        return (table.detach().double().cpu() @ vec).float()

    def item_features_fingerprint(self) -> str:
        """Fingerprint of the text table the model was built for (empty before it is set)."""
        return self.config.text_fingerprint

    @torch.no_grad()
    def set_item_features(self, table: torch.Tensor) -> None:
        """Attach the frozen text table ``Q``. The first table sets ``config.text_fingerprint``
        and the probe; later tables (at load) must match them (float-rounding differences pass)."""
        if table.dim() != 2 or table.shape != (self.config.n_items + 1, self.config.text_dim):
            raise ValueError(f"MoRec item text table must have shape ({self.config.n_items + 1}, {self.config.text_dim}), got {tuple(table.shape)}")
        table = table.detach().float()
        fingerprint = self.table_fingerprint(table)
        probe = self._probe(table)
        expected = self.config.text_fingerprint
        if expected and fingerprint != expected:
            diff = float((probe - self.text_probe.cpu()).abs().max())
            if diff > PROBE_TOLERANCE * max(1.0, float(probe.abs().max())):
                raise ValueError(
                    f"the item text table (fingerprint {fingerprint}) is not the one this MoRec model was trained with "
                    f"({expected}; probe differs by {diff:.3g}): another text encoder or other item texts? "
                    f"The model was trained with text encoder {self.config.text_encoder!r}."
                )
            log.warning("MoRec: the item text table differs from the training one by float rounding only (probe %.2g); scores may differ slightly", diff)
        elif not expected:
            self.config.text_fingerprint = fingerprint
            self.text_probe.copy_(probe.to(self.text_probe.device))
        self.item_emb.set_table(table)

    # ---- SASRec with the adapted table computed once per call -----------------------------------
    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.table()

    def sequence_output(self, histories: torch.Tensor) -> torch.Tensor:
        with self.item_emb.cached():
            return super().sequence_output(histories)

    def packed_output(self, inputs: torch.Tensor, segments: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        with self.item_emb.cached():
            return super().packed_output(inputs, segments, columns)

    def score(self, users: torch.Tensor, histories: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        with self.item_emb.cached():
            return super().score(users, histories, candidates)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Only the batch's items are adapted (same loss and gradients); the L2 penalty, when on,
        # is over the whole table, so then every row is.
        used = None if self.config.l2_emb else torch.cat([batch["inputs"].flatten(), batch["positives"].flatten(), batch["negatives"].flatten()])
        with self.item_emb.cached(used):
            return super().training_loss(batch)
