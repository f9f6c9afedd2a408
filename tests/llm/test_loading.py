import time

import pytest
import torch

from allmrec.llm import LLMConfig, hidden_size, llm_identity, llm_source_identity, load_llm
from allmrec.utils.runtime import cpu_has_fast_bf16
from helpers import shared_test_llm


def test_bundled_llm_is_frozen_with_pad_token(smollm):
    model, tok = smollm
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    # dtype "auto": bfloat16 where the CPU runs it natively, float32 where it would be emulated
    assert next(model.parameters()).dtype == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    assert hidden_size(model) == 576
    assert tok.pad_token_id is not None and tok.pad_token == "<|im_end|>" == tok.eos_token
    assert llm_identity(model).startswith("SmolLM2-135M-Instruct")
    assert llm_identity(model) == llm_source_identity(LLMConfig())


def test_second_load_reads_the_cache_and_is_identical(smollm, tmp_path_factory):
    model, _ = smollm
    start = time.perf_counter()
    again, _ = shared_test_llm.__wrapped__(str(tmp_path_factory.getbasetemp() / "allmrec_home"), "bfloat16")
    assert time.perf_counter() - start < 15  # conversion (GGUF de-quantisation) is not redone
    assert next(again.parameters()).dtype == torch.bfloat16
    emb = model.get_input_embeddings().weight
    assert torch.equal(again.get_input_embeddings().weight.float(), emb.float().bfloat16().float())  # one conversion, two dtypes
    assert llm_identity(again) == llm_identity(model)  # identity does not depend on dtype


def test_identity_follows_file_content(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    (a / "m.gguf").write_bytes(b"x" * 1000)
    (b / "m.gguf").write_bytes(b"x" * 1000)
    (c / "m.gguf").write_bytes(b"y" * 1000)
    ident = lambda d: llm_source_identity(LLMConfig(name_or_path=str(d / "m.gguf")))  # noqa: E731
    assert ident(a) == ident(b) != ident(c)
    assert ident(a).startswith("m@")


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        LLMConfig(dtype="int8")
    with pytest.raises(ValueError, match="device"):
        LLMConfig(device="tpu")
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_llm(LLMConfig(name_or_path=str(tmp_path / "nope.gguf")))
