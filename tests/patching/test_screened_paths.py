"""Screen-then-patch path patching with shared work, against the plain computations.

- `QueryScreen` (attribution estimates of paths to END queries, read off the logits step's
  propagation) equals `path_patch(method="attribution")`, which projects each receiver's
  patched query and takes the gradient at it;
- `ScreenedPaths.exact` (final runs from the screen's receiver inputs, batched over sender
  layers) equals the naive two-forwards-per-sender reference, with receivers in three layers.
"""

import pytest
import torch
import transformers as tf
from tiny_families import COMMON, LLAMA3_ROPE
from transformer_lens.model_bridge import TransformerBridge

from interp.ioi.dataset import build_ioi
from interp.models.random_gpt2 import gpt2_tokenizer
from interp.nodes import Head, all_heads
from interp.patching import Receiver, path_patch, prepare_runs
from interp.patching.naive import path_patch_naive
from interp.patching.path import QueryScreen, ScreenedPaths, screened


def _llama(n_layers: int):
    """A tiny random Llama (GQA: 4 query heads, 2 KV heads; llama3 rotary), n_layers deep."""
    config = tf.LlamaConfig(**{**COMMON, "num_hidden_layers": n_layers},
                            num_key_value_heads=2, rope_scaling=LLAMA3_ROPE)
    config._attn_implementation = "eager"
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(1)
    hf = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.mul_(5.0)
    model = TransformerBridge.boot_transformers("LlamaForCausalLM", hf_model=hf.eval(),
                                                tokenizer=gpt2_tokenizer(), device="cpu")
    model.eval()
    return model


@pytest.fixture(scope="module")
def deep():
    model = _llama(4)
    return model, prepare_runs(model, build_ioi(model, n_prompts=6, seed=0).batch)


def test_query_screen_equals_attribution(deep):
    model, runs = deep
    senders = all_heads(4, model.cfg.n_heads)
    queries = QueryScreen(model, runs, senders)
    with_screen = path_patch(model, runs, senders, queries=queries, progress=False)
    assert torch.equal(with_screen, path_patch(model, runs, senders, progress=False))
    receivers = [Receiver(Head(1, 2), "q", "END"), Receiver(Head(2, 0), "q", "END"),
                 Receiver(Head(3, 3), "q", "END")]
    early = [h for h in senders if h.layer < 3]
    plain = path_patch(model, runs, early, receivers, method="attribution", progress=False)
    fused = queries.estimate(early, receivers)
    assert plain.abs().max() > 1e-3
    assert torch.allclose(fused, plain, rtol=1e-4, atol=1e-6)


def test_query_screen_refuses_other_receivers(deep):
    model, runs = deep
    queries = QueryScreen(model, runs, [Head(0, 0)])
    for receiver in (Receiver(Head(1, 0), "q", "S2"), Receiver(Head(1, 0), "k", "END")):
        assert not queries.covers(runs, [receiver])
        with pytest.raises(ValueError, match="read position"):
            queries.estimate([Head(0, 0)], [receiver])


def test_exact_over_three_receiver_layers_equals_naive(deep):
    """Senders of layers 0-2 reach different receiver sets (start layers 1, 2, 3): batched
    by start, they must still equal one naive patched run per sender."""
    model, runs = deep
    receivers = [Receiver(Head(1, 1), "v", "S2"), Receiver(Head(2, 3), "k", "S1+1"),
                 Receiver(Head(3, 0), "q", "END")]
    senders = [h for h in all_heads(4, model.cfg.n_heads) if h.layer < 3]
    fast = path_patch(model, runs, senders, receivers, progress=False)
    ref = path_patch_naive(model, runs, senders, receivers)
    assert fast.abs().max() > 1e-3
    assert torch.allclose(fast, ref, atol=1e-4)


def test_screened_paths_reuse_gives_the_separate_results(deep):
    model, runs = deep
    receivers = [Receiver(Head(2, 1), "v", "S2"), Receiver(Head(3, 2), "k", "S1+1")]
    senders = [h for h in all_heads(4, model.cfg.n_heads) if h.layer < 3]
    paths = ScreenedPaths(model, runs, senders, receivers, progress=False)
    plain = path_patch(model, runs, senders, receivers, method="attribution", progress=False)
    assert torch.allclose(paths.estimate, plain, atol=1e-6)
    chosen = screened(paths.estimate, 3)
    exact = path_patch(model, runs, [senders[i] for i in chosen], receivers, progress=False)
    assert torch.allclose(paths.exact(chosen), exact, atol=1e-6)
    given = ScreenedPaths(model, runs, senders, receivers, progress=False,
                          estimate=paths.estimate)  # no first pass: inputs for `chosen` only
    assert given.values is None
    assert torch.allclose(given.exact(chosen), exact, atol=1e-6)
