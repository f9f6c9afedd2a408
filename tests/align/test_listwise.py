import numpy as np
import pytest
import torch

from allmrec.align import Stage2Config, Stage2Model, load_stage2, train_stage2
from allmrec.align.listwise import ScoreHead, candidate_states, standardize
from allmrec.align.stage2 import cf_candidate_scores, curve_users, training_users
from allmrec.cf.evaluate import score_candidates
from allmrec.eval.metrics import target_ranks
from allmrec.llm import build_prompt, display_titles, splice
from allmrec.llm.testing import tiny_cf, tiny_dataset
from allmrec.recommend import InferenceConfig, evaluate_llm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    ds = tiny_dataset(n_users=8, n_items=30, seq_len=6)
    joint = torch.randn(ds.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    return ds, tiny_cf(ds), joint


def listwise(**kw):
    base = dict(objective="listwise", residual=True, train_target="valid", lr=1e-2, batch_size=2, epochs=1, history_len=2,
                n_candidates=20, max_title_tokens=4, checkpoint_every=2, seed=5)
    return Stage2Config(**{**base, **kw})


def test_config_rejects_inconsistent_modes():
    with pytest.raises(ValueError, match="residual needs objective 'listwise'"):
        Stage2Config(residual=True)
    with pytest.raises(ValueError, match="train_projectors"):
        Stage2Config(train_projectors=False)
    with pytest.raises(ValueError, match="objective"):
        Stage2Config(objective="pairwise")
    with pytest.raises(ValueError, match="item_table"):
        Stage2Config(item_table="text")


def test_head_starts_at_the_cf_ranking_and_standardizes():
    head = ScoreHead(8, 4)
    cf = torch.tensor([[3.0, 1.0, 2.0], [0.0, 10.0, 5.0]])
    out = head(torch.randn(2, 3, 8), torch.randn(2, 8), cf)
    assert torch.allclose(out, standardize(cf))  # zero last layer: gate exp(0) = 1, delta 0
    assert torch.allclose(standardize(cf).mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.equal(head(torch.randn(2, 3, 8), torch.randn(2, 8)), torch.zeros(2, 3))


def test_candidate_states_read_the_candidate_soft_tokens_under_left_padding(smollm, setup):
    llm, tok = smollm
    ds, _, _ = setup
    titles = display_titles(ds.titles, tok, 4)
    prompts = [build_prompt([1, 2, 3], [4, 5, 6], titles), build_prompt([7], [8, 9, 10], titles)]  # different lengths
    model = Stage2Model(8, 16, 576, seed=0)
    joint = torch.randn(ds.n_items + 1, 16)
    with torch.no_grad():
        soft = model.soft_vectors(prompts, torch.randn(2, 8), joint)
        batch = splice(prompts, tok, llm.get_input_embeddings(), soft, padding_side="left")
        h_cand, h_last = candidate_states(llm, batch, 3)
        hidden = llm.base_model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids).last_hidden_state
    for b in range(2):
        slots = batch.soft_mask[b].nonzero().flatten()
        assert torch.equal(h_cand[b], hidden[b, slots[-3:]])
        assert torch.equal(h_last[b], hidden[b, -1])


def test_valid_target_holds_out_curve_users(setup):
    ds, _, _ = setup
    cfg = listwise(valid_users=3)
    held, train = curve_users(ds, cfg), training_users(ds, cfg)
    assert len(held) == 3 and not set(held) & set(train)
    assert len(train) == int(ds.train_users.sum()) - 3


@pytest.mark.parametrize("train_projectors", [True, False])
def test_gradients_reach_only_what_trains(smollm, setup, train_projectors):
    llm, tok = smollm
    ds, cf, joint = setup
    cfg = listwise(max_steps=2, train_projectors=train_projectors)
    model, state = train_stage2(ds, cf, joint, llm, tok, cfg, out_dir=None, progress=False)
    assert state["step"] == 2
    assert all(p.grad is None for p in llm.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert all((p.grad is not None) == train_projectors for p in model.user_proj.parameters())
    assert all((p.grad is not None) == train_projectors for p in model.item_proj.parameters())


def test_untrained_residual_ranks_like_the_cf_model_and_round_trips(smollm, setup, tmp_path):
    llm, tok = smollm
    ds, cf, joint = setup
    model, state = train_stage2(ds, cf, joint, llm, tok, listwise(max_steps=2, lr=0.0, valid_users=2, eval_every=1), tmp_path, progress=False)
    assert [p[0] for p in state["curve"]] == [0, 1, 2]
    users = np.arange(4)
    metrics, rows = evaluate_llm(ds, llm, tok, "test", users, stage2=model, cf_model=cf, joint_items=joint, config=InferenceConfig(mode="rank"))
    assert [r["rank"] for r in rows] == target_ranks(score_candidates(cf, ds, "test", users)).tolist()
    loaded = load_stage2(tmp_path, llm=llm, cf_model=cf, joint_items=joint)
    assert loaded.objective == "listwise" and loaded.residual
    _, again = evaluate_llm(ds, llm, tok, "test", users, stage2=loaded, cf_model=cf, joint_items=joint, config=InferenceConfig(mode="rank"))
    assert [r["scores"] for r in again] == [r["scores"] for r in rows]
    with pytest.raises(ValueError, match="does not generate|not trained to generate"):
        evaluate_llm(ds, llm, tok, "test", users, stage2=loaded, cf_model=cf, joint_items=joint, config=InferenceConfig(mode="generate"))


def test_training_lowers_the_listwise_loss_with_cached_states(smollm, setup):
    llm, tok = smollm
    ds, cf, joint = setup
    cfg = listwise(train_projectors=False, residual=False, epochs=30, batch_size=4, lr=3e-3)
    model, state = train_stage2(ds, cf, joint, llm, tok, cfg, out_dir=None, progress=False)
    losses = [v for _, v in state["loss_log"]]
    assert losses[-1] < 0.5 * losses[0]


def test_cf_candidate_scores_match_the_backbone(setup):
    ds, cf, _ = setup
    users = np.arange(3)
    hist = [ds.history(int(u), "test") for u in users]
    got = cf_candidate_scores(cf, users, hist, ds.test_candidates[users])
    assert np.allclose(got.numpy(), score_candidates(cf, ds, "test", users), atol=1e-5)


def test_frozen_projector_run_keeps_llm_states_and_resumes_without_the_llm(smollm, setup, tmp_path, monkeypatch):
    import allmrec.align.stage2 as stage2

    llm, tok = smollm
    ds, cf, joint = setup
    cfg = listwise(train_projectors=False, epochs=2, batch_size=4, checkpoint_every=1)
    full, _ = train_stage2(ds, cf, joint, llm, tok, cfg, tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "llm_states.safetensors").exists()
    # Resuming from the last checkpoint must not run the LLM again: the states come from disk.
    import shutil

    shutil.copytree(tmp_path / "full", tmp_path / "part")
    (tmp_path / "part" / "model.json").unlink()
    ckpts = sorted((tmp_path / "part" / "checkpoints").glob("step-*"))
    monkeypatch.setattr(stage2.Stage2Model, "listwise_states", lambda *a, **k: (_ for _ in ()).throw(AssertionError("LLM ran")))
    resumed, state = train_stage2(ds, cf, joint, llm, tok, cfg.__class__(**{**cfg.__dict__, "epochs": 3}), tmp_path / "part", progress=False)
    assert state["step"] > int(ckpts[-1].name.split("-")[1])
