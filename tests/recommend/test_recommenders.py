import dataclasses

import numpy as np
import pytest
import torch

from allmrec.align import Stage2Scorer, stage2_config, train_stage2
from allmrec.align.stage2.examples import training_users
from allmrec.data.queries import Queries
from allmrec.eval.evaluate import evaluate_users
from allmrec.eval.metrics import metrics_from_columns
from allmrec.llm import PromptConfig
from allmrec.llm.reader import PromptReader
from allmrec.recommend import CFRecommender, LLMRecommender
from helpers import tiny_cf, tiny_dataset


@pytest.fixture(scope="module")
def learned(smollm):
    """Paper-mode stage 2 overfitted on one user's training example (history -> target)."""
    llm, tok = smollm
    # 8 items, 5 per user: every user's 3 untouched items are the negatives, only their order varies.
    ds = tiny_dataset(n_users=2, n_items=8, seq_len=5, n_candidates=4)
    cf = tiny_cf(ds)
    joint = torch.randn(ds.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    cfg = stage2_config({"mode": "paper", "model": {"history_len": 2, "max_title_tokens": 8},
                         "train": {"lr": 2e-3, "batch_size": 1, "epochs": 30, "max_train_users": 1, "n_candidates": 4, "seed": 1}})
    model, _ = train_stage2(ds, cf, joint, llm, tok, cfg, None, progress=False)
    u = int(training_users(ds, cfg.train)[0])
    # A view of the dataset whose validation case of user u is exactly the learned example.
    seqs = [s.copy() for s in ds.sequences]
    seqs[u] = ds.sequences[u][:-1]
    target = int(seqs[u][-2])
    pool = np.setdiff1d(np.arange(1, ds.n_items + 1), ds.sequences[u])
    valid = ds.valid_candidates.copy()
    valid[u] = [target, *pool[:3]]
    view = dataclasses.replace(ds, sequences=seqs, valid_candidates=valid, fingerprint="view")
    rec = LLMRecommender(PromptReader(llm, tok, view.titles, view.wording, model.prompt_config(), Stage2Scorer(model, joint, cf)))
    return view, rec, u, target


def test_generation_and_ranking_agree_on_a_learned_case(learned):
    ds, rec, u, target = learned
    outputs = []
    columns = evaluate_users(rec, ds, "valid", np.array([u]), "both", outputs)
    metrics = metrics_from_columns(columns)
    assert metrics["hit@1"] == 1.0 and metrics["mrr"] == 1.0
    assert metrics["gen_hit@1"] == 1.0 and metrics["gen_no_match"] == 0.0
    assert outputs[0]["matched"] == target and outputs[0]["target"] == target and outputs[0]["answer"] == ds.titles[target]
    queries = Queries.from_split(ds, "valid", np.array([u]))
    assert int(np.argmax(rec.score(queries)[0])) == 0  # scores come back in the stored column order
    hist, cands = ds.history(u, "valid"), ds.valid_candidates[u].tolist()
    ranked = rec.recommend(hist, cands, user=u)
    assert ranked[0][0] == target and sorted(i for i, _ in ranked) == sorted(cands)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert rec.rank(queries)[0, 0] == 0
    with pytest.raises(ValueError, match="item ids must be in 1..8"):
        rec.recommend([0, 1], [2, 99])


def test_the_prompt_shows_candidates_in_a_seeded_order_per_row(smollm):
    llm, tok = smollm
    ds = tiny_dataset(n_users=4, n_items=40, seq_len=7, n_candidates=6)
    reader = PromptReader(llm, tok, ds.titles, ds.wording, PromptConfig(style="text"), seed=3)
    queries = Queries.from_split(ds, "test")
    perms, shown = reader.shown(queries)
    assert all(sorted(shown[i]) == sorted(ds.test_candidates[i]) for i in range(4))
    assert any(list(p) != list(range(6)) for p in perms)  # candidates are shuffled
    again = PromptReader(llm, tok, ds.titles, ds.wording, PromptConfig(style="text"), seed=3).shown(queries)[0]
    other = PromptReader(llm, tok, ds.titles, ds.wording, PromptConfig(style="text"), seed=4).shown(queries)[0]
    assert np.array_equal(perms, again) and not np.array_equal(perms, other)


def test_llm_only_text_prompt_is_deterministic(smollm):
    llm, tok = smollm
    ds = tiny_dataset(n_users=2, n_items=40, seq_len=7, n_candidates=6)
    rec = LLMRecommender(PromptReader(llm, tok, ds.titles, ds.wording, PromptConfig(style="text"), batch_size=2))
    users = np.arange(2)
    c1, c2 = evaluate_users(rec, ds, "test", users, "both"), evaluate_users(rec, ds, "test", users, "both")
    assert all(np.array_equal(c1[k], c2[k]) for k in c1) and set(c1) == {"rank", "gen_hit", "gen_no_match"}
    queries = Queries.from_split(ds, "test", users)
    s2 = rec.score(queries)
    assert np.isfinite(s2).all()
    # Batching does not change the scores beyond bfloat16 noise.
    alone = LLMRecommender(PromptReader(llm, tok, ds.titles, ds.wording, PromptConfig(style="text"), batch_size=1)).score(queries)
    assert np.allclose(alone, s2, atol=0.5)


def test_soft_prompt_without_stage2_is_refused(smollm):
    llm, tok = smollm
    ds = tiny_dataset(n_users=2, n_candidates=4)
    with pytest.raises(ValueError, match="soft"):
        PromptReader(llm, tok, ds.titles, ds.wording, PromptConfig(style="soft"))


def test_cf_recommender_scores_through_the_backbone():
    ds = tiny_dataset(n_users=3, n_items=30, seq_len=6)
    cf = tiny_cf(ds)
    rec = CFRecommender(cf)
    queries = Queries.from_split(ds, "test")
    with torch.no_grad():
        expected = torch.stack([cf.score(torch.tensor([u]), torch.as_tensor(ds.history(u, "test")[-cf.config.max_len:])[None], torch.as_tensor(ds.test_candidates[u])[None])[0]
                                for u in range(3)])
    np.testing.assert_allclose(rec.score(queries), expected.numpy(), atol=1e-5)
    assert rec.generate is not None and not rec.can_generate
    with pytest.raises(ValueError, match="does not generate"):
        rec.generate(queries)


def test_best_mode_scores_batched_equal_one_prompt_at_a_time(smollm):
    """Length-bucketed batches (left padding) give each user the scores it gets alone."""
    from allmrec.align import Stage2Model, Stage2ModelConfig

    llm, tok = smollm
    ds = tiny_dataset(n_users=6, n_items=40, seq_len=7, n_candidates=5)
    cf = tiny_cf(ds)
    joint = torch.randn(ds.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    model = Stage2Model(cf.dim, 16, llm.config.hidden_size, Stage2ModelConfig(head_width=8, max_title_tokens=6), seed=2)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.net[2].weight, generator=torch.Generator().manual_seed(3))  # a head that reads the LLM
    queries = Queries.from_split(ds, "test")
    scores = {}
    for size in (1, 4):
        reader = PromptReader(llm, tok, ds.titles, ds.wording, model.prompt_config(), Stage2Scorer(model, joint, cf), batch_size=size)
        scores[size] = reader.score(queries)
    lengths = reader._prompt_lengths(queries)
    assert len(set(lengths.tolist())) > 1  # the prompts differ in length: padding is exercised
    # float32: equal to 1e-3. bfloat16 rounds each batch's sums differently: within 5% of a row's largest
    # score (measured on an AVX512-BF16 CPU: up to 2.6%; float32 on the same machine within 1e-3).
    scale = 1e-3 if llm.dtype == torch.float32 else 0.05 * np.abs(scores[1]).max(1, keepdims=True)
    assert (np.abs(scores[4] - scores[1]) <= scale).all(), np.abs(scores[4] - scores[1]).max(1)
    assert np.array_equal(np.argsort(-scores[4], 1), np.argsort(-scores[1], 1))
