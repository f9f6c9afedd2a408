import numpy as np
import pytest
import torch

import dataclasses

from allmrec.align import Stage2Config, Stage2Model, Stage2ModelConfig, Stage2Scorer, Stage2TrainConfig, load_stage2, stage2_config, train_stage2
from allmrec.align.stage2.examples import curve_users, training_users
from allmrec.align.stage2.listwise import ScoreHead, candidate_states, standardize
from allmrec.cf.evaluate import candidate_scores, score_candidates
from allmrec.data.queries import Queries
from allmrec.eval.metrics import target_ranks
from allmrec.llm import build_prompt, display_titles, splice
from allmrec.llm.reader import PromptReader
from helpers import tiny_cf, tiny_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    ds = tiny_dataset(n_users=8, n_items=30, seq_len=6)
    joint = torch.randn(ds.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    return ds, tiny_cf(ds), joint


MODEL_OPTIONS = {f.name for f in dataclasses.fields(Stage2ModelConfig)}


def listwise(mode="cf-residual", **kw):
    values = {**dict(lr=1e-2, batch_size=2, epochs=1, history_len=2, n_candidates=20, max_title_tokens=4, checkpoint_every=2, seed=5), **kw}
    return stage2_config({"mode": mode, "model": {k: v for k, v in values.items() if k in MODEL_OPTIONS},
                          "train": {k: v for k, v in values.items() if k not in MODEL_OPTIONS}})


def test_config_rejects_inconsistent_modes():
    with pytest.raises(ValueError, match="residual needs objective 'listwise'"):
        Stage2ModelConfig(objective="lm", residual=True)
    with pytest.raises(ValueError, match="train_projectors"):
        Stage2Config(model=Stage2ModelConfig(objective="lm", residual=False), train=Stage2TrainConfig(train_projectors=False))
    with pytest.raises(ValueError, match="objective"):
        Stage2ModelConfig(objective="pairwise")
    with pytest.raises(ValueError, match="item_table"):
        stage2_config({"model": {"item_table": "text"}})
    with pytest.raises(ValueError, match="stage2.mode"):
        stage2_config({"mode": "fast"})
    with pytest.raises(ValueError, match="live under stage2.model and stage2.train"):
        stage2_config({"lr": 0.1})


def test_modes_are_named_presets_and_overrides_make_them_custom():
    best, paper = stage2_config({}), stage2_config({"mode": "paper"})
    assert best.mode_name == "best" and best.model.objective == "listwise" and best.model.residual and not best.train.train_projectors
    assert paper.mode_name == "paper" and paper.model.objective == "lm" and paper.train.train_target == "train"
    assert best.model.prior == "fusion" and stage2_config({"mode": "cf-residual"}).model.prior == "cf"
    assert best.label == "best mode: fusion + LLM residual" and paper.label == "paper: LM loss"
    assert stage2_config({"mode": "best", "model": {"residual": False}}).mode_name == "custom"
    assert stage2_config({"mode": "best", "train": {"lr": 0.5}}).mode_name == "best"  # options the mode does not set


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
    cfg = listwise(valid_users=3).train
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
    queries = Queries.from_split(ds, "test", np.arange(4))

    def reader(stage2):
        return PromptReader(llm, tok, ds.titles, ds.wording, stage2.prompt_config(), Stage2Scorer(stage2, joint, cf))

    scores = reader(model).score(queries)
    assert target_ranks(scores).tolist() == target_ranks(score_candidates(cf, ds, "test", queries.users)).tolist()
    loaded = load_stage2(tmp_path, llm=llm, cf_model=cf, joint_items=joint)
    assert loaded.objective == "listwise" and loaded.residual
    assert np.array_equal(reader(loaded).score(queries), scores)
    with pytest.raises(ValueError, match="not trained to generate"):
        reader(loaded).generate(queries)


def test_training_lowers_the_listwise_loss_with_cached_states(smollm, setup):
    llm, tok = smollm
    ds, cf, joint = setup
    cfg = listwise(mode="listwise", epochs=30, batch_size=4, lr=3e-3)
    model, state = train_stage2(ds, cf, joint, llm, tok, cfg, out_dir=None, progress=False)
    losses = [v for _, v in state["loss_log"]]
    assert losses[-1] < 0.5 * losses[0]


def test_cf_candidate_scores_match_the_backbone(setup):
    ds, cf, _ = setup
    users = np.arange(3)
    hist = [ds.history(int(u), "test") for u in users]
    got = candidate_scores(cf, users, hist, ds.test_candidates[users], trim=False)
    assert np.allclose(got.numpy(), score_candidates(cf, ds, "test", users), atol=1e-5)


def test_frozen_projector_run_keeps_llm_states_and_resumes_without_the_llm(smollm, setup, tmp_path, monkeypatch):
    import allmrec.align.stage2.training as stage2

    llm, tok = smollm
    ds, cf, joint = setup
    cfg = listwise(epochs=2, batch_size=4, checkpoint_every=1)
    full, _ = train_stage2(ds, cf, joint, llm, tok, cfg, tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "llm_states.safetensors").exists()
    # Resuming from the last checkpoint must not run the LLM again: the states come from disk.
    import shutil

    shutil.copytree(tmp_path / "full", tmp_path / "part")
    (tmp_path / "part" / "model.json").unlink()
    ckpts = sorted((tmp_path / "part" / "checkpoints").glob("step-*"))
    monkeypatch.setattr(stage2.Stage2Model, "listwise_states", lambda *a, **k: (_ for _ in ()).throw(AssertionError("LLM ran")))
    resumed, state = train_stage2(ds, cf, joint, llm, tok, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3)), tmp_path / "part", progress=False)
    assert state["step"] > int(ckpts[-1].name.split("-")[1])


class FixedPrior:
    """A stand-in fitted fusion: scores each candidate by a fixed per-item value."""

    def __init__(self, n_items: int) -> None:
        self.values = np.random.default_rng(3).normal(size=n_items + 1)

    def identity(self) -> str:
        return "fixed-prior"

    def score(self, queries):
        return self.values[queries.candidates]


def test_best_mode_adds_the_llm_path_to_the_fusion_and_checks_it(smollm, setup, tmp_path):
    llm, tok = smollm
    ds, cf, joint = setup
    with pytest.raises(ValueError, match="no fitted fusion"):
        train_stage2(ds, cf, joint, llm, tok, listwise(mode="best", max_steps=1), out_dir=None, progress=False)
    prior = FixedPrior(ds.n_items)
    model, _ = train_stage2(ds, cf, joint, llm, tok, listwise(mode="best", max_steps=2, lr=0.0, valid_users=3), tmp_path, progress=False, prior=prior)
    queries = Queries.from_split(ds, "test", np.arange(4))
    reader = PromptReader(llm, tok, ds.titles, ds.wording, model.prompt_config(), Stage2Scorer(model, joint, cf, prior=prior))
    assert target_ranks(reader.score(queries)).tolist() == target_ranks(prior.score(queries)).tolist()  # an untrained head: the prior's ranking
    check = model.meta["llm_path"]
    # lr 0: the LLM path adds nothing, so it cannot beat the prior at its best temperature
    assert check["checked"] and not check["adopted"] and check["loglik_gain"]["users"] == 3 and check["loglik_gain"]["diff"] <= 1e-6
    assert model.meta["identity"]["prior"] == "fixed-prior"
    with pytest.raises(ValueError, match="no fusion"):
        PromptReader(llm, tok, ds.titles, ds.wording, model.prompt_config(), Stage2Scorer(model, joint, cf)).score(queries)
    always, _ = train_stage2(ds, cf, joint, llm, tok, listwise(mode="best", max_steps=2, lr=0.0, valid_users=3, llm_path="always"), None,
                             progress=False, prior=prior)
    assert always.meta["llm_path"]["adopted"]
