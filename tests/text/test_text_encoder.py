"""The Sentence-BERT wrapper on the real bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import copy
import socket

import numpy as np
import pytest
import torch

from allmrec.data.dataset import SequenceDataset
from allmrec.text import BUNDLED_NAME, TextEncoder, item_text_embeddings, load_text_encoder
from allmrec.text.encoder import _is_bundled

pytestmark = pytest.mark.slow

TEXTS = ["Title: Glow nail polish, Brand: OPI", "Title: Rose perfume", "x", "Title: a very long shampoo name " * 20]


@pytest.fixture(scope="module")
def base_encoder() -> TextEncoder:
    torch.set_num_threads(2)
    return load_text_encoder("default")


@pytest.fixture
def encoder(base_encoder: TextEncoder) -> TextEncoder:
    return copy.deepcopy(base_encoder)


def test_bundled_default(base_encoder: TextEncoder) -> None:
    assert base_encoder.dim == 384
    assert base_encoder.max_seq_length == 64
    assert base_encoder.source == BUNDLED_NAME
    assert not base_encoder.training and not base_encoder.model.training  # loaded for inference
    for spec in ("default", "DEFAULT", "bundled", "bundled:all-minilm-l6-v2"):
        assert _is_bundled(spec)
    assert not _is_bundled("sentence-transformers/all-MiniLM-L6-v2")


def test_bundled_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("the bundled encoder must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    enc = load_text_encoder("bundled:all-minilm-l6-v2", max_seq_length=32)
    assert enc.dim == 384 and enc.max_seq_length == 32


def test_encode_matches_forward_and_keeps_order(encoder: TextEncoder) -> None:
    emb = encoder.encode(TEXTS, batch_size=2)
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and not emb.requires_grad
    encoder.eval()
    direct = encoder(TEXTS)
    assert direct.requires_grad
    torch.testing.assert_close(emb, direct.detach(), atol=1e-5, rtol=1e-4)
    rev = encoder.encode(TEXTS[::-1], batch_size=3)
    torch.testing.assert_close(rev, emb.flip(0), atol=1e-5, rtol=1e-4)
    # all-MiniLM-L6-v2 ends with a Normalize module
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    assert encoder.encode([]).shape == (0, 384)


def test_encode_restores_training_mode(encoder: TextEncoder) -> None:
    encoder.train()
    encoder.encode(TEXTS[:1])
    assert encoder.training and encoder.model.training
    a, b = encoder(TEXTS[:2]), encoder(TEXTS[:2])  # dropout active in train mode
    assert not torch.equal(a, b)


def test_max_seq_length_truncates(encoder: TextEncoder) -> None:
    encoder.max_seq_length = 8
    feats = encoder._features(TEXTS)
    assert feats["input_ids"].shape[1] == 8
    long_a = encoder.encode(["one two three four five six seven eight nine ten"])
    long_b = encoder.encode(["one two three four five six seven eight nine ten eleven twelve"])
    torch.testing.assert_close(long_a, long_b)  # the tails past 8 word pieces are cut
    with pytest.raises(ValueError):
        encoder.max_seq_length = 1


def test_gradients_reach_the_encoder(encoder: TextEncoder) -> None:
    encoder.unfreeze().train()
    encoder(TEXTS[:2]).sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    encoder.freeze()
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training


def test_save_load_roundtrip(encoder: TextEncoder, tmp_path) -> None:
    with torch.no_grad():  # pretend it was fine-tuned
        next(encoder.model.parameters()).add_(0.01)
    encoder.max_seq_length = 48
    target = tmp_path / "enc"
    encoder.save(target)
    encoder.save(target)  # overwriting an existing folder works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no temporary folders left
    assert (target / "model.safetensors").exists() and not list(target.glob("*.bin"))
    loaded = load_text_encoder(target, max_seq_length=None)
    assert loaded.fingerprint() == encoder.fingerprint()
    assert loaded.source == str(target.resolve()) and loaded.base == BUNDLED_NAME and loaded.max_seq_length == 48
    torch.testing.assert_close(loaded.encode(TEXTS), encoder.encode(TEXTS))
    assert TextEncoder.load(target).fingerprint() == encoder.fingerprint()


def test_bad_specs(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_encoder(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers"):
        load_text_encoder(tmp_path)


def _dataset(texts: list[str]) -> SequenceDataset:
    n = len(texts)
    return SequenceDataset(
        name="tiny",
        item_ids=np.array(["<pad>"] + [f"i{k}" for k in range(1, n + 1)]),
        titles=[""] + texts,
        texts=[""] + texts,
        user_ids=np.array(["u0"]),
        sequences=[np.arange(1, n + 1)],
        valid_candidates=np.zeros((1, 20), dtype=np.int64),
        test_candidates=np.zeros((1, 20), dtype=np.int64),
        train_users=np.ones(1, dtype=bool),
        fingerprint="tiny-1",
    )


def test_item_text_embeddings_cached(encoder: TextEncoder, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset(TEXTS)
    emb = item_text_embeddings(encoder, ds, batch_size=2, cache_dir=tmp_path)
    assert emb.shape == (len(TEXTS) + 1, 384)
    assert torch.count_nonzero(emb[0]) == 0
    torch.testing.assert_close(emb[1:], encoder.encode(TEXTS))
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def boom(*a, **k):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(encoder, "encode", boom)
    torch.testing.assert_close(item_text_embeddings(encoder, ds, cache_dir=tmp_path), emb)
    monkeypatch.undo()
    # A different truncation length (or fine-tuned weights) is a different cache entry.
    encoder.max_seq_length = 4
    short = item_text_embeddings(encoder, ds, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not torch.allclose(short[4], emb[4])
