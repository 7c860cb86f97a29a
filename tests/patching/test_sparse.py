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
