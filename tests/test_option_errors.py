"""Every method/option validation names ALL valid values (a user picks from the message)."""

import pytest
import torch
from jaxtyping import TypeCheckError

from interp.analogies import SPACES, space_matrix
from interp.attribution import METHODS as EAP_METHODS
from interp.attribution import edge_attribution, head_attribution
from interp.capitals import KINDS, prompt
from interp.ffn import POSITIONS, ablation
from interp.interventions import ablate_mlp
from interp.metrics import LogitDiff
from interp.nodes import Head
from interp.patching import act_patch_heads, path_patch, prepare_runs
from interp.tasks.base import TaskBatch


@pytest.fixture(scope="module")
def runs(tiny):
    clean = torch.arange(12).view(2, 6) + 100
    batch = TaskBatch(clean, clean + 1, torch.tensor([5, 5]), torch.tensor([0, 0]),
                      LogitDiff(torch.tensor([1, 2]), torch.tensor([3, 4])))
    return prepare_runs(tiny, batch)


def _names_all(call, valid) -> None:
    # TypeCheckError: the suite's shape checks refuse a value outside a Literal hint first
    with pytest.raises((ValueError, TypeCheckError)) as err:
        call()
    missing = [v for v in valid if repr(v) not in str(err.value) and v not in str(err.value)]
    assert not missing, f"{err.value} leaves out {missing}"


def test_act_patch_heads_lists_exact_too(tiny, runs):
    """It used to answer "method must be one of ('attribution', 'attribution-ig')"."""
    _names_all(lambda: act_patch_heads(tiny, runs, method="exakt"),
               ["exact", "attribution", "attribution-ig"])
    _names_all(lambda: act_patch_heads(tiny, runs, direction="nois"), ["noise", "denoise"])


def test_patching_and_attribution_options(tiny, runs):
    _names_all(lambda: path_patch(tiny, runs, [Head(0, 0)], method="exakt"),
               ["exact", "attribution", "attribution-ig", "screen"])
    _names_all(lambda: head_attribution(tiny, runs.batch, method="exact"), EAP_METHODS)
    _names_all(lambda: edge_attribution(tiny, runs.batch, method="eap"), EAP_METHODS)
    _names_all(lambda: head_attribution(tiny, runs.batch, direction="up"), ["noise", "denoise"])
    _names_all(lambda: runs.cache("patched"), ["clean", "corrupted"])


def test_other_library_options(tiny):
    _names_all(lambda: prompt("abstract", None, None), KINDS)
    _names_all(lambda: space_matrix(tiny, "embedding"), SPACES)
    _names_all(lambda: ablation([0], "zero", positions="first"), POSITIONS)
    _names_all(lambda: ablation([0], "resample"), ["zero", "mean"])
    _names_all(lambda: ablate_mlp(0, "resample"), ["zero", "mean"])
