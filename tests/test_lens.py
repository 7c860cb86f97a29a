"""Logit lens: last layer = model logits; each layer = hand-computed norm(resid) @ W_U."""

import pytest
import torch

from interp import load_model
from interp.lens import (
    LensStats,
    layer_metrics,
    layer_resids,
    lens_at,
    lens_logits,
    overtake_layer,
    rank_of,
    trajectory,
)
from interp.tokens import encode_batch

TEXTS = ["Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Poland?\nA:",
         "The capital of Spain is"]


@pytest.fixture(scope="module")
def model():
    m = load_model("random:tiny", device="cpu")
    ln = m.ln_final.original_component  # non-trivial norm parameters make the test sharper
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.5 * torch.randn(ln.weight.shape, generator=gen))
        ln.bias.copy_(0.3 * torch.randn(ln.bias.shape, generator=gen))
    return m


def hand_lens(model, resid):
    """LayerNorm with the HF module's parameters, then the HF lm_head: no bridge code."""
    ln = model.ln_final.original_component
    centred = resid - resid.mean(-1, keepdim=True)
    normed = centred / (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    normed = normed * ln.weight + ln.bias
    head = model.original_model.lm_head
    return normed @ head.weight.T + (head.bias if head.bias is not None else 0)


def test_last_layer_lens_equals_model_logits(model):
    tokens, lengths = encode_batch(model, TEXTS)
    with torch.inference_mode():
        logits = model(tokens)
        lens = lens_logits(model, layer_resids(model, tokens)[-1])
    assert (lens - logits).abs().max() <= 1e-4


def test_every_layer_matches_hand_computation(model):
    tokens, _ = encode_batch(model, TEXTS)
    with torch.inference_mode():
        resids = layer_resids(model, tokens)
        for layer in range(model.cfg.n_layers):
            got = lens_logits(model, resids[layer])
            assert (got - hand_lens(model, resids[layer])).abs().max() <= 1e-4, layer


def test_layers_use_their_own_norm_scale_not_the_final_one(model):
    """The TL #1076 mistake (final layer's cached scale on layer 0) gives other logits."""
    tokens, _ = encode_batch(model, TEXTS[:1])
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
        resid0 = cache["blocks.0.hook_resid_post"]
        ln = model.ln_final.original_component
        centred = resid0 - resid0.mean(-1, keepdim=True)
        wrong = centred / cache["ln_final.hook_scale"] * ln.weight + ln.bias
        wrong_logits = model.unembed(wrong)
        right = lens_logits(model, resid0)
    assert (right - hand_lens(model, resid0)).abs().max() <= 1e-4
    assert (right - wrong_logits).abs().max() > 1e-2


def test_rank_of_matches_sorting():
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    order = logits.argsort(-1, descending=True)
    expected = (order == ids[..., None]).float().argmax(-1) + 1
    assert torch.equal(rank_of(logits, ids), expected)


def test_lens_at_reads_each_prompts_own_position(model):
    tokens, lengths = encode_batch(model, TEXTS)
    target = torch.tensor([11, 22])
    stats = lens_at(model, tokens, lengths - 1, {"t": target}, k=3, batch_size=1)
    with torch.inference_mode():
        for i, text in enumerate(TEXTS):
            alone, _ = encode_batch(model, [text])
            logp = model(alone)[0, -1].log_softmax(-1)
            assert abs(float(stats.probs["t"][-1, i]) - float(logp[target[i]].exp())) < 1e-5
            assert int(stats.top_ids[-1, i, 0]) == int(logp.argmax())
            assert int(stats.ranks["t"][-1, i]) == int((logp > logp[target[i]]).sum()) + 1
    assert torch.all(stats.kl_to_final[-1].abs() < 1e-5)
    assert torch.all(stats.kl_to_final[:-1] > 0)


def test_layer_metrics_on_hand_made_ranks():
    # 3 layers x 4 prompts; capital overtakes the country at layer 2.
    cap = torch.tensor([[9, 9, 9, 9], [2, 1, 5, 3], [1, 1, 1, 2]])
    cou = torch.tensor([[5, 5, 5, 5], [1, 2, 1, 1], [2, 3, 2, 1]])
    ones = torch.ones(3, 4)
    stats = LensStats(torch.zeros(3, 4, 1, dtype=torch.long), ones[..., None],
                      {"capital": ones, "country": ones}, {"capital": cap, "country": cou},
                      torch.zeros(3, 4))
    m = layer_metrics(stats)
    assert m["capital_top1_by_layer"] == [0.0, 0.25, 0.75]
    assert m["country_top1_by_layer"] == [0.0, 0.75, 0.25]
    assert m["argument_formation_layer"] == 1
    assert m["function_application_layer"] == 2
    assert m["final_accuracy"] == m["capital_top1_by_layer"][-1]
    assert abs(m["capital_mrr_by_layer"][1] - (0.5 + 1 + 0.2 + 1 / 3) / 4) < 1e-6


def test_overtake_needs_to_hold_to_the_end():
    assert overtake_layer([0, 1, 0, 1], [0, 0, 1, 0]) == 3
    assert overtake_layer([1, 1, 0], [0, 0, 1]) is None


def test_trajectory_shapes_and_last_layer(model):
    tokens, _ = encode_batch(model, TEXTS[:1])
    traj = trajectory(model, tokens[0], {"x": 5}, k=5)
    assert len(traj.top_tokens) == model.cfg.n_layers
    assert len(traj.top_tokens[0]) == tokens.shape[1] == len(traj.tokens)
    with torch.inference_mode():
        probs = model(tokens)[0].softmax(-1)
    assert torch.allclose(traj.top_probs[-1, :, 0], probs.max(-1).values, atol=1e-5)


@pytest.mark.offline_model
def test_smollm2_rmsnorm_lens():
    model = load_model("smollm2-135m", device="cpu")
    tokens, _ = encode_batch(model, TEXTS[:1])
    ln = model.ln_final.original_component
    with torch.inference_mode():
        resids = layer_resids(model, tokens)
        assert (lens_logits(model, resids[-1]) - model(tokens)).abs().max() <= 1e-4
        mid = resids[12]
        normed = mid / (mid.pow(2).mean(-1, keepdim=True) + ln.variance_epsilon).sqrt()
        hand = (normed * ln.weight) @ model.original_model.lm_head.weight.T
        assert (lens_logits(model, mid) - hand).abs().max() <= 1e-3


def test_lens_at_length_batches_equal_one_prompt_at_a_time(model):
    texts = ["The capital of France is", "Hi", "One two three four five six seven", "A b"]
    from interp.tokens import encode_batch
    tokens, lengths = encode_batch(model, texts)
    target = torch.tensor([5, 6, 7, 8])
    batched = lens_at(model, tokens, lengths - 1, {"t": target}, k=3, batch_size=2)
    for i in range(len(texts)):
        one = lens_at(model, tokens[i: i + 1, : int(lengths[i])], lengths[i: i + 1] - 1,
                      {"t": target[i: i + 1]}, k=3, batch_size=1)
        assert torch.equal(batched.ranks["t"][:, i], one.ranks["t"][:, 0])
        assert torch.equal(batched.top_ids[:, i], one.top_ids[:, 0])
        assert torch.allclose(batched.kl_to_final[:, i], one.kl_to_final[:, 0], atol=1e-5)


def test_lens_statistics_equal_a_plain_log_softmax_at_every_layer(model):
    """The lse-based probabilities and KL equal log_softmax of hand-lens logits."""
    tokens, lengths = encode_batch(model, TEXTS)
    target = torch.tensor([11, 22])
    stats = lens_at(model, tokens, lengths - 1, {"t": target}, k=4, batch_size=2)
    with torch.inference_mode():
        resids = layer_resids(model, tokens)
        rows = torch.arange(len(TEXTS))
        logp = hand_lens(model, resids[:, rows, lengths - 1]).log_softmax(-1)  # [L, b, V]
    kl = (logp[-1].exp() * (logp[-1] - logp)).sum(-1)
    assert torch.allclose(stats.kl_to_final, kl, atol=1e-4)
    assert torch.allclose(stats.top_probs, logp.topk(4, -1).values.exp(), atol=1e-5)
    want = logp.gather(-1, target.expand(len(logp), -1)[..., None])[..., 0].exp()
    assert torch.allclose(stats.probs["t"], want, atol=1e-6)


@pytest.mark.parametrize("texts", [TEXTS, ["Q: What is the capital of France?\nA:",
                                           "Q: What is the capital of Spain?\nA: Madrid\nQ:",
                                           "Q: What is"]])
def test_read_layer_resids_equal_hooked_forwards(model, texts):
    """The sparse clean forward (shared prefix once, packed tokens) equals the bridge's
    residual stream at each prompt's read position after every block."""
    from interp.lens import read_layer_resids

    tokens, lengths = encode_batch(model, texts)
    resid, work = read_layer_resids(model, tokens, lengths - 1)
    with torch.inference_mode():
        full = layer_resids(model, tokens)
    rows = torch.arange(len(texts))
    assert torch.allclose(resid, full[:, rows, lengths - 1], atol=1e-4)
    shared = texts is not TEXTS  # TEXTS share no prefix; the others share "Q: What is"
    assert (work < 1.0) if shared else work == 1.0
