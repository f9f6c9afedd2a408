"""Fixtures shared by the test packages that load the real bundled models."""

import os

import pytest
import torch

from helpers import shared_test_llm


@pytest.fixture(scope="session")
def smollm(tmp_path_factory):
    """(model, tokenizer) of the bundled SmolLM2 on CPU (dtype "auto"), loaded once per session."""
    return shared_test_llm(str(tmp_path_factory.getbasetemp() / "allmrec_home"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tests run on one thread (ALLMREC_TEST_THREADS overrides): with two OpenMP threads on two
    cores shared with other processes, the busy-waiting threads made the LLM tests ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ALLMREC_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(old)
