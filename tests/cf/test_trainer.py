"""train_cf / load_cf / evaluation helpers on the synthetic dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch

from allmrec.cf import (
    CFConfig,
    TrainCFConfig,
    build_backbone,
    evaluate_cf,
    load_cf,
    register_backbone,
    score_candidates,
    train_cf,
    user_representations,
)
from allmrec.cf.sampling import left_pad
from allmrec.cf.sequential import SequentialBackbone
from allmrec.training import latest_checkpoint
from allmrec.utils.io import load_tensors

OPTS = dict(dim=16, max_len=12, dropout=0.1)


def _config(name: str = "sasrec", **kw) -> TrainCFConfig:
    base = TrainCFConfig(backbone=name, backbone_options=dict(OPTS), epochs=12, batch_size=16, lr=0.01, patience=0, threads=1)
    return replace(base, **kw)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _metrics(history):
    return [(h["epoch"], h["loss"], h.get("valid")) for h in history]


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "nextitnet", "ncf"])
def test_training_learns_the_pattern(name, dataset, tmp_path):
    model, history = train_cf(dataset, _config(name), tmp_path, progress=False)
    assert len(history) == 12 and history[-1]["loss"] < 0.8 * history[0]["loss"]
    metrics = evaluate_cf(model, dataset, "test")
    assert set(metrics) >= {"hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr"}
    assert metrics["hit@1"] > 0.25, metrics  # random ranking gives 1/20
    assert metrics["users"] == dataset.n_users
    for f in ("model.safetensors", "model.json", "latest.json", "done.json"):
        assert (tmp_path / f).is_file()
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1  # only the newest checkpoint is kept
    meta = json.loads((tmp_path / "model.json").read_text())
    best = max(history, key=lambda h: h["valid"]["ndcg@10"])
    assert meta["backbone"] == name and meta["epoch"] == best["epoch"] and meta["dataset"]["n_items"] == 40


def test_same_seed_same_weights(dataset, tmp_path):
    a, ha = train_cf(dataset, _config(epochs=3), tmp_path / "a", progress=False)
    b, hb = train_cf(dataset, _config(epochs=3), tmp_path / "b", progress=False)
    c, _ = train_cf(dataset, _config(epochs=3, seed=1), tmp_path / "c", progress=False)
    assert _same_weights(a, b) and _metrics(ha) == _metrics(hb)
    assert not _same_weights(a, c)


@pytest.mark.parametrize("name", ["sasrec", "ncf"])
def test_resume_is_bit_identical(name, dataset, tmp_path):
    full, h_full = train_cf(dataset, _config(name, epochs=4), tmp_path / "full", progress=False)
    train_cf(dataset, _config(name, epochs=2), tmp_path / "split", progress=False)
    resumed, h_res = train_cf(dataset, _config(name, epochs=4), tmp_path / "split", progress=False)
    assert _same_weights(full, resumed)
    assert _metrics(h_full) == _metrics(h_res)
    last_full = load_tensors(latest_checkpoint(tmp_path / "full") / "weights.safetensors")
    last_res = load_tensors(latest_checkpoint(tmp_path / "split") / "weights.safetensors")
    assert all(torch.equal(last_full[k], last_res[k]) for k in last_full)
    # A finished run resumed again does nothing and returns the same best model.
    again, h_again = train_cf(dataset, _config(name, epochs=4), tmp_path / "split", progress=False)
    assert _same_weights(again, full) and _metrics(h_again) == _metrics(h_full)


def test_mismatched_resume_is_refused(dataset, tmp_path):
    train_cf(dataset, _config(epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"config differs.*lr: checkpoint 0.01 vs now 0.02"):
        train_cf(dataset, _config(epochs=2, lr=0.02), tmp_path, progress=False)
    with pytest.raises(ValueError, match="backbone_options"):
        train_cf(dataset, _config(epochs=2, backbone_options=dict(OPTS, dim=8)), tmp_path, progress=False)
    other = replace(dataset, sequences=[s[::-1].copy() for s in dataset.sequences])
    with pytest.raises(ValueError, match="dataset"):
        train_cf(other, _config(epochs=2), tmp_path, progress=False)
    # resume=False starts over instead
    _, history = train_cf(dataset, _config(epochs=1, lr=0.02), tmp_path, resume=False, progress=False)
    assert len(history) == 1


def test_early_stopping_keeps_the_best_epoch(dataset, tmp_path):
    # lr = 0: nothing ever improves after the first validation.
    model, history = train_cf(dataset, _config(epochs=10, lr=0.0, patience=2), tmp_path, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((tmp_path / "model.json").read_text())["epoch"] == 1
    state = json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert state["best"]["epoch"] == 1 and state["bad_evals"] == 2


def test_load_cf_round_trip_and_errors(dataset, tmp_path):
    model, _ = train_cf(dataset, _config("gru4rec", epochs=2), tmp_path, progress=False)
    loaded = load_cf(tmp_path / "model.json")
    assert not loaded.training and _same_weights(model, loaded)
    np.testing.assert_array_equal(score_candidates(model, dataset, "test"), score_candidates(loaded, dataset, "test"))

    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_cf(tmp_path / "nowhere")
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(dict(meta, backbone="nope")))
    with pytest.raises(ValueError, match="unknown CF backbone 'nope'"):
        load_cf(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(dict(meta, config=dict(meta["config"], dim=8))))
    with pytest.raises(ValueError, match="weights do not match"):
        load_cf(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(dict(meta, epoch=99)))
    with pytest.raises(ValueError, match="interrupted write"):
        load_cf(tmp_path)


def test_score_candidates_and_representations_keep_user_order(dataset):
    torch.manual_seed(0)
    model = build_backbone("sasrec", n_items=40, n_users=60, **OPTS).eval()
    users = np.array([7, 3, 59, 0, 3])
    scores = score_candidates(model, dataset, "valid", users, batch_size=2)
    reps = user_representations(model, users, [dataset.history(int(u), "valid") for u in users], batch_size=2)
    hist = torch.tensor(left_pad([dataset.sequences[u][:-2] for u in users], 12))
    with torch.no_grad():
        expect = model.score(torch.tensor(users), hist, torch.tensor(dataset.valid_candidates[users]))
        expect_rep = model.user_representation(torch.tensor(users), hist)
    np.testing.assert_allclose(scores, expect.numpy(), atol=1e-5)
    torch.testing.assert_close(reps, expect_rep, atol=1e-5, rtol=1e-5)
    assert model.training is False


def test_cold_users_are_held_out(synthetic, tmp_path):
    ds = synthetic(cold=6)
    model, _ = train_cf(ds, _config("ncf", epochs=2), tmp_path, progress=False)
    assert model.trained_users.sum() == 54 and not model.trained_users[54:].any()
    rep = user_representations(model, [55], [ds.history(55, "test")])
    hist = ds.sequences[55][:-1]
    torch.testing.assert_close(rep[0], model.item_gmf.weight[torch.tensor(hist)].mean(0))


@dataclass
class MeanPoolConfig(CFConfig):
    scale: float = 1.0


@register_backbone("test-meanpool")
class MeanPool(SequentialBackbone):
    """A user-defined backbone: the running mean of the history's item embeddings."""

    config_class: ClassVar[type[CFConfig]] = MeanPoolConfig

    def __init__(self, config: MeanPoolConfig) -> None:
        super().__init__(config)
        self.emb = torch.nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)

    def item_embeddings(self) -> torch.Tensor:
        return self.emb.weight

    def sequence_output(self, histories: torch.Tensor) -> torch.Tensor:
        histories = self._clip(histories)
        x = self.emb(histories)
        counts = (histories != 0).cumsum(1).clamp(min=1).unsqueeze(-1)
        return self.config.scale * x.cumsum(1) / counts


def test_user_defined_backbone(dataset, tmp_path):
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("test-meanpool")(type("Other", (MeanPool,), {}))
    cfg = _config("test-meanpool", epochs=2, backbone_options=dict(dim=8, max_len=12, scale=2.0))
    model, history = train_cf(dataset, cfg, tmp_path, progress=False)
    assert isinstance(model, MeanPool) and model.config.scale == 2.0 and len(history) == 2
    assert isinstance(load_cf(tmp_path), MeanPool)


def test_training_leaves_the_thread_count_as_it_found_it(dataset, tmp_path):
    # The demo trains the CF model and then the LLM in one process: a CF run on 1 thread must
    # not leave the LLM on 1 thread.
    torch.set_num_threads(2)
    train_cf(dataset, _config("sasrec", epochs=1, threads=1), tmp_path, progress=False)
    assert torch.get_num_threads() == 2


def test_user_samples_and_the_pretrain_hook(dataset, tmp_path, monkeypatch):
    """``max_train_users`` / ``max_valid_users`` draw seeded samples; a backbone's ``pretrain``
    hook runs once on a fresh run, is skipped when resuming from an epoch checkpoint, and its
    folder goes with ``resume=False``."""
    from allmrec.cf import evaluate
    from allmrec.cf.sasrec import SASRec

    calls, seen = [], {}

    def pretrain(self, ds, out_dir, *, train_mask, seed, progress):
        calls.append(int(train_mask.sum()))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "marker").write_text("x")
        return {"step": 0}

    def spy_evaluate(model, ds, split, users, batch_size):
        seen["valid"] = users
        return evaluate.evaluate_cf(model, ds, split, users, batch_size)

    monkeypatch.setattr(SASRec, "pretrain", pretrain, raising=False)
    monkeypatch.setattr("allmrec.cf.training.evaluate_cf", spy_evaluate)
    config = _config(epochs=1, max_train_users=20, max_valid_users=15)
    train_cf(dataset, config, tmp_path, progress=False)
    assert calls == [20] and len(seen["valid"]) == 15 and (tmp_path / "pretrain" / "marker").exists()
    state = json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert state["history"][0]["pretrain"] == {"step": 0}
    train_cf(dataset, replace(config, epochs=2), tmp_path, progress=False)
    assert calls == [20]  # resumed from epoch 1: no second pre-training
    train_cf(dataset, replace(config, epochs=1), tmp_path, resume=False, progress=False)
    assert calls == [20, 20]
    monkeypatch.undo()
    train_cf(dataset, replace(config, epochs=1), tmp_path, resume=False, progress=False)
    assert not (tmp_path / "pretrain").exists()
    with pytest.raises(ValueError, match="max_train_users: checkpoint 20 vs now 30"):
        train_cf(dataset, replace(config, epochs=2, max_train_users=30), tmp_path, progress=False)
