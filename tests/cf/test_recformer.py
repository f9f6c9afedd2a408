"""RECFORMER: users and items as key-value sentences through one transformer, on a tiny randomly
initialised BERT (a small BertConfig and a 33-word vocabulary written here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from allmrec.training import latest_checkpoint

from allmrec.cf import TrainCFConfig, build_backbone, evaluate_cf, load_cf, score_candidates, train_cf
from allmrec.cf.recformer import TYPE_CLS, TYPE_KEY, TYPE_PAD, TYPE_VALUE, RecFormer, item_attributes, mlm_mask, render_item, tokenize_items
from allmrec.cf.sampling import left_pad
from allmrec.utils.io import read_json

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "title", "brand", "categories", ":", ",", "item", "group", "shop"]
WORDS += [str(i) for i in range(10)] + [f"##{i}" for i in range(10)]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def data(synthetic):
    """The synthetic dataset with two attribute columns (brand: one of 3 shops; categories: the group)."""
    ds = synthetic()
    brand = [""] + [f"shop {i % 3}" if i != 7 else "" for i in range(1, 41)]
    return dataclasses.replace(ds, item_fields={"brand": brand, "categories": [""] + [f"group {(i - 1) // 10}" for i in range(1, 41)]})


def _options(encoder_dir, **kw):
    return dict(encoder=encoder_dir, max_len=10, max_tokens=64, n_negatives=4, pretrain_epochs=2, pretrain_batch_size=16, pretrain_lr=1e-3, save_every=3) | kw


def _config(encoder_dir, backbone_options=None, **kw) -> TrainCFConfig:
    base = dict(backbone="recformer", backbone_options=_options(encoder_dir, **(backbone_options or {})), epochs=2, batch_size=16, lr=1e-3, patience=0)
    return TrainCFConfig(**{**base, **kw})


def _model(encoder_dir, data, **kw) -> RecFormer:
    torch.manual_seed(0)
    model = build_backbone("recformer", n_items=data.n_items, **_options(encoder_dir, **kw))
    model.set_item_features(item_attributes(data))
    return model


def test_item_sentences_and_their_tokens(data, encoder_dir):
    attrs = item_attributes(data)
    assert attrs[0] == {} and attrs[1] == {"title": "item 1", "brand": "shop 1", "categories": "group 0"}
    assert attrs[7] == {"title": "item 7", "categories": "group 0"}  # empty values are left out
    assert render_item(attrs[12]) == "title: item 12 brand: shop 0 categories: group 1"
    assert item_attributes(data, ["categories"])[12] == {"categories": "group 1"}
    with pytest.raises(ValueError, match="'colour'.*available: title, brand, categories"):
        item_attributes(data, ["title", "colour"])
    tok = _model(encoder_dir, data).tokenizer
    ids, types, starts = tokenize_items(tok, [attrs[12]], attr_tokens=32)[0]
    assert tok.convert_ids_to_tokens(ids.tolist()) == "title : item 1 ##2 brand : shop 0 categories : group 1".split()
    assert types.tolist() == [TYPE_KEY, TYPE_KEY, TYPE_VALUE, TYPE_VALUE, TYPE_VALUE] + [TYPE_KEY, TYPE_KEY, TYPE_VALUE, TYPE_VALUE] * 2
    assert starts.tolist() == [True, True, True, True, False] + [True] * 8  # "##2" continues "1"
    cut = tokenize_items(tok, [attrs[12]], attr_tokens=3)[0][0]
    assert tok.convert_ids_to_tokens(cut.tolist()) == "title : item brand : shop categories : group".split()


def test_user_rows_recent_item_first_with_positions_types_and_truncation(data, encoder_dir):
    model = _model(encoder_dir, data, max_tokens=20)
    rows = model._rows([model._history(np.array([0, 0, 3, 12])), model._history(np.array([5]))])
    tok = model.tokenizer
    first = tok.convert_ids_to_tokens(rows["input_ids"][0].tolist())
    assert first[:6] == ["[CLS]", "title", ":", "item", "1", "##2"]  # item 12, the most recent, first
    assert rows["input_ids"].shape == (2, 20) and first[14:] == ["title", ":", "item", "3", "brand", ":"]  # cut at 20 tokens
    assert rows["item_pos"][0].tolist() == [0] + [1] * 13 + [2] * 6
    assert rows["types"][0, 0] == TYPE_CLS and rows["mask"][0].all()
    n = int(rows["mask"][1].sum())
    assert n == 13 and (rows["types"][1, n:] == TYPE_PAD).all() and (rows["input_ids"][1, n:] == 0).all()


def test_mlm_masking_rules():
    g = np.random.default_rng(0)
    b, t = 400, 30
    ids = np.tile(np.arange(100, 100 + t), (b, 1))
    starts = np.tile(np.arange(t) % 3 == 0, (b, 1))  # words of three tokens
    maskable = np.ones((b, t), bool)
    maskable[:, 0] = False  # [CLS]
    maskable[:, 25:] = False  # padding
    inputs, labels = mlm_mask(ids, starts, maskable, 0.15, mask_id=4, vocab_size=50, g=g)
    chosen = labels != -100
    assert not chosen[~maskable].any() and np.array_equal(inputs[~chosen], ids[~chosen])
    assert np.array_equal(labels[chosen], ids[chosen])
    # round(0.15 * 24) = 4 tokens in whole words (of 2 tokens at 1..2, of 3, and of 1 at 24) that
    # are skipped when they overshoot: 3 + 1 or 2 + 1.
    assert set(chosen.sum(1).tolist()) == {3, 4}
    for r in range(b):
        for w in range(3, 24, 3):
            assert len(set(chosen[r, w : w + 3].tolist())) == 1  # all of a word or none of it
    swapped = inputs[chosen]
    share_mask = (swapped == 4).mean()
    share_kept = (swapped == ids[chosen]).mean()
    assert 0.75 < share_mask < 0.85 and 0.07 < share_kept < 0.14
    again = mlm_mask(ids, starts, maskable, 0.15, mask_id=4, vocab_size=50, g=np.random.default_rng(0))
    assert np.array_equal(again[0], inputs) and np.array_equal(again[1], labels)
    # Single-token words: exactly max(1, round(p * n)) tokens per row.
    _, labels = mlm_mask(ids, np.ones((b, t), bool), maskable, 0.15, 4, 50, np.random.default_rng(1))
    assert ((labels != -100).sum(1) == 4).all()


def test_config_errors_name_the_problem(data, encoder_dir):
    with pytest.raises(ValueError, match="dim is 50 but encoder .* hidden size 32"):
        build_backbone("recformer", n_items=40, encoder=encoder_dir, max_tokens=64, dim=50)
    with pytest.raises(ValueError, match="max_tokens must lie in 2..128"):
        build_backbone("recformer", n_items=40, encoder=encoder_dir, max_tokens=300)
    with pytest.raises(ValueError, match="pooling"):
        build_backbone("recformer", n_items=40, encoder=encoder_dir, max_tokens=64, pooling="max")
    with pytest.raises(ValueError, match="list of column names"):
        build_backbone("recformer", n_items=40, encoder=encoder_dir, max_tokens=64, attributes="title")
    with pytest.raises(FileNotFoundError, match="encoder folder not found"):
        build_backbone("recformer", n_items=40, encoder="./no/such/folder")
    model = build_backbone("recformer", n_items=40, encoder=encoder_dir, max_tokens=64)
    with pytest.raises(RuntimeError, match="set_item_features"):
        model.item_embeddings()
    with pytest.raises(ValueError, match="41 item attribute dicts"):
        model.set_item_features(item_attributes(data)[:-1])


def test_scores_padding_and_gradients(data, encoder_dir):
    model = _model(encoder_dir, data).eval()
    table = model.item_embeddings()
    assert table.shape == (41, 32) and not table.requires_grad and torch.equal(table[0], torch.zeros(32))
    assert torch.allclose(table[1:].norm(dim=1), torch.ones(40))
    hist = torch.as_tensor(left_pad([[1, 2, 3], [7]], 10))
    x = model.user_representation(None, hist)
    assert torch.allclose(model.user_representation(None, torch.as_tensor(left_pad([[1, 2, 3], [7]], 4))), x, atol=1e-6)
    cands = torch.tensor([[4, 5, 6], [8, 9, 1]])
    s = model.score(None, hist, cands)
    assert s.shape == (2, 3) and torch.allclose(s, torch.einsum("bd,bcd->bc", x, table[cands]))

    # Fine-tuning: every part of the model gets gradients except BERT's unused pooler.
    model.train()
    batch = {"inputs": hist, "positives": torch.as_tensor(left_pad([[2, 3, 4], [8]], 10)), "negatives": torch.as_tensor(left_pad([[9, 9, 9], [1]], 10))}
    model.training_loss(batch).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (not name.startswith("encoder.pooler.")), name
    # The table is cached until the weights change (an optimiser step bumps their versions).
    model.eval()
    assert model.item_embeddings() is model.item_embeddings()
    torch.optim.Adam(model.parameters(), lr=0.01).step()
    assert not torch.allclose(model.item_embeddings(), table)


def test_end_to_end_resume_load_and_new_items(data, encoder_dir, tmp_path, monkeypatch):
    full, history = train_cf(data, _config(encoder_dir), tmp_path / "full", progress=False)
    assert read_json(latest_checkpoint(tmp_path / "full") / "trainer_state.json")["history"][0]["pretrain"]["step"] == 8
    assert len(history) == 2 and history[-1]["loss"] < history[0]["loss"]

    # Interrupted in the 5th pre-training step (its 10th MLM loss; last checkpoint: step 4, the
    # end of epoch 1), then stage 2 interrupted after its epoch 1.
    original, calls = RecFormer.mlm_loss, {"n": 0}

    def flaky(self, *args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(RecFormer, "mlm_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_cf(data, _config(encoder_dir), tmp_path / "part", progress=False)
    assert read_json(tmp_path / "part" / "pretrain" / "latest.json")["step"] == 4
    monkeypatch.setattr(RecFormer, "mlm_loss", original)
    train_cf(data, _config(encoder_dir, epochs=1), tmp_path / "part", progress=False)
    resumed, _ = train_cf(data, _config(encoder_dir), tmp_path / "part", progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    users = np.arange(data.n_users)
    scores = score_candidates(full, data, "test", users)
    assert scores.shape == (60, 20) and np.isfinite(scores).all()
    loaded = load_cf(tmp_path / "full", dataset=data)
    assert np.allclose(score_candidates(loaded, data, "test", users), scores, atol=1e-6)
    with pytest.raises(ValueError, match="pass dataset="):
        load_cf(tmp_path / "full")
    other = dataclasses.replace(data, titles=[""] + [f"item {i + 1}" for i in range(1, 41)])
    with pytest.raises(ValueError, match="not those this RECFORMER model was trained with"):
        load_cf(tmp_path / "full", dataset=other)

    # An item that did not exist at training time is scored through its text alone.
    attrs = item_attributes(data)
    assert torch.allclose(loaded.encode_items([attrs[12]])[0], loaded.item_embeddings()[12], atol=1e-6)
    new = loaded.encode_items([{"title": "item 41", "brand": "shop 2", "categories": "group 3"}])
    x = loaded.user_representation(None, torch.as_tensor(left_pad([data.history(0, "test")], 10)))
    assert new.shape == (1, 32) and torch.isfinite(x @ new.T).all()
    assert not torch.allclose(new[0], loaded.item_embeddings()[1:], atol=1e-3)


def test_cls_fine_tuning_fits_a_batch(data, encoder_dir):
    """The default first-token path learns: repeated steps on one batch (same positions, no
    dropout) halve its loss."""
    from allmrec.cf.sampling import make_sampler

    model = _model(encoder_dir, data).eval()
    batch = next(make_sampler(model, data, 16, 0).epoch(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(45):
        torch.manual_seed(1)
        loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_fine_tuning_learns_the_synthetic_pattern(data, encoder_dir, tmp_path):
    """Held-out ranking improves. Mean pooling here: a tiny random BERT's first token says
    almost nothing about the sequence at the start (all CLS vectors nearly parallel), so the
    first-token model needs far more steps than a test can afford."""
    before = evaluate_cf(_model(encoder_dir, data, pooling="mean"), data, "test")
    config = _config(encoder_dir, backbone_options=dict(pretrain_epochs=0, pooling="mean"), epochs=8, lr=3e-3)
    model, _ = train_cf(data, config, tmp_path, progress=False)
    after = evaluate_cf(model, data, "test")
    assert after["ndcg@10"] > before["ndcg@10"] + 0.15, (before, after)
