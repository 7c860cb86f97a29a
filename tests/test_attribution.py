"""Attribution patching against independent computations (random:tiny; SmolLM2 for GQA)."""

import pytest
import torch

from interp import load_model
from interp.attribution import edge_attribution, head_attribution
from interp.interventions import patch_node, run_with_interventions
from interp.metrics import LogitDiff, logits_at
from interp.nodes import all_heads
from interp.patching.runs import prepare_runs
from interp.tasks.base import TaskBatch


def _batch(model, n=6, length=10, seed=0) -> TaskBatch:
    """Random prompts; corrupted = clean with three tokens swapped; ragged read positions."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1000, 20000, (n, length), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(1000, 20000, (n, 3), generator=gen)
    read = torch.full((n,), length - 1)
    read[0] = length - 3
    metric = LogitDiff(torch.randint(1000, 20000, (n,), generator=gen),
                       torch.randint(1000, 20000, (n,), generator=gen))
    return TaskBatch(clean, corrupted, read, torch.zeros(n, dtype=torch.long), metric)


def _mean_metric(model, batch, tokens, ivs=()):
    with torch.no_grad():
        logits = run_with_interventions(model, tokens, ivs)
    return batch.metric(logits_at(logits, batch.read_positions)).mean().item()


def _exact_noising(model, batch):
    """Naive activation patching: one full forward per head, corrupted z into the clean run."""
    _, corrupted_cache = model.run_with_cache(batch.corrupted_tokens)
    base = _mean_metric(model, batch, batch.clean_tokens)
    heads = all_heads(model.cfg.n_layers, model.cfg.n_heads)
    effects = [_mean_metric(model, batch, batch.clean_tokens, [patch_node(h, corrupted_cache)])
               - base for h in heads]
    return torch.tensor(effects).view(model.cfg.n_layers, model.cfg.n_heads)


def _autograd_estimate(model, batch):
    """d/dt M(clean, z_h <- z_clean + t_h (z_corr - z_clean)) at t = 0, via a scalar per head."""
    _, clean_cache = model.run_with_cache(batch.clean_tokens)
    _, corr_cache = model.run_with_cache(batch.corrupted_tokens)
    t = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, requires_grad=True)

    def hook(layer):
        name = f"blocks.{layer}.attn.hook_z"
        delta = (corr_cache[name] - clean_cache[name]).detach()
        return name, lambda z, hook=None: z + t[layer][None, None, :, None] * delta

    with model.hooks(fwd_hooks=[hook(layer) for layer in range(model.cfg.n_layers)]):
        logits = model(batch.clean_tokens)
    metric = batch.metric(logits_at(logits, batch.read_positions)).mean()
    (grad,) = torch.autograd.grad(metric, t)
    return grad


def test_eap_equals_independent_autograd_derivative(tiny):
    batch = _batch(tiny)
    expected = _autograd_estimate(tiny, batch)
    got = head_attribution(tiny, batch, chunk_size=4)  # chunking must not change the result
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4), (got, expected)


def test_eap_tracks_exact_patching_and_denoise_sign(tiny):
    batch = _batch(tiny)
    exact = _exact_noising(tiny, batch)
    est = head_attribution(tiny, batch)
    assert torch.corrcoef(torch.stack([est.flatten(), exact.flatten()]))[0, 1] > 0.95
    denoise = head_attribution(tiny, batch, direction="denoise")
    # denoising estimates the opposite patch: strongly anti-correlated with noising's exact
    assert torch.corrcoef(torch.stack([denoise.flatten(), exact.flatten()]))[0, 1] < -0.95


def test_eap_ig_closer_to_exact_than_eap(tiny):
    batch = _batch(tiny)
    exact = _exact_noising(tiny, batch)
    err_eap = (head_attribution(tiny, batch) - exact).abs().mean()
    err_ig = (head_attribution(tiny, batch, method="attribution-ig", steps=16) - exact).abs().mean()
    assert err_ig < err_eap, (err_ig, err_eap)
    # IG on a symmetric path: denoising is exactly minus noising
    ig_den = head_attribution(tiny, batch, method="attribution-ig", steps=4, direction="denoise")
    ig_noise = head_attribution(tiny, batch, method="attribution-ig", steps=4)
    assert torch.allclose(ig_den, -ig_noise, atol=1e-6)


def test_edges_to_logits_equal_direct_path_derivative(tiny):
    """score(L1Hh -> LOGITS) = d/dt M(unembed(ln_final(resid_final + t * delta_out_h)))."""
    batch = _batch(tiny)
    edges = edge_attribution(tiny, batch, receivers=("logits",))
    _, clean = tiny.run_with_cache(batch.clean_tokens)
    _, corr = tiny.run_with_cache(batch.corrupted_tokens)
    layer = tiny.cfg.n_layers - 1
    name = f"blocks.{layer}.attn.hook_z"
    resid = clean[f"blocks.{layer}.hook_resid_post"]
    for head in range(tiny.cfg.n_heads):
        delta = (corr[name][:, :, head] - clean[name][:, :, head]) @ tiny.W_O[layer, head]
        t = torch.zeros((), requires_grad=True)
        logits = tiny.unembed(tiny.ln_final(resid + t * delta.detach()))
        metric = batch.metric(logits_at(logits, batch.read_positions)).mean()
        (expected,) = torch.autograd.grad(metric, t)
        got = edges.scores[edges.senders.index(f"L{layer}H{head}"), -1]
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4), (head, got, expected)


def _edges_sum_to_nodes(model, batch, method):
    edges = edge_attribution(model, batch, method=method, steps=3)
    nodes = head_attribution(model, batch, method=method, steps=3)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            row = edges.scores[edges.senders.index(f"L{layer}H{head}")]
            assert torch.allclose(row.sum(), nodes[layer, head], atol=1e-5, rtol=1e-3), \
                (layer, head, row.sum(), nodes[layer, head])
    assert not edges.scores[~edges.valid].any()  # no score on an edge that does not exist


def test_edge_scores_sum_to_node_score(tiny):
    """Every reader of the residual stream is a receiver, so a sender's edge scores add up to
    its node score (q/k/v through W_Q/K/V and the norm Jacobian, MLP inputs, logits)."""
    batch = _batch(tiny)
    _edges_sum_to_nodes(tiny, batch, "attribution")
    _edges_sum_to_nodes(tiny, batch, "attribution-ig")


def test_head_grid_and_cached_runs(tiny):
    """The head grid that comes with the edge scores is the independent autograd derivative
    (EAP) and `head_attribution`'s (EAP-IG); the cached runs change no score."""
    batch = _batch(tiny)
    runs = prepare_runs(tiny, batch)
    eap = edge_attribution(tiny, batch, runs=runs, chunk_size=4)
    assert torch.allclose(eap.heads, _autograd_estimate(tiny, batch), atol=1e-6, rtol=1e-4)
    plain = edge_attribution(tiny, batch)  # both endpoint runs computed, one chunk
    assert torch.allclose(eap.scores, plain.scores, atol=1e-7, rtol=1e-5)
    ig = edge_attribution(tiny, batch, method="attribution-ig", steps=2, runs=runs)
    assert torch.allclose(ig.heads, head_attribution(tiny, batch, "attribution-ig", steps=2),
                          atol=1e-7, rtol=1e-5)
    assert torch.allclose(ig.scores, edge_attribution(tiny, batch, method="attribution-ig",
                                                      steps=2).scores, atol=1e-7, rtol=1e-5)
    other = prepare_runs(tiny, _batch(tiny, seed=1))
    with pytest.raises(ValueError, match="runs were prepared for other prompts"):
        edge_attribution(tiny, batch, runs=other)


def test_bad_arguments(tiny):
    batch = _batch(tiny, n=2)
    with pytest.raises(ValueError, match="method"):
        head_attribution(tiny, batch, method="exact")
    with pytest.raises(ValueError, match="direction"):
        head_attribution(tiny, batch, direction="sideways")
    with pytest.raises(ValueError, match="receiver"):
        edge_attribution(tiny, batch, receivers=("resid_post",))


@pytest.mark.offline_model
def test_gqa_edge_scores_sum_to_node_score():
    """SmolLM2 (9 query heads, 3 KV heads, rotary, RMSNorm): the same identity, with k/v
    scored once per KV head."""
    model = load_model("smollm2-135m")
    batch = _batch(model, n=2, length=8)
    edges = edge_attribution(model, batch)
    assert "L3KV2.k" in edges.receivers and "L3H8.q" in edges.receivers
    nodes = head_attribution(model, batch)
    sums = torch.stack([edges.scores[edges.senders.index(f"L{la}H{h}")].sum()
                        for la in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)])
    assert torch.allclose(sums, nodes.flatten(), atol=1e-4, rtol=1e-3)
