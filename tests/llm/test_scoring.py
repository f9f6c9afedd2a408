import pytest
import torch

from allmrec.llm import PromptConfig, build_prompt, greedy_generate, score_answers, sequence_logprobs, splice, tokenize_answers

TITLES = ["", "Toy Story (1995)", "Heat", "The Big Lebowski", "Alien", "Brazil", "Fargo", "Jurassic Park"]


def _case(tok, style):
    cfg = PromptConfig(style=style)
    prompts = [build_prompt([1, 2, 3], [4, 5, 6, 7], TITLES, None, cfg), build_prompt([2], [7, 6, 5, 4], TITLES, None, cfg)]
    n = sum(len(p.soft_tokens) for p in prompts)
    soft = torch.randn(n, 576, generator=torch.Generator().manual_seed(1)) * 0.15 if n else None
    return prompts, soft


def _naive(model, tok, prompts, soft, length_normalize=False):
    """One full forward per (prompt, candidate): prompt + answer, summed log-probs."""
    rows, vecs, targets = [], [], []
    offset = 0
    for p in prompts:
        k = len(p.soft_tokens)
        for a in p.answers:
            rows.append(p)
            targets.append(a)
            if soft is not None:
                vecs.append(soft[offset : offset + k])
        offset += k
    b = splice(rows, tok, model.get_input_embeddings(), torch.cat(vecs) if vecs else None, targets=targets, padding_side="right")
    with torch.no_grad():
        return sequence_logprobs(model, b, length_normalize).view(len(prompts), -1)


@pytest.mark.parametrize("style", ["soft", "text"])
def test_kv_cached_ranking_equals_full_forward_fp32(smollm32, style):
    model, tok = smollm32
    prompts, soft = _case(tok, style)
    prefix = splice(prompts, tok, model.get_input_embeddings(), soft, padding_side="left")
    answers = [tokenize_answers(p.answers, tok) for p in prompts]
    cached = score_answers(model, prefix, answers, tok.pad_token_id)
    naive = _naive(model, tok, prompts, soft)
    assert cached.shape == (2, 4)
    assert torch.allclose(cached, naive, atol=2e-3), (cached, naive)
    mean = score_answers(model, prefix, answers, tok.pad_token_id, length_normalize=True)
    lengths = torch.tensor([[len(a) for a in row] for row in answers], dtype=torch.float32)
    assert torch.allclose(mean, cached / lengths, atol=1e-5)


def test_kv_cached_ranking_close_to_full_forward_bf16(smollm):
    model, tok = smollm
    prompts, soft = _case(tok, "soft")
    prefix = splice(prompts, tok, model.get_input_embeddings(), soft, padding_side="left")
    cached = score_answers(model, prefix, [tokenize_answers(p.answers, tok) for p in prompts], tok.pad_token_id)
    naive = _naive(model, tok, prompts, soft)
    # bf16 keeps ~3 significant digits; answers are a few tokens long.
    assert torch.allclose(cached, naive, rtol=0.03, atol=0.3), (cached, naive)


def test_greedy_generate_matches_transformers_generate(smollm32):
    model, tok = smollm32
    prompts, _ = _case(tok, "text")
    b = splice(prompts, tok, model.get_input_embeddings(), None, padding_side="left")
    ours = greedy_generate(model, b, 6, tok.eos_token_id)
    ref = model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = ref[:, b.input_ids.shape[1] :].tolist()
    for mine, theirs in zip(ours, ref):
        theirs = theirs[: theirs.index(tok.eos_token_id)] if tok.eos_token_id in theirs else theirs
        assert mine == theirs
    assert all(len(x) > 0 for x in ours)
