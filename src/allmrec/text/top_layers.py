"""Fine-tune only the top layers of a text encoder, the frozen lower layers run once per text.

Fine-tuning all of MiniLM in stage 1 costs a forward and a backward through its 6 layers for
every positive and negative item of every batch: about 44 min per Beauty epoch on 2 CPU cores
(benchmarks/results/stage1_speed_beauty.jsonl), within a factor of two of the machine's fp32
matmul peak, so no kernel trick removes it. Training only the top ``n`` layers lets the output
of the frozen lower layers (embeddings included) be computed once per item text and kept; a
step then runs ``n`` layers forward and backward, the pooling and normalisation after them
unchanged. With ``n`` equal to the number of layers this is ordinary full fine-tuning.

The encoder itself does the work: for a step, the Hugging Face model's layer list is cut to its
top layers and its embedding module's output replaced by the cached states, so the model still
builds its own attention mask and the sentence-transformers pooling runs as usual. That needs a
BERT-style encoder (an ``embeddings`` module and one list of layers), which every
sentence-transformers text model we know has (BERT, MiniLM, MPNet, RoBERTa, DistilBERT).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from allmrec.text.encoder import TextEncoder, length_batches


def _parts(encoder: TextEncoder) -> tuple[nn.Module, nn.Module, str]:
    """The Hugging Face model's embedding module, and the module holding its list of layers and
    that list's attribute name (``encoder``, ``"layer"`` for BERT)."""
    from transformers import PreTrainedModel

    hf = next((m for m in encoder.model.modules() if isinstance(m, PreTrainedModel)), None)
    n_layers = getattr(getattr(hf, "config", None), "num_hidden_layers", None)
    holders = [(parent, name) for parent in (hf.modules() if hf is not None else ()) for name, child in parent.named_children()
               if isinstance(child, nn.ModuleList) and len(child) == n_layers]
    embeddings = getattr(hf, "embeddings", None)
    if len(holders) != 1 or not isinstance(embeddings, nn.Module):
        raise ValueError(f"text encoder {encoder.source!r}: fine-tuning only its top layers needs a BERT-style model "
                         "(an `embeddings` module and one list of num_hidden_layers layers); "
                         "set stage1.finetune_layers: 0 to fine-tune all of it")
    return embeddings, *holders[0]


def _top(encoder: TextEncoder, n_top: int) -> list[nn.Module]:
    _, holder, name = _parts(encoder)
    layers = list(getattr(holder, name))
    if not 1 <= n_top <= len(layers):
        raise ValueError(f"stage1.finetune_layers must be between 1 and the encoder's {len(layers)} layers "
                         f"(or 0 for all of them), got {n_top}")
    return layers[len(layers) - n_top :]


def top_layer_parameters(encoder: TextEncoder, n_top: int) -> list[nn.Parameter]:
    """The parameters of ``encoder``'s top ``n_top`` layers (what fine-tuning them trains); a
    clear error when ``encoder`` cannot have only its top layers tuned."""
    return [p for layer in _top(encoder, n_top) for p in layer.parameters()]


class TopLayerTuner(nn.Module):
    """Differentiable sentence embeddings of fixed texts, with only the top ``n_top`` layers of
    ``encoder`` trainable.

    Parameters
    ----------
    encoder
        The encoder to fine-tune; its lower layers and embeddings are frozen here.
    texts
        The texts it will embed (row ``i`` = ``texts[i]``); their lower-layer states are computed
        at construction, in eval mode, and kept in float32 (one ``(length, width)`` row per text).
    n_top
        Layers fine-tuned, from the top; ``1 <= n_top <= num_hidden_layers``. Which parameters
        train is the caller's choice (:func:`top_layer_parameters`); the lower layers' cached
        states never change, so they must stay frozen.
    """

    def __init__(self, encoder: TextEncoder, texts: Sequence[str], n_top: int, batch_size: int = 64, progress: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.texts = [str(t) for t in texts]
        self._embeddings, self._holder, self._name = _parts(encoder)
        self._layers = list(getattr(self._holder, self._name))
        self.n_top = n_top
        self._top = nn.ModuleList(_top(encoder, n_top))
        self._states = self._lower_states(batch_size, progress)

    @contextmanager
    def _only(self, layers: list[nn.Module], embeddings_output: torch.Tensor | None = None) -> Iterator[None]:
        """Run the encoder through ``layers`` only, its embeddings replaced by ``embeddings_output``."""
        full = getattr(self._holder, self._name)
        setattr(self._holder, self._name, nn.ModuleList(layers))
        hook = self._embeddings.register_forward_hook(lambda *_: embeddings_output) if embeddings_output is not None else None
        try:
            yield
        finally:
            setattr(self._holder, self._name, full)
            if hook is not None:
                hook.remove()

    @torch.no_grad()
    def _lower_states(self, batch_size: int, progress: bool) -> list[torch.Tensor]:
        """Each text's token states after the frozen lower layers, without padding."""
        lower = self._layers[: len(self._layers) - self.n_top]
        out: list[torch.Tensor] = [torch.empty(0)] * len(self.texts)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with self._only(lower):
                for idx in length_batches(self.texts, batch_size, progress, "text encoder: frozen layers"):
                    feats = self.encoder._features([self.texts[i] for i in idx])
                    tokens = self.encoder.model[0](dict(feats))["token_embeddings"].float().cpu()
                    lengths = feats["attention_mask"].sum(1).tolist()
                    for row, i, n in zip(tokens, idx, lengths):
                        out[i] = row[: int(n)].clone()
        finally:
            self.encoder.train(was_training)
        return out

    def forward(self, rows: Sequence[int]) -> torch.Tensor:
        """``(len(rows), dim)`` sentence embeddings of ``texts[rows]``; gradients reach the top layers."""
        rows = [int(r) for r in rows]
        if not rows:
            return torch.zeros(0, self.encoder.dim, device=self.encoder.device)
        feats = self.encoder._features([self.texts[r] for r in rows])
        width = feats["input_ids"].shape[1]
        states = torch.zeros(len(rows), width, self._states[rows[0]].shape[-1])
        for k, r in enumerate(rows):
            states[k, : len(self._states[r])] = self._states[r]
        with self._only(list(self._top), states.to(self.encoder.device)):
            return self.encoder.model(feats)["sentence_embedding"]
