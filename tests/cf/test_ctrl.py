"""CTRL: a SASRec whose weights are first aligned with frozen text embeddings (InfoNCE), then
fine-tuned by the usual CF trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from allmrec.training import latest_checkpoint

from allmrec.cf import TrainCFConfig, build_backbone, load_cf, score_candidates, train_cf
from allmrec.cf.ctrl import CTRL, Projections, user_prompt
from allmrec.cf.pretraining import info_nce
from allmrec.cf.sampling import left_pad
from allmrec.cf.sasrec import SASRec
from allmrec.utils.io import load_tensors, read_json

OPTS = dict(dim=16, max_len=12, dropout=0.1)


@pytest.fixture(scope="module")
def encoder():
    from allmrec.text import load_text_encoder

    return load_text_encoder("default")


@pytest.fixture(autouse=True)
def _home(tmp_path_factory, monkeypatch):
    # Item text embeddings are cached under ALLMREC_HOME: one cache for the module's tests.
    monkeypatch.setenv("ALLMREC_HOME", str(tmp_path_factory.getbasetemp() / "ctrl_home"))


def _config(**kw) -> TrainCFConfig:
    opts = dict(OPTS, pretrain_epochs=4, pretrain_batch_size=16, save_every=3)
    opts.update(kw.pop("backbone_options", {}))
    base = dict(backbone="ctrl", backbone_options=opts, epochs=2, batch_size=16, lr=0.01, patience=0, threads=1)
    return TrainCFConfig(**{**base, **kw})


def test_info_nce_on_hand_made_batches():
    eye = torch.eye(2)
    # logits = cos / t = [[1, 0], [0, 1]] / t; each row's loss is log(1 + exp(-1 / t)).
    assert math.isclose(float(info_nce(eye, eye, 1.0)), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    assert math.isclose(float(info_nce(eye, eye, 0.5, symmetric=True)), math.log(1 + math.exp(-2)), rel_tol=1e-6)
    # Cosine: the scale of a row does not matter.
    assert math.isclose(float(info_nce(3 * eye, eye, 1.0)), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    aligned = float(info_nce(x, x, 0.1, symmetric=True))
    shuffled = float(info_nce(x, x[torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])], 0.1, symmetric=True))
    assert aligned < 0.1 < shuffled
    # Labels point into a larger key set; a symmetric loss needs one key per query.
    keys = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    # Row 1: logits (0, 1, -1), target 1; row 2: logits (1, 0, 0), target 0.
    expected = (math.log(1 + math.e + 1 / math.e) - 1 + math.log(math.e + 2) - 1) / 2
    assert math.isclose(float(info_nce(eye, keys, 1.0, labels=torch.tensor([1, 0]))), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="one key per query"):
        info_nce(eye, keys, 1.0, symmetric=True)


def test_ctrl_is_a_sasrec_with_the_same_scores():
    torch.manual_seed(0)
    ctrl = build_backbone("ctrl", n_items=40, **OPTS)
    sas = build_backbone("sasrec", n_items=40, **OPTS)
    assert isinstance(ctrl, SASRec) and ctrl.state_dict().keys() == sas.state_dict().keys()
    sas.load_state_dict(ctrl.state_dict())
    ctrl.eval(), sas.eval()
    hist = torch.as_tensor(left_pad([[1, 2, 3], [7, 8]], 12))
    cands = torch.tensor([[4, 5, 6], [9, 1, 2]])
    assert torch.equal(ctrl.score(None, hist, cands), sas.score(None, hist, cands))


def test_user_prompt_lists_recent_titles_first(dataset):
    train = dataset.train_sequence(0)
    assert user_prompt(dataset, 0, 2) == f"{dataset.titles[train[-1]]}; {dataset.titles[train[-2]]}"
    assert user_prompt(dataset, 0, 100).count(";") == len(train) - 1


def test_stage1_gradients_reach_the_cf_model_and_the_heads_only():
    torch.manual_seed(0)
    model = build_backbone("ctrl", n_items=40, **OPTS)
    heads = Projections(16, 24, 8)
    user_text, item_text = torch.randn(2, 24), torch.randn(3, 24)
    hist = torch.as_tensor(left_pad([[1, 2, 3], [7, 8]], 12))
    loss = model.contrastive_loss(heads, hist, user_text, torch.tensor([4, 5, 6]), item_text)
    loss.backward()
    assert not user_text.requires_grad and not item_text.requires_grad
    for name, p in [*model.named_parameters(), *heads.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Only the histories' and the batch's items get gradients in the item table.
    touched = set(torch.nonzero(model.item_emb.weight.grad.abs().sum(1)).flatten().tolist())
    assert touched == {1, 2, 3, 4, 5, 6, 7, 8}


def test_pretrain_keeps_the_text_tower_frozen_and_moves_sasrec(dataset, encoder, tmp_path):
    torch.manual_seed(0)
    model = build_backbone("ctrl", n_items=40, **OPTS, pretrain_epochs=2, pretrain_batch_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fingerprint = encoder.fingerprint()
    summary = model.pretrain(dataset, tmp_path, train_mask=dataset.train_users, seed=0, progress=False, encoder=encoder)
    assert summary["step"] == 8 and summary["users"] == 60
    assert encoder.fingerprint() == fingerprint and all(p.grad is None for p in encoder.parameters())
    assert not torch.equal(before["item_emb.weight"], model.item_emb.weight)
    # The cached user texts: one row per user, reused by a second call (the run is finished).
    assert load_tensors(tmp_path / "user_text.safetensors")["embeddings"].shape == (60, encoder.dim)
    again = build_backbone("ctrl", n_items=40, **OPTS, pretrain_epochs=2, pretrain_batch_size=16)
    again.pretrain(dataset, tmp_path, train_mask=dataset.train_users, seed=0, progress=False, encoder=encoder)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_end_to_end_resume_after_interruption_is_exact(dataset, tmp_path, monkeypatch):
    full, _ = train_cf(dataset, _config(), tmp_path / "full", progress=False)
    state = read_json(latest_checkpoint(tmp_path / "full") / "trainer_state.json")
    assert state["history"][0]["pretrain"]["step"] == 16
    # Stage 2's optimiser holds SASRec's parameters only (no projection head).
    n_params = len(list(full.parameters()))
    moments = load_tensors(latest_checkpoint(tmp_path / "full") / "optimizer.safetensors")
    assert {int(k.split(".")[1]) for k in moments} == set(range(n_params))
    assert isinstance(load_cf(tmp_path / "full"), CTRL)  # no text encoder needed at load

    # Interrupt pre-training at its 8th step (last checkpoint: step 6), then run again.
    calls = {"n": 0}
    original = CTRL.contrastive_loss

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CTRL, "contrastive_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_cf(dataset, _config(), tmp_path / "part", progress=False)
    assert read_json(tmp_path / "part" / "pretrain" / "latest.json")["step"] == 6
    monkeypatch.setattr(CTRL, "contrastive_loss", original)
    # Stage 2 interrupted too: one epoch, then the second.
    train_cf(dataset, _config(epochs=1), tmp_path / "part", progress=False)
    resumed, _ = train_cf(dataset, _config(), tmp_path / "part", progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    users = np.arange(dataset.n_users)
    scores = score_candidates(resumed, dataset, "test", users)
    assert scores.shape == (dataset.n_users, 20) and np.array_equal(scores, score_candidates(full, dataset, "test", users))

    # Pre-training from the same folder with other options is refused, naming the option.
    with pytest.raises(ValueError, match="cannot resume pre-training.*temperature"):
        CTRL(CTRL.config_class(n_items=40, n_users=60, **OPTS, pretrain_epochs=4, pretrain_batch_size=16, save_every=3, temperature=0.5)).pretrain(
            dataset, tmp_path / "part" / "pretrain", train_mask=dataset.train_users, seed=0, progress=False)


def test_pretraining_helps_over_plain_init(dataset, tmp_path):
    """Stage 1 alone (no CF epochs) already ranks better than a random SASRec: the item texts
    ("item 12") and the user prompts carry the group structure of the synthetic data."""
    from allmrec.cf import evaluate_cf

    opts = dict(pretrain_epochs=30, pretrain_lr=0.01)
    plain, _ = train_cf(dataset, _config(epochs=0, backbone_options=dict(pretrain_epochs=0)), tmp_path / "plain", progress=False)
    aligned, _ = train_cf(dataset, _config(epochs=0, backbone_options=opts), tmp_path / "aligned", progress=False)
    assert evaluate_cf(aligned, dataset, "test")["ndcg@10"] > evaluate_cf(plain, dataset, "test")["ndcg@10"] + 0.05
