import pytest
import torch

from interp.interventions import (
    Intervention,
    ablate_mlp,
    add_to_resid,
    applied,
    mean_ablate,
    patch_node,
    patch_resid,
    resample_ablate,
    run_with_interventions,
    set_mlp_out,
    zero_ablate,
)
from interp.nodes import Head, NodeError
from tests.conftest import n_hooks

TEXT = "When Mary and John went to the store, John gave a drink to"


def _tokens(model, texts=(TEXT,)):
    return torch.tensor([model.tokenizer.encode(t) for t in texts])


def _hand_hook(layer_head_value):
    head, value = layer_head_value

    def hook(z, hook=None):
        z = z.clone()
        z[:, :, head] = value
        return z
    return hook


def test_patch_clean_into_clean_is_noop(tiny):
    tokens = _tokens(tiny)
    logits, cache = tiny.run_with_cache(tokens)
    ivs = [patch_node(h, cache) for h in ["L0H1", "L1H2"]] + [ablate_mlp(0, "mean", cache)]
    assert (run_with_interventions(tiny, tokens, ivs) - logits).abs().max() <= 1e-5


def test_zero_ablation_matches_hand_hook_and_is_causal(tiny):
    tokens = _tokens(tiny)
    logits, cache = tiny.run_with_cache(tokens)
    pos = 5
    ablated = run_with_interventions(tiny, tokens, [zero_ablate("L1H2", positions=pos)])
    by_hand = tiny.run_with_hooks(tokens, fwd_hooks=[(
        "blocks.1.attn.hook_z", lambda z, hook=None: torch.cat(
            [z[:, :pos], torch.cat([z[:, pos:pos + 1, :2], torch.zeros_like(z[:, pos:pos + 1, 2:3]),
                                    z[:, pos:pos + 1, 3:]], 2), z[:, pos + 1:]], 1))])
    assert torch.allclose(ablated, by_hand, atol=1e-6)
    assert torch.equal(ablated[:, :pos], logits[:, :pos])      # upstream positions untouched
    assert (ablated[:, pos] - logits[:, pos]).abs().max() > 1e-6  # downstream changed


def test_mean_ablation_with_own_batch_is_noop(tiny):
    tokens = _tokens(tiny)
    logits, cache = tiny.run_with_cache(tokens)
    out = run_with_interventions(tiny, tokens, [mean_ablate("L0H3", cache), ablate_mlp(1, "mean",
                                                                                      cache)])
    assert (out - logits).abs().max() <= 1e-5


def test_mean_ablation_uses_reference_mean(tiny):
    tokens = _tokens(tiny, [TEXT, TEXT.replace("Mary", "Anne").replace("store", "park")])
    _, cache = tiny.run_with_cache(tokens)
    mean = cache["blocks.1.attn.hook_z"][:, :, 0].mean(0)
    out = run_with_interventions(tiny, tokens[:1], [mean_ablate(Head(1, 0), cache)])
    ref = tiny.run_with_hooks(tokens[:1], fwd_hooks=[("blocks.1.attn.hook_z",
                                                       _hand_hook((0, mean)))])
    assert torch.allclose(out, ref, atol=1e-6)


def test_mean_ablation_length_mismatch_is_clear(tiny):
    _, cache = tiny.run_with_cache(_tokens(tiny, ["short prompt"]))
    with pytest.raises(ValueError, match="same template"):
        run_with_interventions(tiny, _tokens(tiny), [mean_ablate("L0H0", cache)])


def test_resample_is_seeded(tiny):
    tokens = _tokens(tiny, [TEXT, TEXT.replace("Mary", "Anne"), TEXT.replace("John", "Paul")])
    _, cache = tiny.run_with_cache(tokens)
    a = run_with_interventions(tiny, tokens, [resample_ablate("L1H1", cache, seed=3)])
    b = run_with_interventions(tiny, tokens, [resample_ablate("L1H1", cache, seed=3)])
    assert torch.equal(a, b)


def test_head_outputs_sum_to_attn_out(tiny):
    _, cache = tiny.run_with_cache(_tokens(tiny))
    for layer in range(tiny.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        per_head = torch.einsum("bphd,hdm->bphm", z, tiny.W_O[layer])
        total = per_head.sum(2) + tiny.blocks[layer].attn.b_O
        assert torch.allclose(total, cache[f"blocks.{layer}.hook_attn_out"], atol=1e-5)


def test_set_mlp_and_add_resid_match_hand_hooks(tiny):
    tokens = _tokens(tiny)
    vec = torch.randn(tiny.cfg.d_model)
    out = run_with_interventions(tiny, tokens, [set_mlp_out(0, vec, positions=-1),
                                                add_to_resid(1, -1, vec)])

    def set_last(x, hook=None):
        x = x.clone()
        x[:, -1] = vec
        return x

    def add_last(x, hook=None):
        x = x.clone()
        x[:, -1] += vec
        return x
    ref = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", set_last),
                                                 ("blocks.1.hook_resid_pre", add_last)])
    assert torch.allclose(out, ref, atol=1e-6)


def test_per_prompt_positions(tiny):
    tokens = _tokens(tiny, [TEXT, TEXT])
    pos = torch.tensor([3, 7])
    out = run_with_interventions(tiny, tokens, [zero_ablate("L0H0", positions=pos)])
    for row in range(2):
        single = run_with_interventions(tiny, tokens[row:row + 1],
                                        [zero_ablate("L0H0", positions=int(pos[row]))])
        assert torch.allclose(out[row], single[0], atol=1e-5)


def test_hooks_removed_after_exception(tiny):
    tokens = _tokens(tiny)
    before = n_hooks(tiny)
    clean = tiny(tokens)

    def boom(act):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        run_with_interventions(tiny, tokens, [zero_ablate("L0H0"), Intervention(
            "blocks.1.hook_mlp_out", boom)])
    assert n_hooks(tiny) == before
    with pytest.raises(RuntimeError), applied(tiny, [zero_ablate("L1H1")]):
        raise RuntimeError("body failed")
    assert n_hooks(tiny) == before
    assert torch.equal(tiny(tokens), clean)


def test_out_of_range_node_names_the_shape(tiny):
    with pytest.raises(NodeError, match="n_heads=4"):
        zero_ablate("L0H7", model=tiny)


@pytest.mark.offline_model
def test_gqa_head_is_query_head_slice(smol):
    """Zero-ablating query head 4 equals zeroing its 64 input columns of o_proj."""
    tokens = torch.tensor([smol.tokenizer.encode(TEXT)])
    out = run_with_interventions(smol, tokens, [zero_ablate("L3H4", model=smol)])
    o_proj = smol.original_model.model.layers[3].self_attn.o_proj
    saved = o_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            o_proj.weight[:, 4 * 64:5 * 64] = 0
            ref = smol(tokens)
    finally:
        with torch.no_grad():
            o_proj.weight.copy_(saved)
    assert torch.allclose(out, ref, atol=1e-4)
    assert smol.cfg.n_key_value_heads == 3


def test_patch_resid_matches_hand_hook_and_checks_where(tiny):
    tokens = _tokens(tiny)
    vec = torch.randn(tiny.cfg.d_model)
    out = run_with_interventions(tiny, tokens, [patch_resid(1, 3, vec, where="resid_mid")])

    def set_pos(x, hook=None):
        x = x.clone()
        x[:, 3] = vec
        return x
    ref = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", set_pos)])
    assert torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ValueError, match="where must be"):
        patch_resid(1, 3, vec, where="attn_out")
