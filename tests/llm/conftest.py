import pytest


@pytest.fixture(scope="session")
def smollm32(smollm):
    """The bundled SmolLM2 in float32 (exact comparisons)."""
    import copy

    model, tok = smollm
    return copy.deepcopy(model).float(), tok
