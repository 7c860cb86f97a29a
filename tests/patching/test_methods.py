"""The sweeps' `method=` option: attribution estimates against independent computations."""

import pytest
import torch

from interp.ioi.dataset import build_ioi
from interp.metrics import logits_at
from interp.nodes import Head
from interp.patching import Receiver, act_patch_heads, path_patch, prepare_runs
from interp.patching.gradients import act_patch_attribution
from interp.patching.path import receiver_gradients


@pytest.fixture(scope="module")
def runs(tiny):
    return prepare_runs(tiny, build_ioi(tiny, n_prompts=10, seed=0).batch)


def test_act_patch_attribution_method_matches_shared_gradients(tiny, runs):
    """method="attribution" runs its own passes; the pipeline's shared-gradient estimate
    (finite-difference checked elsewhere) must agree, at all positions and at END."""
    for positions in (None, "END"):
        est = act_patch_heads(tiny, runs, "noise", positions, method="attribution")
        assert torch.allclose(est, act_patch_attribution(tiny, runs, positions), atol=1e-5)


def test_act_patch_ig_is_antisymmetric(tiny, runs):
    noise = act_patch_heads(tiny, runs, "noise", "END", method="attribution-ig", steps=3)
    denoise = act_patch_heads(tiny, runs, "denoise", "END", method="attribution-ig", steps=3)
    assert noise.abs().max() > 1e-3
    assert torch.allclose(noise, -denoise, atol=1e-5)


def _hand_ig_gradients(model, runs, names, steps):
    """Mean over alpha_k = (k + 0.5) / steps of d(mean metric)/d(act), with the input
    embedding moved from clean to corrupted by alpha_k: hooks and autograd only."""
    b = runs.batch
    clean = runs.clean_cache["blocks.0.hook_resid_pre"]
    corrupted = runs.corrupted_cache["blocks.0.hook_resid_pre"]
    total = {n: 0 for n in names}
    for k in range(steps):
        point = (clean + (k + 0.5) / steps * (corrupted - clean)).clone()
        kept = {}

        def keeper(name, kept=kept):
            def keep(act, hook):
                act.retain_grad()
                kept[name] = act
                return act
            return keep

        hooks = [("blocks.0.hook_resid_pre", lambda act, hook, p=point: p.clone())]
        hooks += [(n, keeper(n)) for n in names]
        with torch.enable_grad():
            logits = model.run_with_hooks(b.clean_tokens, fwd_hooks=hooks)
            b.metric(logits_at(logits, b.read_positions)).mean().backward()
        for n in names:
            total[n] = total[n] + kept[n].grad / steps
    return total


def test_path_ig_gradients_equal_hand_computation(tiny, runs):
    recv = [Receiver(Head(1, 2), "q", "END"), Receiver(Head(1, 0), "v", "S2")]
    got = receiver_gradients(tiny, runs, recv, steps=3)
    hand = _hand_ig_gradients(tiny, runs, [r.hook_name() for r in recv], 3)
    rows = torch.arange(len(runs.batch))
    for r in recv:
        want = hand[r.hook_name()][rows, runs.batch.positions[r.position], r.head.head]
        assert want.abs().max() > 0
        assert torch.allclose(got[r], want, atol=1e-6)


def test_path_patch_methods(tiny, runs):
    recv = [Receiver(Head(1, 2), "q", "END")]
    senders = [Head(0, h) for h in range(tiny.cfg.n_heads)]
    exact = path_patch(tiny, runs, senders, recv, progress=False)
    for method in ("attribution", "attribution-ig"):
        est = path_patch(tiny, runs, senders, recv, method=method, steps=3, progress=False)
        assert est.shape == exact.shape and not torch.allclose(est, exact, atol=1e-9)
    with pytest.raises(ValueError, match="method must be one of"):
        path_patch(tiny, runs, senders, recv, method="ig", progress=False)


def test_screened_takes_top_k_and_everything_past_the_bar():
    from interp.patching.path import screened

    est = torch.tensor([0.1, -0.9, 0.3, -0.05, 0.4])
    assert screened(est, 2) == [1, 4]
    assert screened(est, 1, at_least=0.3) == [1, 2, 4]
    assert screened(est, 0, at_least=1.0) == []
