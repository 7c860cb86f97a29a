"""Every sweep runs in the model's dtype; metrics accumulate in float32 or better."""

import pytest
import torch
from tiny_families import tiny_model

from interp.ioi.dataset import build_ioi
from interp.nodes import Head, all_heads
from interp.patching import Receiver, act_patch_heads, path_patch, prepare_runs
from interp.patching.gradients import act_patch_attribution

RECEIVERS = [Receiver(Head(1, 0), "q", "END"), Receiver(Head(1, 1), "k", "S1+1")]


def _sweeps(dtype):
    model = tiny_model("llama", dtype=dtype)  # GQA, rotary with Llama 3 scaling
    runs = prepare_runs(model, build_ioi(model, n_prompts=6, seed=0).batch)
    heads = all_heads(model.cfg.n_layers, model.cfg.n_heads)
    return [act_patch_heads(model, runs, progress=False),
            act_patch_heads(model, runs, positions="END", progress=False),
            path_patch(model, runs, heads, progress=False),
            path_patch(model, runs, heads[:4], RECEIVERS, progress=False),
            path_patch(model, runs, heads[:4], RECEIVERS, method="attribution",
                       progress=False),
            act_patch_attribution(model, runs)]


@pytest.fixture(scope="module")
def float32():
    return _sweeps(torch.float32)


def test_float64_equals_float32(float32):
    for single, double in zip(float32, _sweeps(torch.float64), strict=True):
        assert double.dtype == torch.float64
        assert single.abs().max() > 1e-4
        assert torch.allclose(single.double(), double, atol=1e-5)


def test_bfloat16_runs_and_accumulates_in_float32(float32):
    for single, half in zip(float32, _sweeps(torch.bfloat16), strict=True):
        assert half.dtype == torch.float32
        assert torch.isfinite(half).all()
        assert torch.allclose(single, half, atol=2e-2)  # bfloat16 keeps ~3 digits
