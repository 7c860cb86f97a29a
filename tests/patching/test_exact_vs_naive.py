"""The fast sweeps against one-full-forward-per-item references, and patching identities."""

import pytest
import torch

from interp.dla import direct_logit_attribution
from interp.ioi.dataset import build_ioi
from interp.nodes import Head, all_heads
from interp.patching import Receiver, act_patch_heads, path_patch, prepare_runs
from interp.patching.naive import act_patch_heads_naive, path_patch_naive
from interp.tasks.base import TaskBatch
from tests.patching.torch_threads import torch_threads


@pytest.fixture(scope="module")
def runs(tiny):
    return prepare_runs(tiny, build_ioi(tiny, n_prompts=10, seed=0).batch)


@pytest.mark.parametrize("direction,positions", [("noise", None), ("denoise", "END")])
def test_act_patch_exact_equals_naive(tiny, runs, direction, positions):
    fast = act_patch_heads(tiny, runs, direction, positions, progress=False)
    ref = act_patch_heads_naive(tiny, runs, direction, positions)
    assert fast.abs().max() > 0
    assert torch.allclose(fast, ref, atol=1e-4)
    with torch_threads(2):  # one head per item, two items side by side (patching.workers)
        side_by_side = act_patch_heads(tiny, runs, direction, positions, budget_gb=1e-6,
                                       progress=False)
    assert torch.allclose(side_by_side, ref, atol=1e-4)


def test_act_patch_splits_under_small_budget(tiny, runs):
    whole = act_patch_heads(tiny, runs, progress=False)
    split = act_patch_heads(tiny, runs, budget_gb=1e-6, progress=False)  # one head per chunk
    assert torch.allclose(whole, split, atol=1e-6)


def test_path_patch_to_logits_equals_naive(tiny, runs):
    heads = all_heads(tiny.cfg.n_layers, tiny.cfg.n_heads)
    fast = path_patch(tiny, runs, heads, progress=False)
    assert torch.allclose(fast, path_patch_naive(tiny, runs, heads), atol=1e-4)


def test_path_patch_to_qkv_equals_naive(tiny, runs):
    receivers = [Receiver(Head(1, 0), "q", "END"), Receiver(Head(1, 2), "k", "S1+1"),
                 Receiver(Head(1, 3), "v", "S2")]
    senders = [Head(0, h) for h in range(4)]
    fast = path_patch(tiny, runs, senders, receivers, budget_gb=1e-6, progress=False)
    ref = path_patch_naive(tiny, runs, senders, receivers)
    assert fast.abs().max() > 0
    assert torch.allclose(fast, ref, atol=1e-4)


def test_screen_with_all_senders_is_exact(tiny, runs):
    receivers = [Receiver(Head(1, 1), "q", "END")]
    senders = [Head(0, h) for h in range(4)]
    exact = path_patch(tiny, runs, senders, receivers, progress=False)
    screened = path_patch(tiny, runs, senders, receivers, method="screen", top_k=4,
                          progress=False)
    assert torch.equal(exact, screened)


def test_sender_clean_equals_corrupted_gives_zero(tiny, runs):
    b = runs.batch
    same = TaskBatch(b.clean_tokens, b.clean_tokens.clone(), b.read_positions, b.groups,
                     b.metric, dict(b.positions))
    same_runs = prepare_runs(tiny, same)
    heads = all_heads(tiny.cfg.n_layers, tiny.cfg.n_heads)
    assert path_patch(tiny, same_runs, heads, progress=False).abs().max() < 1e-6
    recv = [Receiver(Head(1, 0), "q", "END")]
    assert path_patch(tiny, same_runs, heads[:4], recv, progress=False).abs().max() < 1e-6


def test_last_layer_path_to_logits_is_its_direct_effect_by_hand(tiny, runs):
    """A last-layer head reaches the logits only through the last MLP and the final norm."""
    last = tiny.cfg.n_layers - 1
    heads = [Head(last, h) for h in range(tiny.cfg.n_heads)]
    fast = path_patch(tiny, runs, heads, progress=False)
    b, rows = runs.batch, torch.arange(len(runs.batch))
    end = b.read_positions
    for h in heads:
        z_c = runs.clean_cache[h.hook_name][rows, end, h.head]
        z_x = runs.corrupted_cache[h.hook_name][rows, end, h.head]
        x = runs.clean_cache[f"blocks.{last}.hook_resid_mid"][rows, end] + (z_x - z_c) @ \
            tiny.W_O[last, h.head]
        block = tiny.blocks[last]
        x = x + block.mlp(block.ln2(x))
        logits = tiny.unembed(tiny.ln_final(x))
        by_hand = (b.metric(logits) - runs.clean_metric).mean()
        assert torch.allclose(fast[h.head], by_hand, atol=1e-5)


def test_dla_sums_to_logit_diff(tiny, runs):
    d = direct_logit_attribution(tiny, runs.clean_cache, runs.batch)
    total = d["heads"].sum((0, 1)) + d["mlps"].sum(0) + d["attn_bias"].sum(0) + d["embed"] \
        + d["constant"]
    assert torch.allclose(total, runs.clean_metric, atol=1e-4)


@pytest.mark.offline_model
def test_smollm2_exactness_on_gqa(smol):
    runs = prepare_runs(smol, build_ioi(smol, n_prompts=3, seed=0).batch)
    senders = [Head(27, h) for h in range(9)] + [Head(25, 4)]
    assert torch.allclose(path_patch(smol, runs, senders, progress=False),
                          path_patch_naive(smol, runs, senders), atol=1e-4)
    recv = [Receiver(Head(29, 1), "k", "S2"), Receiver(Head(29, 5), "q", "END")]
    senders = [Head(28, h) for h in range(9)]
    assert torch.allclose(path_patch(smol, runs, senders, recv, progress=False),
                          path_patch_naive(smol, runs, senders, recv), atol=1e-4)
    d = direct_logit_attribution(smol, runs.clean_cache, runs.batch)
    total = d["heads"].sum((0, 1)) + d["mlps"].sum(0) + d["embed"] + d["constant"]
    assert torch.allclose(total, runs.clean_metric, atol=1e-3)


def test_shared_gradients_give_head_attribution(tiny, runs):
    """The pipeline's act-patching estimate from the shared clean-run gradients equals
    `head_attribution` (its own forward/backward passes), at all positions and at END."""
    from interp.attribution import head_attribution
    from interp.patching.gradients import act_patch_attribution

    ref = head_attribution(tiny, runs.batch, direction="noise")
    assert torch.allclose(act_patch_attribution(tiny, runs), ref, atol=1e-5)
    at_end = act_patch_attribution(tiny, runs, "END")
    assert not torch.allclose(at_end, ref, atol=1e-6) and at_end.abs().max() > 1e-3
    # at END it is the derivative along the patch direction: check it by finite differences
    b, eps, rows = runs.batch, 1e-2, torch.arange(len(runs.batch))
    for layer, head in [(0, 1), (1, 2)]:
        name = f"blocks.{layer}.attn.hook_z"
        delta = (runs.corrupted_cache[name] - runs.clean_cache[name])[rows, b.positions["END"]]

        def nudge(z, hook=None, delta=delta, head=head):
            z = z.clone()
            z[rows, b.positions["END"], head] += eps * delta[:, head]
            return z

        with torch.no_grad():
            logits = tiny.run_with_hooks(b.clean_tokens, fwd_hooks=[(name, nudge)])
        moved = b.metric(logits[rows, b.read_positions]).mean() - runs.clean_metric.mean()
        assert float(moved / eps) == pytest.approx(float(at_end[layer, head]), rel=0.05,
                                                   abs=1e-4)
