"""Shapes, padding invariance, causality and packing of the built-in backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from allmrec.cf import available_backbones, build_backbone
from allmrec.cf.sampling import PointwiseSampler, SequenceSampler, left_pad, pack_batch

SEQUENTIAL = ["sasrec", "gru4rec", "nextitnet"]
ALL = SEQUENTIAL + ["ncf"]


def _model(name: str, **kw):
    torch.manual_seed(0)
    return build_backbone(name, n_items=40, n_users=60, dim=16, max_len=12, **kw)


def test_builtin_backbones_registered():
    assert set(ALL) <= set(available_backbones())


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_gradients(name, dataset):
    model = _model(name)
    users = torch.tensor([0, 1, 2])
    hist = torch.tensor(left_pad([[1, 2, 3], [5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]], 12))
    cands = torch.randint(1, 41, (3, 20))
    assert model.item_embeddings().shape == (41, 16)
    assert model.user_representation(users, hist).shape == (3, 16)
    assert model.score(users, hist, cands).shape == (3, 20)
    # Histories longer than max_len are clipped, not an error.
    long = torch.tensor(left_pad([list(range(1, 31))], 30))
    assert model.user_representation(torch.tensor([0]), long).shape == (1, 16)

    sampler = SequenceSampler(dataset, 12, 8, seed=0) if model.batch_kind == "sequence" else PointwiseSampler(dataset, 8, seed=0)
    batch = next(iter(sampler.epoch(1)))
    loss = model.training_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.item_embeddings().grad is not None


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_padding_does_not_change_output(name):
    model = _model(name).eval()
    seq = [4, 9, 2, 17, 3]
    short = torch.tensor([[0] * 1 + seq])
    long = torch.tensor([[0] * 7 + seq])
    with torch.no_grad():
        a = model.sequence_output(short)[0, -len(seq) :]
        b = model.sequence_output(long)[0, -len(seq) :]
        padded = model.sequence_output(long)[0, :7]
    if name != "sasrec":  # SASRec's final LayerNorm maps zeroed padding to its bias
        assert torch.all(padded == 0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert model.padding_invariant


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_causal(name):
    model = _model(name).eval()
    x = torch.tensor([[0, 0, 4, 9, 2, 17, 3, 8, 11, 5, 6, 1]])
    y = x.clone()
    y[0, 7:] = torch.tensor([30, 31, 32, 33, 34])  # change the future of position 6
    with torch.no_grad():
        hx, hy = model.sequence_output(x), model.sequence_output(y)
    torch.testing.assert_close(hx[0, :7], hy[0, :7], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(hx[0, 7:], hy[0, 7:])


def test_sasrec_packed_equals_padded(dataset):
    model = _model("sasrec", dropout=0.0).eval()
    padded = next(iter(SequenceSampler(dataset, 12, 32, seed=3).epoch(1)))
    packed = next(iter(SequenceSampler(dataset, 12, 32, seed=3, pack=True).epoch(1)))
    assert packed["inputs"].shape[0] < padded["inputs"].shape[0]
    assert int((packed["positives"] != 0).sum()) == int((padded["positives"] != 0).sum())
    torch.testing.assert_close(model.training_loss(packed), model.training_loss(padded), atol=1e-6, rtol=1e-5)


def test_pack_batch_layout():
    inputs = left_pad([[1, 2, 3, 4], [5], [6, 7], [8, 9, 10]], 5)
    (packed,), segments, columns = pack_batch((inputs,), 5)
    assert packed.shape[1] == 5 and packed.shape[0] == 2
    for r in range(len(inputs)):
        toks = packed[segments == r + 1]
        np.testing.assert_array_equal(toks, inputs[r][inputs[r] != 0])  # order kept
        np.testing.assert_array_equal(columns[segments == r + 1], np.flatnonzero(inputs[r]))
    assert np.all((packed == 0) == (segments == 0))


def test_sasrec_defaults_follow_the_paper():
    model = build_backbone("sasrec", n_items=10)
    c = model.config
    assert (c.dim, c.max_len, c.n_blocks, c.n_heads, c.dropout) == (50, 50, 2, 1, 0.5)
    assert torch.all(model.item_embeddings()[0] == 0)
    n_params = sum(p.numel() for p in model.parameters())
    # item table 11x50 + positions 50x50 + 2 blocks x (attention 4*50*50+4*50, FFN 2*(50*50+50), 2 LN) + last LN
    assert n_params == 11 * 50 + 50 * 50 + 2 * (4 * 2550 + 2 * 2550 + 2 * 100) + 100


def test_ncf_unknown_user_falls_back_to_history_mean():
    model = _model("ncf")
    mask = torch.ones(60, dtype=torch.bool)
    mask[5] = False
    model.prepare_training(mask)
    hist = torch.tensor([[0, 0, 3, 4], [0, 0, 3, 4], [0, 0, 3, 4]])
    x = model.user_representation(torch.tensor([0, 5, 99]), hist)
    torch.testing.assert_close(x[0], model.user_gmf.weight[0])
    expected = model.item_gmf.weight[[3, 4]].mean(0)
    torch.testing.assert_close(x[1], expected)
    torch.testing.assert_close(x[2], expected)
    # score = GMF dot product + MLP tower, the function it was trained with
    c = torch.tensor([[3, 7]])
    loss_logit = (model.user_gmf(torch.tensor([0])) * model.item_gmf(torch.tensor([7]))).sum(-1) + model._mlp_score(
        model.user_mlp(torch.tensor([0])), torch.tensor([7])
    )
    torch.testing.assert_close(model.score(torch.tensor([0]), hist[:1], c)[0, 1], loss_logit[0])


def test_ncf_plain_mf_scores_are_dot_products():
    model = _model("ncf", mlp_layers=())
    hist = torch.tensor([[1, 2]])
    c = torch.tensor([[3, 4, 5]])
    s = model.score(torch.tensor([2]), hist, c)
    torch.testing.assert_close(s[0], model.item_embeddings()[c[0]] @ model.user_representation(torch.tensor([2]), hist)[0])


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option"):
        build_backbone("sasrec", n_items=10, n_layer=3)
