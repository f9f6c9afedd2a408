import pytest

from allmrec.llm.testing import shared_test_llm


@pytest.fixture(scope="session")
def smollm(tmp_path_factory):
    """(model, tokenizer) of the bundled SmolLM2 in bfloat16 on CPU, loaded once per session."""
    return shared_test_llm(str(tmp_path_factory.getbasetemp() / "allmrec_home"))


@pytest.fixture(scope="session")
def smollm32(smollm):
    """The same model in float32 (exact comparisons)."""
    import copy

    model, tok = smollm
    return copy.deepcopy(model).float(), tok


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """LLM tests run on one thread (ALLMREC_TEST_THREADS overrides): with two OpenMP threads on
    two cores shared with other processes, the busy-waiting threads made these tests ~10x slower."""
    import os

    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ALLMREC_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(old)
