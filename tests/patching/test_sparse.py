"""The changed-tokens forward against the bridge's own blocks."""

from types import SimpleNamespace

import pytest
import torch

from interp.ioi.dataset import build_ioi
from interp.patching import act_patch_heads, prepare_runs
from interp.patching.naive import act_patch_heads_naive
from interp.patching.sparse import (
    ChangedTokens,
    base_run,
    first_differing_token,
    forward_changed,
)


def _unpatched_final(model, runs, start: int, first, n_items: int = 2):
    b, n_layers = runs.batch, model.cfg.n_layers
    tokens = ChangedTokens.span(first, b.read_positions, n_items)
    name = f"blocks.{start}.hook_resid_pre" if start < n_layers \
        else f"blocks.{n_layers - 1}.hook_resid_post"
    x = runs.clean_cache[name].repeat(n_items, 1, 1)[tokens.rows, tokens.pos]
    with torch.inference_mode():
        return forward_changed(model, base_run(model, runs), x, tokens, start)


def _check_reproduces_clean_run(model, n_prompts: int, atol: float):
    runs = prepare_runs(model, build_ioi(model, n_prompts=n_prompts, seed=0).batch)
    b, n_layers = runs.batch, model.cfg.n_layers
    rows = torch.arange(len(b))
    want = runs.clean_cache[f"blocks.{n_layers - 1}.hook_resid_post"][rows, b.read_positions]
    for start in (0, 1, n_layers - 1, n_layers):
        for first in (torch.zeros_like(b.read_positions), b.positions["S2"], b.read_positions):
            got = _unpatched_final(model, runs, start, first)
            assert torch.allclose(got, want.repeat(2, 1), atol=atol), (start, first)


def test_unpatched_tokens_reproduce_the_clean_run(tiny):
    _check_reproduces_clean_run(tiny, 6, 1e-5)


def test_token_sets():
    t = ChangedTokens.span(torch.tensor([1, 3]), torch.tensor([3, 4]), n_items=2)
    assert t.rows.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert t.pos.tolist() == [1, 2, 3, 3, 4, 1, 2, 3, 3, 4]
    assert t.read.tolist() == [2, 4, 7, 9] and t.first.tolist() == [0, 3, 5, 8]
    assert t.index_of(torch.tensor([2, 4, 1, 3])).tolist() == [1, 4, 5, 8]
    with pytest.raises(ValueError, match="outside the changed tokens"):
        t.index_of(torch.tensor([0, 4, 1, 3]))
    with pytest.raises(ValueError, match="after the read position"):
        ChangedTokens.span(torch.tensor([5]), torch.tensor([4]), 1)


def test_first_differing_token_by_hand():
    batch = SimpleNamespace(clean_tokens=torch.tensor([[1, 2, 3, 4], [1, 5, 3, 4], [1, 2, 3, 4]]),
                            corrupted_tokens=torch.tensor([[1, 2, 9, 4], [1, 2, 3, 4],
                                                           [1, 2, 3, 4]]),
                            read_positions=torch.tensor([3, 3, 2]))
    assert first_differing_token(batch).tolist() == [2, 1, 2]  # none differ: the read


def test_act_patching_skips_only_identical_tokens(tiny):
    """Every IOI prompt starts with tokens its corruption shares; patching from the first
    differing one gives what a span from position 0 gives."""
    runs = prepare_runs(tiny, build_ioi(tiny, n_prompts=6, seed=0).batch)
    assert (first_differing_token(runs.batch) > 0).all()
    with torch.inference_mode():
        skipped = act_patch_heads(tiny, runs, progress=False)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("interp.patching.activation.first_differing_token",
                       lambda batch: torch.zeros_like(batch.read_positions))
            whole = act_patch_heads(tiny, runs, progress=False)
    assert whole.abs().max() > 1e-3
    assert torch.allclose(skipped, whole, atol=1e-6)


@pytest.mark.offline_model
def test_smollm2_rotary_gqa_forward_and_act_patching(smol):
    """Rotary embeddings, GQA and RMSNorm: the residual at 8e-7 relative precision (it reaches
    ~800 in SmolLM2), and exact activation patching equal to one forward per head."""
    _check_reproduces_clean_run(smol, 3, 2e-3)
    runs = prepare_runs(smol, build_ioi(smol, n_prompts=2, seed=0).batch)
    layers = [0, 14, 28, 29]
    for direction, positions in [("noise", None), ("denoise", "END")]:
        fast = act_patch_heads(smol, runs, direction, positions, progress=False)[layers]
        ref = act_patch_heads_naive(smol, runs, direction, positions, layers)[layers]
        assert fast.abs().max() > 0.01
        assert torch.allclose(fast, ref, atol=1e-4)


def test_unsupported_attention_is_refused(tiny):
    from types import SimpleNamespace

    from interp.patching.sparse import check_supported

    check_supported(tiny)  # GPT-2
    other = SimpleNamespace(original_model=SimpleNamespace(),
                            blocks=[SimpleNamespace(attn=tiny.blocks[0].attn)])
    with pytest.raises(NotImplementedError, match="interp.patching.naive"):
        check_supported(other)


def test_replaced_mlp_outputs_skip_the_mlp_and_match_a_hook(tiny):
    """`MlpOut`: where an MLP's output is replaced the MLP does not run (counted by a hook on
    its first linear map, which the engine's fused MLP runs too), and the result equals
    running it everywhere and replacing its output."""
    from interp.patching.sparse import MlpOut

    model = tiny
    runs = prepare_runs(model, build_ioi(model, n_prompts=4, seed=0).batch)
    b, n_layers = runs.batch, model.cfg.n_layers
    tokens = ChangedTokens.span(torch.zeros_like(b.read_positions), b.read_positions, 1)
    x = runs.clean_cache["blocks.0.hook_resid_pre"][tokens.rows, tokens.pos]
    put = tokens.pos % 2 == 1  # every other token of layer 0
    value = torch.randn(len(put), model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    seen = []
    handle = model.blocks[0].mlp.original_component.c_fc.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        with torch.inference_mode():
            replaced = MlpOut(put, value)
            got = forward_changed(model, base_run(model, runs), x, tokens, 0,
                                  mlp_out={0: replaced})
    finally:
        handle.remove()
    assert seen == [int((~put).sum())]
    assert replaced.skipped == int(put.sum())  # the accounting counts what did not run

    def replace(act, hook):
        act = act.clone()
        act[tokens.rows[put], tokens.pos[put]] = value[put]
        return act
    with torch.inference_mode():
        _, cache = model.run_with_cache(b.clean_tokens, names_filter=[
            f"blocks.{n_layers - 1}.hook_resid_post"])
        model.add_hook("blocks.0.hook_mlp_out", replace)
        try:
            _, hooked = model.run_with_cache(b.clean_tokens, names_filter=[
                f"blocks.{n_layers - 1}.hook_resid_post"])
        finally:
            model.reset_hooks()
    name = f"blocks.{n_layers - 1}.hook_resid_post"
    want = hooked[name][torch.arange(len(b)), b.read_positions]
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, cache[name][torch.arange(len(b)), b.read_positions],
                              atol=1e-3)


def test_stacked_weights_are_read_once_and_equal_the_bridge(tiny):
    from interp.arch import StackedWeights

    w = StackedWeights(tiny)
    assert torch.equal(w["W_O"], tiny.W_O) and torch.equal(w["W_Q"][1], tiny.W_Q[1])
    assert w["W_O"] is w["W_O"]  # read once
    assert w["no_such_weight"] is None
