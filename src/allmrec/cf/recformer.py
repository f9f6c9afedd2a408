"""RECFORMER (Li et al., KDD 2023, "Text Is All You Need: Learning Language Representations for
Sequential Recommendation") as a CF backbone (``"recformer"``).

* An item is a flattened key-value sentence of its attributes, ``"title: ... brand: ...
  categories: ..."`` (``attributes``, default the title and every ``dataset.item_fields`` column;
  empty values are left out; each key + value cut to ``attr_tokens`` word pieces).
* A user is the sequence of their items' sentences, **most recent first**, after one leading
  ``[CLS]``, cut to ``max_tokens`` tokens and ``max_len`` items. To the token embeddings are added
  an item-position embedding (0 for ``[CLS]``, ``k`` for the ``k``-th most recent item) and a
  token-type embedding (``[CLS]`` / key / value / padding); both start at zero, so an untrained
  model is exactly the pre-trained encoder reading the concatenated text.
* One bidirectional transformer encodes users and items (an item is a one-item sequence) into
  one space: the first-token (``pooling="cls"``) or mean output, L2-normalised, so scores
  ``x^u . E_i`` (the default :meth:`CFBackbone.score`) are cosine similarities. Items never seen
  in training are scored through their text (:meth:`RecFormer.encode_items`).
* Pre-training (:meth:`RecFormer.pretrain`, run by :func:`allmrec.cf.train_cf` before epoch 1):
  for each user a target position is drawn in the second half of the training sequence; the
  prefix before it and the target item form a positive pair against the batch's other targets
  (item-item contrastive, cosine / ``temperature``), plus ``mlm_weight`` times the masked-LM
  loss of both (whole-word masking of ``mlm_prob`` of the tokens, 80 % ``[MASK]`` / 10 % random
  / 10 % kept; a separate forward pass on the masked copy, as in the original).
* Fine-tuning (:meth:`RecFormer.training_loss`, on :func:`allmrec.cf.train_cf`'s sequence
  batches): one random position per user; its prefix against the distinct targets of the batch,
  the sampler's negative of each user and ``n_negatives`` uniformly drawn items (in-batch /
  sampled softmax with ``temperature``). Every distinct item text is encoded once per step.

Differences from the original (all for a 2-core CPU and this project's data):

* The encoder is any Hugging Face ``AutoModel`` (``encoder``; default the bundled
  all-MiniLM-L6-v2, a 6-layer BERT), not Longformer: full attention, so ``max_tokens`` (default
  256) is bounded by its position table (512), where RECFORMER reads 1,024 tokens with sparse
  attention. Its own position and token-type (0) embeddings stay in place; ours are added on top.
* Pre-training runs on the target dataset's training sequences, not on a separate corpus of
  seven Amazon categories.
* Fine-tuning encodes the step's items with gradients (in-batch + sampled negatives) instead of
  scoring against a frozen table of all items re-encoded every epoch; one stage, Adam at a
  constant learning rate, not two stages of AdamW with warm-up.

Use :class:`TrainCFConfig` with a transformer's learning rate (e.g. ``lr=5e-5``), a small
``batch_size`` (16) and ``max_train_users`` / ``max_valid_users`` sized to the CPU budget.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from allmrec.cf.base import CFBackbone, CFConfig
from allmrec.cf.pretraining import PretrainOptions, info_nce, run_pretraining
from allmrec.eval.users import sample_users
from allmrec.data.dataset import SequenceDataset
from allmrec.utils.fingerprint import strings_fingerprint
from allmrec.utils.seed import rng

TYPE_CLS, TYPE_KEY, TYPE_VALUE, TYPE_PAD = 0, 1, 2, 3
Tokens = tuple[np.ndarray, np.ndarray, np.ndarray]  # one item: token ids, token types, word starts


@dataclass
class RecFormerConfig(CFConfig):
    """RECFORMER options (``dropout`` is unused: the encoder keeps its own).

    Parameters
    ----------
    dim : int
        The encoder's hidden size (default 0: filled from the encoder).
    max_len : int
        Most recent items of a history that are read (default 50).
    encoder : str
        ``"default"`` (the bundled all-MiniLM-L6-v2's transformer), a local Hugging Face or
        Sentence-Transformers folder, or a hub id.
    max_tokens : int
        Tokens of a user sequence, ``[CLS]`` included (default 256).
    attr_tokens : int
        Word pieces per attribute, key included (default 32).
    attributes : list of str or None
        Item attributes, in order; ``"title"`` is ``dataset.titles``, others are
        ``dataset.item_fields`` columns (default None: title + every column).
    pooling : str
        ``"cls"`` (first token, as RECFORMER) or ``"mean"``.
    temperature : float
        Softmax temperature of the contrastive losses (default 0.05).
    n_negatives : int
        Extra uniformly drawn negative items per fine-tuning step (default 16).
    mlm_prob, mlm_weight : float
        Share of tokens masked (0.15) and weight of the MLM loss (0.1; 0 skips its passes).
    pretrain_epochs, pretrain_users, pretrain_batch_size, pretrain_lr, save_every
        Pre-training: passes (default 1; 0 = none), seeded sample of training users (0 = all),
        users per step (16), Adam learning rate (5e-5), steps between checkpoints (50).
    encode_batch_size : int
        Sequences per forward pass when encoding without gradients (default 64).
    text_fingerprint : str
        Fingerprint of the item sentences (set when they are first attached; checked at load).
    """

    dim: int = 0
    encoder: str = "default"
    max_tokens: int = 256
    attr_tokens: int = 32
    attributes: list[str] | None = None
    pooling: str = "cls"
    temperature: float = 0.05
    n_negatives: int = 16
    mlm_prob: float = 0.15
    mlm_weight: float = 0.1
    pretrain_epochs: int = 1
    pretrain_users: int = 0
    pretrain_batch_size: int = 16
    pretrain_lr: float = 5e-5
    save_every: int = 50
    encode_batch_size: int = 64
    text_fingerprint: str = ""


# ---- the encoder, the item sentences, masking ------------------------------------------------
def encoder_path(spec: str) -> tuple[str, bool]:
    """``(name or folder, local)`` of an encoder spec (see :class:`RecFormerConfig`)."""
    from allmrec.text import BUNDLED_NAME, bundled_model_path

    if spec.strip().lower() in ("default", "bundled") or spec == BUNDLED_NAME:
        return str(bundled_model_path()), True
    path = Path(spec).expanduser()
    if not path.is_dir():
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
            raise FileNotFoundError(f"RECFORMER encoder folder not found: {spec}")
        return spec, False
    if not (path / "config.json").exists() and (path / "modules.json").exists():
        # A Sentence-Transformers folder whose transformer sits in a sub-folder.
        modules = json.loads((path / "modules.json").read_text())
        sub = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Transformer")), "")
        path = path / sub
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    return str(path), True


def load_encoder(spec: str) -> tuple[nn.Module, Any]:
    """``(AutoModel in float32, its tokenizer)`` for an encoder spec."""
    from transformers import AutoModel, AutoTokenizer

    from allmrec.text.encoder import _quiet_hf

    name, local = encoder_path(spec)
    try:
        with _quiet_hf():
            model = AutoModel.from_pretrained(name, local_files_only=local).float()
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
    except OSError as err:
        raise OSError(f"could not load the RECFORMER encoder {spec!r} ({name}): {err}") from err
    return model, tokenizer


def item_attributes(dataset: SequenceDataset, attributes: Sequence[str] | None = None) -> list[dict[str, str]]:
    """``n_items + 1`` attribute dicts (row 0, padding, empty); empty values are left out."""
    columns = {"title": dataset.titles, **dataset.item_fields}
    keys = list(attributes) if attributes else list(columns)
    missing = [k for k in keys if k not in columns]
    if missing:
        raise ValueError(f"RECFORMER attributes {missing} are not item columns of dataset {dataset.name!r}; available: {', '.join(columns)}")
    rows: list[dict[str, str]] = [{}]
    for i in range(1, dataset.n_items + 1):
        rows.append({k: v for k in keys if (v := str(columns[k][i] or "").strip())})
    return rows


def render_item(attributes: Mapping[str, str]) -> str:
    """The flattened sentence ``"title: ... brand: ..."`` of one item."""
    return " ".join(f"{k}: {v}" for k, v in attributes.items())


def _pieces(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[bool]]]:
    """Word pieces of each text (no special tokens) and which of them start a word."""
    enc = tokenizer(texts, add_special_tokens=False)
    out = []
    for j, ids in enumerate(enc["input_ids"]):
        words = enc.word_ids(j) if getattr(tokenizer, "is_fast", False) else list(range(len(ids)))
        out.append((ids, [k == 0 or words[k] != words[k - 1] for k in range(len(ids))]))
    return out


def tokenize_items(tokenizer: Any, items: Sequence[Mapping[str, str]], attr_tokens: int) -> list[Tokens]:
    """Token ids, types (key / value) and word starts of each item's sentence; every
    attribute's key + value is cut to ``attr_tokens`` pieces."""
    keys = sorted({k for item in items for k in item})
    key_pieces = dict(zip(keys, _pieces(tokenizer, [f"{k}:" for k in keys]))) if keys else {}
    flat = [(n, k, v) for n, item in enumerate(items) for k, v in item.items()]
    values = _pieces(tokenizer, [v for _, _, v in flat]) if flat else []
    parts: list[list[tuple[list[int], list[int], list[bool]]]] = [[] for _ in items]
    for (n, k, _), (v_ids, v_starts) in zip(flat, values):
        k_ids, k_starts = key_pieces[k]
        ids, starts = (k_ids + v_ids)[:attr_tokens], (k_starts + v_starts)[:attr_tokens]
        parts[n].append((ids, ([TYPE_KEY] * len(k_ids) + [TYPE_VALUE] * len(v_ids))[:attr_tokens], starts))
    return [tuple(np.asarray(sum((p[f] for p in ps), []), dtype=dt) for f, dt in enumerate((np.int64, np.int64, bool))) for ps in parts]


def mlm_mask(ids: np.ndarray, word_starts: np.ndarray, maskable: np.ndarray, prob: float, mask_id: int, vocab_size: int,
             g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Whole-word masking of ``(B, T)`` token ids: ``(inputs, labels)``.

    In each row, ``max(1, round(prob * n))`` of its ``n`` maskable tokens are chosen as whole
    words (a word: a token with ``word_starts`` and the tokens after it that lack it; words that
    would overshoot the count are skipped). ``labels`` holds the original id at chosen positions
    and -100 elsewhere; a chosen token becomes ``mask_id`` with probability 0.8, a uniformly
    random id with 0.1, and stays with 0.1. Tokens that are not ``maskable`` (``[CLS]``,
    padding) are never chosen.
    """
    labels = np.full(ids.shape, -100, dtype=np.int64)
    for b in range(ids.shape[0]):
        pos = np.flatnonzero(maskable[b])
        if not len(pos):
            continue
        cuts = np.flatnonzero(word_starts[b, pos])
        words = np.split(pos, cuts[cuts > 0])
        target, chosen = max(1, int(round(prob * len(pos)))), []
        for w in g.permutation(len(words)):
            if len(chosen) + len(words[w]) <= target:
                chosen.extend(words[w].tolist())
            if len(chosen) >= target:
                break
        labels[b, chosen] = ids[b, chosen]
    chosen_mask, r = labels != -100, g.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen_mask & (r < 0.8)] = mask_id
    swap = chosen_mask & (r >= 0.8) & (r < 0.9)
    inputs[swap] = g.integers(0, vocab_size, size=int(swap.sum()))
    return inputs, labels


class MLMHead(nn.Module):
    """BERT's masked-LM head (dense, GELU, LayerNorm, decoder tied to the word embeddings);
    lives only during pre-training."""

    def __init__(self, hidden: int, vocab_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


# ---- the backbone ----------------------------------------------------------------------------
class RecFormer(CFBackbone):
    """RECFORMER behind the CF-backbone interface (see the module docstring)."""
    name: ClassVar[str] = "recformer"

    config_class: ClassVar[type[CFConfig]] = RecFormerConfig
    padding_invariant: ClassVar[bool] = True  # histories become text: padding never shows
    needs_item_text: ClassVar[bool] = True
    config: RecFormerConfig

    def __init__(self, config: RecFormerConfig) -> None:
        super().__init__(config)
        if config.n_items <= 0:
            raise ValueError("RecFormerConfig.n_items must be set (number of items, ids 1..n_items)")
        if config.pooling not in ("cls", "mean"):
            raise ValueError(f"RecFormerConfig.pooling must be 'cls' or 'mean', got {config.pooling!r}")
        if isinstance(config.attributes, str):
            raise ValueError(f"RecFormerConfig.attributes must be a list of column names, got the string {config.attributes!r}")
        self.encoder, self.tokenizer = load_encoder(config.encoder)
        hidden = int(self.encoder.config.hidden_size)
        if config.dim not in (0, hidden):
            raise ValueError(f"RecFormerConfig.dim is {config.dim} but encoder {config.encoder!r} has hidden size {hidden}; leave dim at 0")
        config.dim = hidden
        limit = int(getattr(self.encoder.config, "max_position_embeddings", config.max_tokens))
        if not 2 <= config.max_tokens <= limit:
            raise ValueError(f"RecFormerConfig.max_tokens must lie in 2..{limit} (encoder {config.encoder!r}'s positions), got {config.max_tokens}")
        self.cls_id = self.tokenizer.cls_token_id if self.tokenizer.cls_token_id is not None else self.tokenizer.bos_token_id
        if self.cls_id is None:
            raise ValueError(f"the tokenizer of encoder {config.encoder!r} has neither a CLS nor a BOS token to start a sequence with")
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.item_pos_emb = nn.Embedding(config.max_len + 1, hidden)
        self.type_emb = nn.Embedding(4, hidden)
        nn.init.zeros_(self.item_pos_emb.weight)
        nn.init.zeros_(self.type_emb.weight)
        self._tokens: list[Tokens] | None = None
        self._table: tuple[tuple, torch.Tensor] | None = None
        self.train()  # from_pretrained left the encoder in eval mode

    # ---- item sentences (the needs_item_text protocol of train_cf / load_cf) -------------------
    @classmethod
    def prepare_item_features(cls, dataset: Any, options: dict[str, Any], features: Any = None) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """``(item attribute dicts, options with dim set)``: the given ``features`` (``n_items + 1``
        dicts) or :func:`item_attributes` of ``dataset``."""
        from transformers import AutoConfig

        options = dict(options)
        if features is None:
            if dataset is None:
                raise ValueError("RECFORMER needs the item attributes: pass the dataset (to read them) or the attribute dicts")
            features = item_attributes(dataset, options.get("attributes"))
        name, local = encoder_path(options.get("encoder") or RecFormerConfig.encoder)
        hidden = int(AutoConfig.from_pretrained(name, local_files_only=local).hidden_size)
        if options.get("dim") not in (None, 0, hidden):
            raise ValueError(f"RECFORMER: dim is {options['dim']} but the encoder's hidden size is {hidden}")
        options["dim"] = hidden
        return list(features), options

    def item_features_fingerprint(self) -> str:
        return self.config.text_fingerprint

    def set_item_features(self, items: Sequence[Mapping[str, str]]) -> None:
        """Attach and tokenize the ``n_items + 1`` item attribute dicts; the first call sets
        ``config.text_fingerprint``, later ones (at load) must match it."""
        if len(items) != self.config.n_items + 1:
            raise ValueError(f"RECFORMER needs {self.config.n_items + 1} item attribute dicts (row 0 = padding), got {len(items)}")
        fingerprint = strings_fingerprint(render_item(a) for a in items)
        if self.config.text_fingerprint and fingerprint != self.config.text_fingerprint:
            raise ValueError(f"the item sentences (fingerprint {fingerprint}) are not those this RECFORMER model was trained with "
                             f"({self.config.text_fingerprint}): other item texts or attributes {self.config.attributes}?")
        self.config.text_fingerprint = fingerprint
        self._tokens = tokenize_items(self.tokenizer, items, self.config.attr_tokens)
        self._table = None

    # ---- encoding --------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return self.type_emb.weight.device

    def _item_tokens(self) -> list[Tokens]:
        if self._tokens is None:
            raise RuntimeError("RECFORMER has no item sentences yet: call model.set_item_features(...) (train_cf and load_cf do)")
        return self._tokens

    def _history(self, items: np.ndarray) -> list[Tokens]:
        """Token chunks of a history's items, most recent first (padding dropped)."""
        table = self._item_tokens()
        recent = np.asarray(items)[np.asarray(items) != 0][::-1][: self.config.max_len]
        return [table[int(i)] for i in recent]

    def _rows(self, seqs: Sequence[Sequence[Tokens]]) -> dict[str, torch.Tensor]:
        """Right-padded model inputs of token sequences: ``[CLS]`` then each item's tokens, cut
        to ``max_tokens``: ids, item positions, types, word starts and the attention mask."""
        cut = self.config.max_tokens
        built = [(np.concatenate([[self.cls_id], *(t[0] for t in seq)])[:cut],
                  np.concatenate([[0], *(np.full(len(t[0]), k) for k, t in enumerate(seq, start=1))])[:cut],
                  np.concatenate([[TYPE_CLS], *(t[1] for t in seq)])[:cut],
                  np.concatenate([[True], *(t[2] for t in seq)])[:cut]) for seq in seqs]
        shape = (len(built), max(len(b[0]) for b in built))
        out = {"input_ids": np.full(shape, self.pad_id, np.int64), "item_pos": np.zeros(shape, np.int64),
               "types": np.full(shape, TYPE_PAD, np.int64), "starts": np.zeros(shape, bool), "mask": np.zeros(shape, np.int64)}
        for r, arrays in enumerate(built):
            for name, a in zip(("input_ids", "item_pos", "types", "starts"), arrays):
                out[name][r, : len(a)] = a
            out["mask"][r, : len(arrays[0])] = 1
        return {k: torch.as_tensor(v, device=self._device) for k, v in out.items()}

    def _hidden(self, rows: dict[str, torch.Tensor], input_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = rows["input_ids"] if input_ids is None else input_ids
        embeds = self.encoder.get_input_embeddings()(ids) + self.item_pos_emb(rows["item_pos"]) + self.type_emb(rows["types"])
        return self.encoder(inputs_embeds=embeds, attention_mask=rows["mask"]).last_hidden_state

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            out = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
        return F.normalize(out, dim=-1)

    def _encode(self, seqs: Sequence[Sequence[Tokens]]) -> torch.Tensor:
        rows = self._rows(seqs)
        return self._pool(self._hidden(rows), rows["mask"])

    def _encode_many(self, seqs: Sequence[Sequence[Tokens]]) -> torch.Tensor:
        """:meth:`_encode` in chunks of ``encode_batch_size`` sequences of similar length."""
        lengths = [sum(len(t[0]) for t in s) for s in seqs]
        order = np.argsort(lengths, kind="stable")
        out = torch.zeros(len(seqs), self.dim, device=self._device)
        for start in range(0, len(seqs), self.config.encode_batch_size):
            idx = order[start : start + self.config.encode_batch_size]
            out[torch.as_tensor(idx, device=self._device)] = self._encode([seqs[i] for i in idx])
        return out

    def _encode_frozen(self, seqs: Sequence[Sequence[Tokens]]) -> torch.Tensor:
        """Encode without gradients or dropout, as ordinary (not inference-mode) tensors."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(False), torch.no_grad():
                return self._encode_many(seqs)
        finally:
            self.train(was_training)

    # ---- the CF-backbone interface ---------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        """``(n_items + 1, dim)`` encoded item table (row 0 zero), without gradients; computed
        once and cached until the weights change (tracked by the parameters' version counters)."""
        key = (id(self._item_tokens()), tuple(p._version for p in self.parameters()))
        if self._table is None or self._table[0] != key:
            items = self._encode_frozen([[t] for t in self._item_tokens()[1:]])
            self._table = (key, torch.cat([items.new_zeros(1, self.dim), items]))
        return self._table[1]

    def encode_items(self, items: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """``(len(items), dim)`` vectors of items given by their attributes (e.g. items that did
        not exist at training time), comparable with :meth:`user_representation`."""
        return self._encode_frozen([[t] for t in tokenize_items(self.tokenizer, items, self.config.attr_tokens)])

    def user_representation(self, users: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        seqs = [self._history(h) for h in histories.detach().cpu().numpy()]
        return self._encode(seqs) if torch.is_grad_enabled() else self._encode_many(seqs)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Contrastive next-item loss at one random position per row of a sequence batch."""
        inputs, positives, negatives = (batch[k].cpu() for k in ("inputs", "positives", "negatives"))
        counts = (positives != 0).sum(1)  # targets are left-padded: the valid ones end each row
        cols = inputs.shape[1] - counts + (torch.rand(len(counts)) * counts).long().clamp_max(counts - 1)
        rows = torch.arange(len(cols))
        extra = torch.randint(1, self.config.n_items + 1, (self.config.n_negatives,))
        # Each distinct item is encoded once; a user's label is the column of its target.
        cands, inverse = torch.unique(torch.cat([positives[rows, cols], negatives[rows, cols], extra]), return_inverse=True)
        table = self._item_tokens()
        users = self._encode([self._history(inputs[r, : int(c) + 1].numpy()) for r, c in zip(rows, cols)])
        items = self._encode([[table[int(i)]] for i in cands])
        return info_nce(users, items, self.config.temperature, inverse[: len(cols)].to(self._device))

    # ---- pre-training ----------------------------------------------------------------------
    def pretrain(self, dataset: SequenceDataset, out_dir: str | Path, *, train_mask: np.ndarray, seed: int, progress: bool = True) -> dict[str, Any]:
        """MLM + item-item contrastive pre-training on the users of ``train_mask`` with at least
        two training items (a seeded sample of ``pretrain_users``); trains this model in place;
        resumable from ``out_dir``. Returns :func:`~allmrec.cf.pretraining.run_pretraining`'s summary."""
        from allmrec.utils.fingerprint import dataset_fingerprint

        c = self.config
        lens = np.fromiter((len(s) - 2 for s in dataset.sequences), dtype=np.int64, count=dataset.n_users)
        users = sample_users(np.flatnonzero(np.asarray(train_mask, bool) & (lens >= 2)), c.pretrain_users or None, seed, "recformer-pretrain-users")
        if c.pretrain_epochs == 0:
            return {"step": 0, "seconds": 0.0, "epoch_loss": {}, "epochs": 0, "users": 0}
        if c.mlm_weight and self.tokenizer.mask_token_id is None:
            raise ValueError(f"the tokenizer of encoder {c.encoder!r} has no mask token; set mlm_weight=0 to pre-train without MLM")
        torch.manual_seed(int(rng(seed, "recformer-mlm-head").integers(0, 2**63 - 1)))
        head = MLMHead(self.dim, self.encoder.get_input_embeddings().weight.shape[0], getattr(self.encoder.config, "layer_norm_eps", 1e-12)).to(self._device)
        table = self._item_tokens()

        def step_loss(batch: np.ndarray, g: np.random.Generator) -> torch.Tensor:
            prefixes, targets = [], []
            for u in batch:
                t = dataset.train_sequence(int(u))
                cut = int(g.integers(max(1, (len(t) - 1) // 2), len(t)))  # the target is in the second half
                prefixes.append(t[:cut])
                targets.append(int(t[cut]))
            cands, labels = np.unique(targets, return_inverse=True)
            user_rows, item_rows = self._rows([self._history(p) for p in prefixes]), self._rows([[table[i]] for i in cands])
            loss = info_nce(self._pool(self._hidden(user_rows), user_rows["mask"]), self._pool(self._hidden(item_rows), item_rows["mask"]),
                            c.temperature, torch.as_tensor(labels, device=self._device))
            if c.mlm_weight:
                loss = loss + c.mlm_weight * (self.mlm_loss(head, user_rows, g) + self.mlm_loss(head, item_rows, g))
            return loss

        options = PretrainOptions(name=self.name, epochs=c.pretrain_epochs, batch_size=c.pretrain_batch_size, lr=c.pretrain_lr, save_every=c.save_every, seed=seed)
        identity = {"backbone": self.name, "config": dataclasses.asdict(c), "dataset": dataset_fingerprint(dataset)}
        return run_pretraining(nn.ModuleDict({"model": self, "mlm": head}), step_loss, users, out_dir, options, identity, progress)

    def mlm_loss(self, head: MLMHead, rows: dict[str, torch.Tensor], g: np.random.Generator) -> torch.Tensor:
        """Masked-LM cross-entropy of a masked copy of ``rows`` (``[CLS]`` and padding never masked)."""
        ids = rows["input_ids"].cpu().numpy()
        maskable = (rows["mask"].cpu().numpy() == 1) & (rows["types"].cpu().numpy() != TYPE_CLS)
        vocab = self.encoder.get_input_embeddings().weight
        inputs, labels = mlm_mask(ids, rows["starts"].cpu().numpy(), maskable, self.config.mlm_prob, self.tokenizer.mask_token_id, vocab.shape[0], g)
        labels = torch.as_tensor(labels, device=self._device)
        hidden = self._hidden(rows, torch.as_tensor(inputs, device=self._device))
        chosen = labels != -100
        return F.cross_entropy(head(hidden[chosen], vocab), labels[chosen])
