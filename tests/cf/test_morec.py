"""MoRec: SASRec over a frozen item text table through a trainable adapter."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from allmrec.cf import TrainCFConfig, build_backbone, evaluate_cf, load_cf, score_candidates, train_cf
from allmrec.cf.morec import MoRec, TextItemEmbedding
from allmrec.cf.sampling import left_pad
from allmrec.utils.io import load_tensors

OPTS = dict(dim=16, max_len=12, dropout=0.1)


def fake_text(n_items: int = 40, d: int = 48, seed: int = 0) -> torch.Tensor:
    """Unit-norm rows like Sentence-BERT's, row 0 (padding) zero."""
    t = torch.nn.functional.normalize(torch.randn(n_items + 1, d, generator=torch.Generator().manual_seed(seed)), dim=1)
    t[0] = 0
    return t


def _config(**kw) -> TrainCFConfig:
    base = dict(backbone="morec", backbone_options=dict(OPTS), epochs=12, batch_size=16, lr=0.01, patience=0, threads=1)
    return TrainCFConfig(**{**base, **kw})


def test_shapes_padding_and_the_table_is_not_a_parameter():
    with pytest.raises(ValueError, match="text_dim"):
        build_backbone("morec", n_items=40, **OPTS)
    model = build_backbone("morec", n_items=40, text_dim=24, **OPTS)
    assert isinstance(model, MoRec) and isinstance(model.item_emb, TextItemEmbedding)
    hist = torch.as_tensor(left_pad([[1, 2, 3], [7]], 12))
    with pytest.raises(RuntimeError, match="set_item_features"):
        model.user_representation(None, hist)
    with pytest.raises(ValueError, match="shape"):
        model.set_item_features(torch.zeros(40, 24))
    table = fake_text(d=24)
    model.set_item_features(table)
    model.eval()
    emb = model.item_embeddings()
    assert emb.shape == (41, 16) and torch.equal(emb[0], torch.zeros(16))
    x = model.user_representation(None, hist)
    assert x.shape == (2, 16)
    cands = torch.tensor([[1, 5, 9], [2, 3, 4]])
    s = model.score(None, hist, cands)
    assert s.shape == (2, 3) and torch.allclose(s, torch.einsum("bd,bcd->bc", x, emb[cands]), atol=1e-6)
    # Extra left padding changes nothing (SASRec's padding invariance carries over).
    assert torch.allclose(model.user_representation(None, torch.as_tensor(left_pad([[1, 2, 3], [7]], 5))), x, atol=1e-5)
    # The text table is a non-persistent buffer: not trained, not saved; no free item table exists.
    names = dict(model.named_parameters())
    assert not any(p.shape[0] == 41 for p in names.values())
    assert set(n for n in names if n.startswith("item_emb.")) == {"item_emb.adapter.weight", "item_emb.adapter.bias"}
    assert "item_emb.text" not in model.state_dict() and "text_probe" in model.state_dict()
    assert torch.equal(model.item_emb.text, table)
    # Gradients reach the adapter, never the table.
    model.train()
    loss = model.training_loss({"inputs": hist, "positives": torch.roll(hist, -1, 1), "negatives": torch.full_like(hist, 5)})
    loss.backward()
    assert model.item_emb.adapter.weight.grad.abs().sum() > 0 and not model.item_emb.text.requires_grad
    norm = build_backbone("morec", n_items=40, text_dim=24, adapter_norm=True, **OPTS)
    norm.set_item_features(table)
    assert norm.item_embeddings().shape == (41, 16) and torch.equal(norm.item_embeddings()[0], torch.zeros(16))


@pytest.mark.parametrize("adapter_norm", [False, True])
def test_a_training_step_adapts_only_its_items_with_the_same_loss_and_gradients(adapter_norm):
    model = build_backbone("morec", n_items=40, text_dim=24, adapter_norm=adapter_norm, **{**OPTS, "dropout": 0.0})
    model.set_item_features(fake_text(d=24))
    hist = torch.as_tensor(left_pad([[1, 2, 3, 4], [7, 9]], 12))
    batch = {"inputs": hist, "positives": torch.roll(hist, -1, 1), "negatives": torch.where(hist != 0, hist + 20, 0)}
    adapted = []
    model.item_emb.adapter.register_forward_hook(lambda mod, args, out: adapted.append(out.shape[0]))
    loss = model.training_loss(batch)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert adapted == [len(set(batch["inputs"].flatten().tolist() + batch["negatives"].flatten().tolist()) - {0})]  # not all 40 items
    with model.item_emb.cached():  # the whole table, as before
        full_loss = super(MoRec, model).training_loss(batch)
    full_grads = torch.autograd.grad(full_loss, list(model.parameters()), allow_unused=True)
    assert torch.allclose(loss, full_loss, atol=1e-6)
    for g, f in zip(grads, full_grads):
        assert (g is None) == (f is None) and (g is None or torch.allclose(g, f, atol=1e-6))
    assert grads[[n for n, _ in model.named_parameters()].index("item_emb.adapter.weight")].abs().sum() > 0


def test_trains_end_to_end_and_round_trips(dataset, tmp_path, caplog):
    table = fake_text()
    before = table.clone()
    model, history = train_cf(dataset, _config(), tmp_path, progress=False, item_features=table)
    assert torch.equal(table, before) and torch.equal(model.item_emb.text, table)
    assert len(history) == 12 and history[-1]["loss"] < 0.8 * history[0]["loss"]
    metrics = evaluate_cf(model, dataset, "test")
    assert metrics["hit@1"] > 0.25, metrics  # random ranking gives 1/20
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["backbone"] == "morec" and meta["config"]["text_dim"] == 48
    assert meta["config"]["text_fingerprint"] == MoRec.table_fingerprint(table)
    saved = load_tensors(tmp_path / "model.safetensors")
    assert not any(t.shape == table.shape for t in saved.values())  # the table is not stored

    users = np.arange(dataset.n_users)
    scores = score_candidates(model, dataset, "test", users)
    loaded = load_cf(tmp_path, item_features=table)
    assert np.array_equal(score_candidates(loaded, dataset, "test", users), scores)
    with pytest.raises(ValueError, match="model.json.*pass dataset="):
        load_cf(tmp_path)
    with pytest.raises(ValueError, match="not the one this MoRec model was trained with"):
        load_cf(tmp_path, item_features=fake_text(seed=1))
    with pytest.raises(ValueError, match="text_dim is 48 but the item text table has width 24"):
        load_cf(tmp_path, item_features=fake_text(d=24))
    # A table recomputed with float-rounding differences loads (with a warning), scores close.
    noisy = table + 1e-7 * torch.randn(table.shape, generator=torch.Generator().manual_seed(3))
    with caplog.at_level(logging.WARNING, logger="allmrec.cf.morec"):
        close = load_cf(tmp_path, item_features=noisy)
    assert "float rounding" in caplog.text
    assert np.allclose(score_candidates(close, dataset, "test", users), scores, atol=1e-4)
    # Resuming with another table is refused; other backbones take no features.
    with pytest.raises(ValueError, match="item features"):
        train_cf(dataset, _config(epochs=13), tmp_path, progress=False, item_features=fake_text(seed=1))
    with pytest.raises(ValueError, match="takes no item features"):
        train_cf(dataset, _config(backbone="sasrec"), tmp_path / "sas", progress=False, item_features=table)


def test_resume_equals_uninterrupted(dataset, tmp_path):
    table = fake_text()
    full, hist_full = train_cf(dataset, _config(epochs=4), tmp_path / "full", progress=False, item_features=table)
    train_cf(dataset, _config(epochs=2), tmp_path / "part", progress=False, item_features=table)
    resumed, hist = train_cf(dataset, _config(epochs=4), tmp_path / "part", progress=False, item_features=table)
    assert [h["loss"] for h in hist] == [h["loss"] for h in hist_full]
    sa, sb = full.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_text_table_from_the_bundled_encoder(dataset, tmp_path, monkeypatch):
    """Without a table, the backbone encodes the dataset's item texts (cached) and load_cf
    recomputes the same table from the dataset."""
    monkeypatch.setenv("ALLMREC_HOME", str(tmp_path / "home"))
    model, _ = train_cf(dataset, _config(epochs=1), tmp_path / "run", progress=False)
    assert model.config.text_dim == 384 and list((tmp_path / "home" / "text_embeddings").glob("*.safetensors"))
    assert torch.allclose(model.item_emb.text.norm(dim=1)[1:], torch.ones(dataset.n_items), atol=1e-4)
    loaded = load_cf(tmp_path / "run", dataset=dataset)
    users = np.arange(10)
    assert np.array_equal(score_candidates(loaded, dataset, "test", users), score_candidates(model, dataset, "test", users))
