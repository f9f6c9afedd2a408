import dataclasses

import numpy as np
import pytest
import torch

from allmrec.align import Stage2Model, Stage2ModelConfig, load_stage2, stage2_config, train_stage2
from allmrec.align.stage2.examples import epoch_plan, training_users
from allmrec.cf.evaluate import user_representations
from allmrec.llm import PromptConfig, build_prompt, display_titles, splice, target_loss
from helpers import tiny_cf, tiny_dataset


@pytest.fixture(scope="module")
def setup():
    ds = tiny_dataset(n_users=6, n_items=30, seq_len=6)
    joint = torch.randn(ds.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    return ds, tiny_cf(ds), joint


MODEL_OPTIONS = {f.name for f in dataclasses.fields(Stage2ModelConfig)}


def small(mode="paper", **kw):
    """A tiny stage-2 config (the paper's LM-loss mode unless ``mode`` says otherwise)."""
    values = {**dict(lr=1e-3, batch_size=2, epochs=1, max_train_users=4, history_len=2, n_candidates=3, max_title_tokens=6, checkpoint_every=2, seed=5), **kw}
    return stage2_config({"mode": mode, "model": {k: v for k, v in values.items() if k in MODEL_OPTIONS},
                          "train": {k: v for k, v in values.items() if k not in MODEL_OPTIONS}})


def test_projectors_follow_the_authors_design_and_are_seeded():
    a, b, c = Stage2Model(8, 16, 576, seed=1), Stage2Model(8, 16, 576, seed=1), Stage2Model(8, 16, 576, seed=2)
    names = [type(m).__name__ for m in a.user_proj] + [type(m).__name__ for m in a.item_proj]
    assert names == ["Linear", "LayerNorm", "LeakyReLU", "Linear", "Linear", "LayerNorm", "GELU", "Linear"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.user_proj[0].weight, c.user_proj[0].weight)
    o_u, o_i = a(torch.randn(3, 8), torch.randn(5, 16))
    assert o_u.shape == (3, 576) and o_i.shape == (5, 576)
    assert (a(torch.zeros(1, 8), torch.zeros(1, 16))[0].abs().sum() > 0)  # never an all-zero soft token


def test_soft_vectors_follow_the_order_of_the_slots():
    model = Stage2Model(8, 16, 576, seed=0)
    titles = ["", "a", "b", "c", "d"]
    prompts = [build_prompt([1, 2], [3, 4], titles), build_prompt([4], [1, 2], titles)]
    x = torch.randn(2, 8)
    joint = torch.randn(5, 16)
    with torch.no_grad():
        got = model.soft_vectors(prompts, x, joint)
        o_u = model.user_proj(x)
        o_i = model.item_proj(joint)
    expected = torch.stack([o_u[0], o_i[1], o_i[2], o_i[3], o_i[4], o_u[1], o_i[4], o_i[1], o_i[2]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_epoch_plan_draws_untouched_negatives_seeded_per_epoch(setup):
    ds, _, _ = setup
    cfg = small(n_candidates=8, max_train_users=None)
    users = training_users(ds, cfg.train)
    order, cands = epoch_plan(ds, users, cfg.train, 0)
    assert sorted(order) == list(range(len(users)))
    for r, u in enumerate(users):
        target = ds.train_sequence(u)[-1]
        assert (cands[r] == target).sum() == 1 and len(set(cands[r])) == 8
        negs = set(cands[r]) - {target}
        assert not negs & set(ds.sequences[u].tolist())
    again = epoch_plan(ds, users, cfg.train, 0)
    other = epoch_plan(ds, users, cfg.train, 1)
    assert np.array_equal(cands, again[1]) and not np.array_equal(cands, other[1])


def _loss_on(model, ds, cf, joint, llm, tok, cfg):
    users = training_users(ds, cfg.train)
    titles = display_titles(ds.titles, tok, cfg.model.max_title_tokens)
    _, cands = epoch_plan(ds, users, cfg.train, 0)
    hist = [ds.train_sequence(u)[:-1] for u in users]
    x = user_representations(cf, users, hist, trim=False)
    prompts = [build_prompt(hist[r], cands[r], titles, ds.wording, cfg.model.prompt_config(), int(ds.train_sequence(u)[-1])) for r, u in enumerate(users)]
    with torch.no_grad():
        b = splice(prompts, tok, llm.get_input_embeddings(), model.soft_vectors(prompts, x, joint), targets=[p.target for p in prompts], padding_side="right")
        return float(target_loss(llm, b))


def test_training_moves_only_the_projectors_and_lowers_the_loss(smollm, setup):
    llm, tok = smollm
    ds, cf, joint = setup
    cfg = small(epochs=4)
    before_llm = {k: v.clone() for k, v in llm.state_dict().items()}
    before_cf = {k: v.clone() for k, v in cf.state_dict().items()}
    init = Stage2Model(cf.dim, joint.shape[1], 576, cfg.model, seed=cfg.train.seed)
    loss0 = _loss_on(init, ds, cf, joint, llm, tok, cfg)
    model, state = train_stage2(ds, cf, joint, llm, tok, cfg, out_dir=None, progress=False)
    assert state["step"] == 8
    assert all(p.grad is None for p in llm.parameters())
    assert all(torch.equal(v, before_llm[k]) for k, v in llm.state_dict().items())
    assert all(torch.equal(v, before_cf[k]) for k, v in cf.state_dict().items())
    assert all(p.grad is not None for p in model.parameters())  # every projector weight was trained
    assert not torch.equal(model.user_proj[0].weight, init.user_proj[0].weight)
    assert next(model.parameters()).dtype == torch.float32
    assert _loss_on(model, ds, cf, joint, llm, tok, cfg) < loss0 * 0.7


def test_resume_equals_uninterrupted_and_refuses_other_inputs(smollm, setup, tmp_path, monkeypatch):
    import allmrec.align.stage2.training as stage2

    llm, tok = smollm
    ds, cf, joint = setup
    cfg = small(batch_size=1, epochs=2, max_steps=6, checkpoint_every=3)  # 4 steps per epoch
    full, _ = train_stage2(ds, cf, joint, llm, tok, cfg, tmp_path / "full", progress=False)
    # Crash in the middle of step 4 (the last of epoch 0); the newest checkpoint is step 3 (mid-epoch 0).
    calls = {"n": 0}
    real_loss = stage2.target_loss

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(stage2, "target_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_stage2(ds, cf, joint, llm, tok, cfg, tmp_path / "part", progress=False)
    monkeypatch.setattr(stage2, "target_loss", real_loss)
    assert (tmp_path / "part" / "checkpoints" / "step-00000003" / "optimizer.safetensors").exists()
    assert not (tmp_path / "part" / "model.json").exists()
    resumed, state = train_stage2(ds, cf, joint, llm, tok, cfg, tmp_path / "part", progress=False)
    assert state["step"] == 6
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    loaded = load_stage2(tmp_path / "part", llm=llm, cf_model=cf, joint_items=joint)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), resumed.state_dict().values()))
    assert loaded.prompt_config() == PromptConfig(history_len=2, max_title_tokens=6)

    other_cf = tiny_cf(ds)
    with torch.no_grad():
        other_cf.items.add_(1.0)
    with pytest.raises(ValueError, match="CF model"):
        train_stage2(ds, other_cf, joint, llm, tok, small(batch_size=1, epochs=2, max_steps=8, checkpoint_every=3), tmp_path / "part", progress=False)
    with pytest.raises(ValueError, match="joint item embeddings"):
        load_stage2(tmp_path / "part", joint_items=joint + 1)
    llm.allmrec_identity, saved = "other-llm@123", llm.allmrec_identity
    try:
        with pytest.raises(ValueError, match="LLM 'SmolLM2.*other-llm@123"):
            load_stage2(tmp_path / "part", llm=llm)
    finally:
        llm.allmrec_identity = saved
    with pytest.raises(ValueError, match="lr"):
        train_stage2(ds, cf, joint, llm, tok, small(batch_size=1, epochs=2, max_steps=8, checkpoint_every=3, lr=5e-4), tmp_path / "part", progress=False)


def test_bad_joint_table(smollm, setup):
    llm, tok = smollm
    ds, cf, _ = setup
    with pytest.raises(ValueError, match="joint_items must have shape"):
        train_stage2(ds, cf, torch.zeros(5, 16), llm, tok, small(), None, progress=False)
