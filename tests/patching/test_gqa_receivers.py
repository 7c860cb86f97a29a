"""GQA k/v receivers: only the receiving query head sees the patched key/value."""

import pytest
import torch
from tiny_families import tiny_model

from interp.ioi.dataset import build_ioi
from interp.nodes import Head
from interp.patching import Receiver, path_patch, prepare_runs
from interp.patching.naive import _frozen_cache, _metric, path_patch_naive


def _shared_kv_patch(model, runs, senders, receiver):
    """The rejected definition: patch the shared KV head, seen by its whole group."""
    rows, pos = torch.arange(len(runs.batch)), runs.batch.positions[receiver.position]
    out = []
    for sender in senders:
        value = _frozen_cache(model, runs, sender, [receiver.hook_name()])[
            receiver.hook_name()][rows, pos, receiver.slot(model)]

        def hook(act, hook=None, value=value):
            act = act.clone()
            act[rows, pos, receiver.slot(model)] = value
            return act
        logits = model.run_with_hooks(runs.batch.clean_tokens,
                                      fwd_hooks=[(receiver.hook_name(), hook)])
        out.append((_metric(model, runs, logits) - runs.clean_metric).mean())
    return torch.stack(out)


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama")  # 4 query heads, 2 KV heads
    return model, prepare_runs(model, build_ioi(model, n_prompts=6, seed=0).batch)


@pytest.mark.parametrize("kind", ["k", "v"])
def test_receiver_only_equals_naive_and_differs_from_shared(llama, kind):
    model, runs = llama
    receivers = [Receiver(Head(1, 1), kind, "S1+1" if kind == "k" else "S2")]
    senders = [Head(0, h) for h in range(model.cfg.n_heads)]
    fast = path_patch(model, runs, senders, receivers, progress=False)
    assert torch.allclose(fast, path_patch_naive(model, runs, senders, receivers), atol=1e-4)
    shared = _shared_kv_patch(model, runs, senders, receivers[0])
    assert (fast - shared).abs().max() > 1e-4  # the group's other head no longer sees it


def test_two_heads_of_one_group_each_see_their_own(llama):
    model, runs = llama
    receivers = [Receiver(Head(1, 0), "k", "S1+1"), Receiver(Head(1, 1), "k", "S2"),
                 Receiver(Head(1, 1), "v", "S1+1")]
    senders = [Head(0, h) for h in range(model.cfg.n_heads)]
    fast = path_patch(model, runs, senders, receivers, budget_gb=1e-6, progress=False)
    assert torch.allclose(fast, path_patch_naive(model, runs, senders, receivers), atol=1e-4)


@pytest.mark.offline_model
def test_receiver_only_on_smollm2(smol):
    """L16H0 -> the induction heads' keys at S1+1 (issue 11), receiver-only."""
    runs = prepare_runs(smol, build_ioi(smol, n_prompts=8, seed=0).batch)
    receivers = [Receiver(Head(17, 4), "k", "S1+1"), Receiver(Head(18, 6), "k", "S1+1")]
    senders = [Head(16, 0), Head(15, 3), Head(10, 7)]
    fast = path_patch(smol, runs, senders, receivers, progress=False)
    ref = path_patch_naive(smol, runs, senders, receivers)
    assert ref.abs().max() > 1e-3
    assert torch.allclose(fast, ref, atol=1e-4)
