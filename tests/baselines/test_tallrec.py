"""TALLRec: LoRA fine-tuning on A-LLMRec's stage-2 examples, the shared LLM left untouched."""

import copy
import dataclasses
import json
import time
import warnings

import numpy as np
import pytest
import torch

import allmrec.baselines.tallrec as tallrec
from allmrec.align.stage2.examples import curve_users, epoch_plan, training_users
from allmrec.baselines import TallrecConfig, load_tallrec, tallrec_inference_model, tallrec_prompt_config, train_tallrec
from allmrec.llm import build_prompt, display_titles, splice, target_loss
from allmrec.llm.splice import IGNORE
from allmrec.data.queries import Queries
from allmrec.eval.evaluate import evaluate_users
from allmrec.llm.prompt import display_order
from allmrec.llm.reader import PromptReader
from allmrec.recommend import LLMRecommender
from helpers import tiny_dataset


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset(n_users=6, n_items=30, seq_len=6)


def small(**kw):
    base = dict(lr=1e-3, batch_size=2, epochs=1, max_train_users=4, history_len=2, n_candidates=3, max_title_tokens=6, checkpoint_every=2, seed=5, log_every=1)
    return TallrecConfig(**{**base, **kw})


def _snapshot(llm):
    return {k: v.clone() for k, v in llm.state_dict().items()}


def _assert_untouched(llm, before, tok):
    """Same tensors, same module types (no LoRA layer injected), same requires_grad, same outputs."""
    assert all(torch.equal(v, before[k]) for k, v in llm.state_dict().items())
    assert not any(type(m).__module__.startswith("peft") for m in llm.modules())
    assert not any("lora" in n for n, _ in llm.named_parameters())
    assert not any(p.requires_grad for p in llm.parameters()) and all(p.grad is None for p in llm.parameters())
    assert not llm.training


def _example_loss(model, ds, tok, cfg, epoch=0):
    """Mean target loss of every epoch-``epoch`` example under ``model`` (no grad)."""
    s2 = cfg.examples_config()
    users = training_users(ds, s2)
    _, cands = epoch_plan(ds, users, s2, epoch)
    titles = display_titles(ds.titles, tok, cfg.max_title_tokens)
    prompts = [build_prompt(ds.train_sequence(u)[:-1], cands[r], titles, ds.wording, cfg.prompt_config(), int(ds.train_sequence(u)[-1])) for r, u in enumerate(users)]
    with torch.no_grad():
        b = splice(prompts, tok, model.get_input_embeddings(), None, targets=[p.target for p in prompts], padding_side="right")
        return float(target_loss(model, b))


def test_config_is_validated_and_maps_to_stage2():
    with pytest.raises(ValueError, match="lora_r"):
        TallrecConfig(lora_r=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        TallrecConfig(lora_dropout=1.0)
    with pytest.raises(ValueError, match="target_modules"):
        TallrecConfig(target_modules="q_proj")
    with pytest.raises(ValueError, match="max_steps"):
        TallrecConfig(max_steps=0)
    with pytest.raises(ValueError, match="lr"):
        TallrecConfig(lr=0)
    cfg = small(max_steps=3)
    s2 = cfg.examples_config()
    assert (s2.seed, s2.batch_size, s2.max_train_users, s2.n_candidates, s2.train_target, s2.max_steps) == (5, 2, 4, 3, "train", 3)
    p = cfg.prompt_config()
    assert (p.style, p.history_len, p.max_title_tokens) == ("text", 2, 6)
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["target_modules"] == ["q_proj", "v_proj"]


def test_trains_on_stage2_examples_only_lora_moves_and_llm_is_untouched(smollm, ds, monkeypatch):
    llm, tok = smollm
    cfg = small(epochs=4)  # 4 users, 2 per batch: 8 steps
    before = _snapshot(llm)
    rng_before = torch.random.get_rng_state()
    seen = []
    real = tallrec.build_prompt

    def recording(history, candidates, titles, wording, config, target):
        seen.append((list(map(int, history)), list(map(int, candidates)), int(target), config.style))
        return real(history, candidates, titles, wording, config, target)

    monkeypatch.setattr(tallrec, "build_prompt", recording)
    loss0 = _example_loss(llm, ds, tok, cfg)
    model, state = train_tallrec(ds, llm, tok, cfg, out_dir=None, progress=False)

    # Exactly A-LLMRec's stage-2 examples, in stage 2's order.
    s2 = cfg.examples_config()
    users = training_users(ds, s2)
    expected = []
    for epoch in range(4):
        order, cands = epoch_plan(ds, users, s2, epoch)
        expected += [(list(map(int, ds.train_sequence(users[r])[:-1])), list(map(int, cands[r])), int(ds.train_sequence(users[r])[-1]), "text") for r in order]
    assert seen == expected

    assert state["step"] == 8 and [s for s, _ in state["loss_log"]] == list(range(1, 9))
    assert state["seconds"] > 0 and state["step_seconds"] == pytest.approx(state["seconds"] / 8)
    # SmolLM2-135M: 30 layers, q_proj 576 -> 576, v_proj 576 -> 192; rank 8.
    lora_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert state["trainable_params"] == lora_numel == 30 * 8 * ((576 + 576) + (576 + 192))
    # Only LoRA tensors exist beyond the shared base weights, and they moved; B started at zero.
    base_ids = {id(p) for p in llm.parameters()}
    own = {n: p for n, p in model.named_parameters() if id(p) not in base_ids}
    assert own and all("lora_" in n for n in own)
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    assert any(float(p.abs().sum()) > 0 for n, p in own.items() if "lora_B" in n)
    _assert_untouched(llm, before, tok)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is not consumed
    # The fine-tuned model fits its training examples better than the base LLM.
    assert _example_loss(model, ds, tok, cfg) < 0.8 * loss0
    assert _example_loss(llm, ds, tok, cfg) == pytest.approx(loss0, abs=0)


def test_learning_curve_scores_held_out_users_as_inference_does(smollm, ds, monkeypatch):
    llm, tok = smollm
    real_validate = tallrec.TallrecTask.validate

    def slow_validate(self):  # a validation's time must not count as training time
        time.sleep(1.0)
        return real_validate(self)

    monkeypatch.setattr(tallrec.TallrecTask, "validate", slow_validate)
    cfg = small(valid_users=2, eval_every=1, max_steps=2, max_train_users=None)
    s2 = cfg.examples_config()
    held = curve_users(ds, s2)
    assert len(held) == 2 and not set(held.tolist()) & set(training_users(ds, s2).tolist())  # never trained on
    started = time.perf_counter()
    model, state = train_tallrec(ds, llm, tok, cfg, out_dir=None, progress=False)
    wall = time.perf_counter() - started
    assert [p[0] for p in state["curve"]] == [0, 1, 2] == [p[0] for p in state["curve_seconds"]]
    seconds = [p[1] for p in state["curve_seconds"]]
    # Training time only: the first point (before any step) does not hold its own 1-s validation; the three are left out of the total.
    assert seconds[0] < 0.5 and seconds == sorted(seconds) and seconds[-1] <= state["seconds"] < wall - 2.5
    # The last point is the final model's Hit@1 / NDCG@10 on those users' validation items, as evaluated at inference.
    rec = LLMRecommender(PromptReader(model, tok, ds.titles, ds.wording, tallrec_prompt_config(model), seed=cfg.seed))
    ranks = evaluate_users(rec, ds, "valid", held, "rank")["rank"]
    assert state["curve"][-1][1] == pytest.approx(float((ranks == 0).mean()))
    assert state["curve"][-1][2] == pytest.approx(float(np.mean(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0))))
    with pytest.raises(ValueError, match="valid_users"):
        TallrecConfig(valid_users=-1)


def test_only_lora_receives_gradients(smollm, ds, monkeypatch):
    llm, tok = smollm
    grads = {}
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        for group in self.param_groups:
            for p in group["params"]:
                grads[id(p)] = p.grad is not None and float(p.grad.abs().sum()) > 0
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    model, _ = train_tallrec(ds, llm, tok, small(max_steps=1), progress=False)
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert set(grads) == lora
    assert any(grads[i] for i in lora)  # B gets a gradient at step 1 (A's is 0 while B = 0)
    assert all(p.grad is None for p in llm.parameters())


def test_resume_equals_uninterrupted_and_refuses_other_config(smollm, ds, tmp_path, monkeypatch):
    llm, tok = smollm
    before = _snapshot(llm)
    cfg = small(batch_size=1, epochs=2, max_steps=6, checkpoint_every=3)  # 4 steps per epoch
    full, full_state = train_tallrec(ds, llm, tok, cfg, tmp_path / "full", progress=False)
    calls = {"n": 0}
    real_loss = tallrec.target_loss

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(tallrec, "target_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_tallrec(ds, llm, tok, cfg, tmp_path / "part", progress=False)
    monkeypatch.setattr(tallrec, "target_loss", real_loss)
    ckpt = tmp_path / "part" / "checkpoints" / "step-00000003"
    assert (ckpt / "weights.safetensors").exists() and (ckpt / "optimizer.safetensors").exists()
    assert not (tmp_path / "part" / "model.json").exists()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))
    resumed, state = train_tallrec(ds, llm, tok, cfg, tmp_path / "part", progress=False)
    assert state["step"] == 6 and state["loss_log"] == full_state["loss_log"]
    a = {n: p for n, p in full.named_parameters() if "lora_" in n}
    b = {n: p for n, p in resumed.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    loaded = load_tallrec(tmp_path / "part", llm)
    c = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert loaded.allmrec_identity == resumed.allmrec_identity != llm.allmrec_identity
    assert tallrec_prompt_config(loaded) == cfg.prompt_config()
    _assert_untouched(llm, before, tok)

    with pytest.raises(ValueError, match="lora_r: checkpoint 8 vs now 4"):
        train_tallrec(ds, llm, tok, dataclasses.replace(cfg, lora_r=4, max_steps=8), tmp_path / "part", progress=False)
    with pytest.raises(ValueError, match="dataset"):
        train_tallrec(tiny_dataset(n_users=6, n_items=30, seq_len=6, seed=3), llm, tok, dataclasses.replace(cfg, max_steps=8), tmp_path / "part", progress=False)
    llm.allmrec_identity, saved = "other-llm@123", llm.allmrec_identity
    try:
        with pytest.raises(ValueError, match="LLM 'SmolLM2.*other-llm@123"):
            load_tallrec(tmp_path / "part", llm)
    finally:
        llm.allmrec_identity = saved


@pytest.fixture(scope="module")
def llm32(smollm):
    llm, tok = smollm
    return copy.deepcopy(llm).float(), tok


@pytest.fixture(scope="module")
def random_lora(llm32):
    """A non-trivial adapter (B != 0) without training: random values in the saved format."""
    llm, _ = llm32
    cfg = small()
    gen = torch.Generator().manual_seed(0)
    shapes = tallrec._lora_state(tallrec._lora_model(llm, cfg))
    return cfg, {k: torch.randn(v.shape, generator=gen) * (0.02 if "lora_B" in k else 0.05) for k, v in shapes.items()}


def _direct_loglik(peft_model, tok, prompts):
    """Per (prompt, candidate): summed log-probability of the answer from one full forward of the
    ``PeftModel`` (logits over the whole sequence; no KV cache, no body/head split)."""
    rows = [p for p in prompts for _ in p.answers]
    answers = [a for p in prompts for a in p.answers]
    b = splice(rows, tok, peft_model.get_input_embeddings(), None, targets=answers, padding_side="right")
    with torch.no_grad():
        logits = peft_model(inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask, position_ids=b.position_ids).logits.float()
    logp = logits[:, :-1].log_softmax(-1)
    target = b.labels[:, 1:]
    mask = target != IGNORE
    picked = logp.gather(2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return picked.sum(1).view(len(prompts), -1)


@pytest.mark.parametrize("merge", [False, True])
def test_ranking_scores_equal_a_full_forward_of_the_lora_model(llm32, random_lora, ds, merge):
    from peft import get_peft_model, set_peft_model_state_dict

    llm, tok = llm32
    cfg, lora = random_lora
    before = _snapshot(llm)
    model = tallrec_inference_model(llm, lora, cfg, merge=merge)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers method
        reference = get_peft_model(copy.deepcopy(llm), cfg.lora_config())
    set_peft_model_state_dict(reference, lora)
    reference.eval()

    pcfg = tallrec_prompt_config(model)
    titles = display_titles(ds.titles, tok, pcfg.max_title_tokens)
    users = [3]
    hist = [ds.history(u, "test") for u in users]
    cands = ds.candidates("test")[users][:, :4]
    queries = Queries(np.array(users), hist, cands, [str(u) for u in users])
    got = PromptReader(model, tok, ds.titles, ds.wording, pcfg, seed=1).score(queries)
    shown = [cands[k][display_order(cands[k], 1, users[k])] for k in range(len(users))]
    perms = [display_order(cands[k], 1, users[k]) for k in range(len(users))]
    prompts = [build_prompt(hist[k], shown[k], titles, ds.wording, pcfg) for k in range(len(users))]
    direct = _direct_loglik(reference, tok, prompts).numpy()
    expected = np.empty_like(direct)
    for k in range(len(users)):
        expected[k, perms[k]] = direct[k]
    assert np.allclose(got, expected, atol=2e-3), (got, expected)
    base = PromptReader(llm, tok, ds.titles, ds.wording, pcfg, seed=1).score(queries)
    assert np.abs(base - got).max() > 0.05  # the adapter matters
    if not merge:  # the evaluator runs on it end to end
        columns = evaluate_users(LLMRecommender(PromptReader(model, tok, ds.titles, ds.wording, pcfg)), ds, "test", np.array([0]), "rank")
        assert columns["rank"].shape == (1,) and 0 <= columns["rank"][0] < 20
    _assert_untouched(llm, before, tok)
    assert model.tallrec_meta["merged"] is merge


def test_refuses_a_trainable_llm(ds):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(4, 2)

        def get_input_embeddings(self):
            return self.emb

    with pytest.raises(ValueError, match="frozen LLM"):
        train_tallrec(ds, Tiny(), None, small(), progress=False)
