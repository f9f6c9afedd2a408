import dataclasses

import numpy as np
import pytest
import torch

from allmrec.align import Stage2Config, train_stage2
from allmrec.align.stage2 import training_users
from allmrec.llm import PromptConfig
from allmrec.llm.testing import tiny_cf, tiny_dataset
from allmrec.recommend import InferenceConfig, Recommender, evaluate_llm, generate_recommendations, rank_candidates


@pytest.fixture(scope="module")
def learned(smollm):
    """Stage 2 overfitted on one user's training example (history -> target)."""
    llm, tok = smollm
    # 8 items, 5 per user: every user's 3 untouched items are the negatives, only their order varies.
    ds = tiny_dataset(n_users=2, n_items=8, seq_len=5, n_candidates=4)
    cf = tiny_cf(ds)
    joint = torch.randn(ds.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    cfg = Stage2Config(lr=2e-3, batch_size=1, epochs=30, max_train_users=1, history_len=2, n_candidates=4, max_title_tokens=8, seed=1)
    model, _ = train_stage2(ds, cf, joint, llm, tok, cfg, None, progress=False)
    u = int(training_users(ds, cfg)[0])
    # A view of the dataset whose validation case of user u is exactly the learned example.
    seqs = [s.copy() for s in ds.sequences]
    seqs[u] = ds.sequences[u][:-1]
    target = int(seqs[u][-2])
    pool = np.setdiff1d(np.arange(1, ds.n_items + 1), ds.sequences[u])
    valid = ds.valid_candidates.copy()
    valid[u] = [target, *pool[:3]]
    view = dataclasses.replace(ds, sequences=seqs, valid_candidates=valid, fingerprint="view")
    return view, cf, joint, model, u, target


def test_generation_and_ranking_agree_on_a_learned_case(smollm, learned):
    llm, tok = smollm
    ds, cf, joint, model, u, target = learned
    metrics, outputs = evaluate_llm(ds, llm, tok, "valid", [u], stage2=model, cf_model=cf, joint_items=joint, config=InferenceConfig(mode="both"))
    assert metrics["hit@1"] == 1.0 and metrics["mrr"] == 1.0
    assert metrics["gen_hit@1"] == 1.0 and metrics["gen_no_match"] == 0.0
    out = outputs[0]
    assert out["rank"] == 0 and out["matched"] == target and out["target"] == target
    assert out["answer"] == ds.titles[target]
    assert sorted(out["shown"]) == sorted(ds.valid_candidates[u].tolist())
    assert int(np.argmax(out["scores"])) == 0  # scores come back in the stored column order

    hist, cands = [ds.history(u, "valid")], ds.valid_candidates[[u]]
    scores = rank_candidates(llm, tok, ds.titles, hist, cands, [u], stage2=model, cf_model=cf, joint_items=joint)
    assert int(np.argmax(scores[0])) == 0
    gen = generate_recommendations(llm, tok, ds.titles, hist, cands, [u], stage2=model, cf_model=cf, joint_items=joint)
    assert gen[0]["matched"] == target

    rec = Recommender.from_dataset(ds, llm, tok, stage2=model, cf_model=cf, joint_items=joint)
    ranked = rec.recommend(hist[0], cands[0].tolist(), user=u)
    assert ranked[0][0] == target and sorted(i for i, _ in ranked) == sorted(cands[0].tolist())
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert rec.generate(hist[0], cands[0].tolist(), user=u)["matched"] == target
    with pytest.raises(ValueError, match="item ids must be in 1..8"):
        rec.recommend([0, 1], [2, 99])


def test_llm_only_text_prompt_is_deterministic(smollm):
    llm, tok = smollm
    ds = tiny_dataset(n_users=2, n_items=40, seq_len=7, n_candidates=6)
    cfg = InferenceConfig(mode="both", batch_size=2)
    m1, o1 = evaluate_llm(ds, llm, tok, "test", config=cfg)
    m2, o2 = evaluate_llm(ds, llm, tok, "test", config=cfg)
    assert m1 == m2 and [o["scores"] for o in o1] == [o["scores"] for o in o2]
    assert {"hit@1", "hit@5", "ndcg@5", "mrr", "gen_hit@1", "gen_no_match", "users"} <= set(m1)
    assert m1["users"] == 2
    for u, o in enumerate(o1):
        assert sorted(o["shown"]) == sorted(ds.test_candidates[u].tolist())
        assert np.isfinite(o["scores"]).all() and o["rank"] in range(6)
        assert isinstance(o["generated"], str)
    assert any(o["shown"] != ds.test_candidates[i].tolist() for i, o in enumerate(o1))  # candidates are shuffled
    # Batching does not change the scores beyond bfloat16 noise.
    m3, o3 = evaluate_llm(ds, llm, tok, "test", config=InferenceConfig(mode="rank", batch_size=1))
    assert np.allclose([o["scores"] for o in o3], [o["scores"] for o in o1], atol=0.5)


def test_soft_prompt_without_stage2_is_refused(smollm):
    llm, tok = smollm
    ds = tiny_dataset(n_users=2, n_candidates=4)
    with pytest.raises(ValueError, match="soft"):
        evaluate_llm(ds, llm, tok, "test", prompt=PromptConfig(style="soft"))
