import pytest
import torch

from allmrec.llm import PromptConfig, build_prompt, splice, target_loss
from allmrec.llm.splice import IGNORE

TITLES = ["", "Toy Story (1995)", "Heat", "The Big Lebowski", "Alien", "Brazil", "Fargo"]


def _soft(n, seed=0):
    # Scaled like real token embeddings (|e| ~ 3); never exactly zero.
    return torch.randn(n, 576, generator=torch.Generator().manual_seed(seed)) * 0.15


def test_text_prompt_is_exactly_the_tokenizers_output(smollm):
    model, tok = smollm
    emb = model.get_input_embeddings()
    p = build_prompt([1, 2, 3], [4, 5, 6], TITLES, None, PromptConfig(style="text"), target_item=6)
    b = splice([p], tok, emb, None, targets=[p.target], padding_side="right")
    expected = tok(p.render() + p.target)["input_ids"] + [tok.eos_token_id]
    assert b.input_ids[0].tolist() == expected
    assert torch.equal(b.inputs_embeds[0], emb(b.input_ids[0]))
    n_target = len(tok(p.target, add_special_tokens=False)["input_ids"]) + 1
    labels = b.labels[0]
    assert (labels[:-n_target] == IGNORE).all()
    assert labels[-n_target:].tolist() == expected[-n_target:]
    assert tok.decode(labels[-n_target:-1]) == ' "Fargo"'


def test_soft_slots_land_where_the_tokenizer_puts_a_special_token(smollm):
    model, tok = smollm
    emb = model.get_input_embeddings()
    p = build_prompt([1, 2], [4, 5, 6], TITLES, None, PromptConfig(), target_item=5)
    n_soft = len(p.soft_tokens)
    soft = _soft(n_soft)
    b = splice([p], tok, emb, soft, padding_side="left")
    # The same prompt with every slot written as a special token, tokenized as ONE string.
    marker = "<|im_start|>"
    marker_id = tok.convert_tokens_to_ids(marker)
    whole = tok("".join(x if isinstance(x, str) else marker for x in p.parts), add_special_tokens=False)["input_ids"]
    assert b.input_ids[0].tolist() == [-1 if t == marker_id else t for t in whole]
    assert int(b.soft_mask.sum()) == n_soft == 6
    rows = b.inputs_embeds[0]
    assert torch.equal(rows[b.soft_mask[0]], soft.to(model.dtype))
    text = ~b.soft_mask[0]
    assert torch.equal(rows[text], emb(b.input_ids[0][text]))
    # The user token is first; each item token follows its quoted title.
    assert bool(b.soft_mask[0, 0])
    slots = b.soft_mask[0].nonzero().flatten().tolist()
    assert tok.decode(b.input_ids[0, slots[0] + 1 : slots[1]]) == ' is a user representation. This user has bought "Toy Story (1995)"'
    assert tok.decode(b.input_ids[0, slots[1] + 1 : slots[2]]) == ', "Heat"'


def test_padding_positions_and_labels(smollm):
    model, tok = smollm
    emb = model.get_input_embeddings()
    long = build_prompt([1, 2, 3], [4, 5, 6], TITLES, None, PromptConfig(), target_item=4)
    short = build_prompt([2], [5, 6], TITLES, None, PromptConfig(), target_item=6)
    soft = _soft(len(long.soft_tokens) + len(short.soft_tokens))
    targets = [long.target, short.target]
    tgt_ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in targets]
    for side in ("left", "right"):
        b = splice([long, short], tok, emb, soft, targets=targets, padding_side=side)
        n_pad = b.input_ids.shape[1] - int(b.lengths[1])
        assert n_pad > 0 and int(b.lengths[0]) == b.input_ids.shape[1]
        real = b.attention_mask[1].bool()
        assert real.sum() == b.lengths[1]
        assert (real[n_pad:] if side == "left" else real[: int(b.lengths[1])]).all()
        assert b.position_ids[1][real].tolist() == list(range(int(b.lengths[1])))
        for r in range(2):
            assert b.labels[r][b.labels[r] != IGNORE].tolist() == tgt_ids[r]
        # labels sit at the last len(target) real positions of the row
        end = b.input_ids.shape[1] if side == "left" else int(b.lengths[1])
        assert b.labels[1, end - len(tgt_ids[1]) : end].tolist() == tgt_ids[1]
        assert torch.equal(b.inputs_embeds[b.soft_mask], soft.to(model.dtype))


def test_left_padding_does_not_change_the_output(smollm32):
    model, tok = smollm32
    emb = model.get_input_embeddings()
    long = build_prompt([1, 2, 3], [4, 5, 6], TITLES, None, PromptConfig())
    short = build_prompt([2], [5, 6], TITLES, None, PromptConfig())
    n_long = len(long.soft_tokens)
    soft = _soft(n_long + len(short.soft_tokens))
    with torch.no_grad():
        both = splice([long, short], tok, emb, soft, padding_side="left")
        alone = splice([short], tok, emb, soft[n_long:], padding_side="left")
        a = model(inputs_embeds=both.inputs_embeds, attention_mask=both.attention_mask, position_ids=both.position_ids).logits[1, -1].float()
        b = model(inputs_embeds=alone.inputs_embeds, attention_mask=alone.attention_mask, position_ids=alone.position_ids).logits[0, -1].float()
    assert torch.allclose(a.log_softmax(-1), b.log_softmax(-1), atol=1e-3)
    assert a.argmax() == b.argmax()


def test_gradients_reach_soft_vectors_only(smollm):
    model, tok = smollm
    p = build_prompt([1, 2], [4, 5], TITLES, None, PromptConfig(), target_item=5)
    soft = _soft(len(p.soft_tokens)).requires_grad_(True)
    b = splice([p], tok, model.get_input_embeddings(), soft, targets=[p.target], padding_side="right")
    loss = target_loss(model, b)
    loss.backward()
    assert torch.isfinite(loss) and soft.grad is not None
    assert (soft.grad.abs().sum(1) > 0).all()
    assert all(q.grad is None for q in model.parameters())


def test_wrong_number_of_soft_vectors(smollm):
    model, tok = smollm
    p = build_prompt([1], [4], TITLES, None, PromptConfig())
    with pytest.raises(ValueError, match="3 soft-token slots but 2"):
        splice([p], tok, model.get_input_embeddings(), _soft(2))
    with pytest.raises(ValueError, match="padding_side"):
        splice([p], tok, model.get_input_embeddings(), _soft(3), padding_side="middle")
