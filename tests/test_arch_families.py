"""Every family of `interp.arch` (and one outside it) against the bridge's own hooked forwards.

Each family is a tiny random model built from its real HF class (`tiny_families`). The fast
sweeps must equal the naive one-forward-per-item references (`interp.patching.naive`), the
mean-ablated circuits a hooked forward, and the EAP edge gradients autograd through the
bridge. OLMo 2 and StableLM are not fast families: it must take the general path, announced once.
"""

import pytest
import torch
from tiny_families import FAMILIES, tiny_model

from interp.arch import family_of
from interp.attribution import edge_attribution
from interp.ioi.dataset import build_ioi
from interp.mean_ablation import MeanAblation
from interp.metrics import logits_at
from interp.nodes import Head, all_heads
from interp.patching import Receiver, act_patch_heads, path_patch, prepare_runs
from interp.patching.naive import act_patch_heads_naive, path_patch_naive

GENERAL = ("olmo2", "stablelm")  # bridged, but not fast-engine families


@pytest.fixture(scope="module", params=FAMILIES)
def case(request):
    model = tiny_model(request.param)
    return request.param, model, prepare_runs(model, build_ioi(model, n_prompts=6,
                                                                 seed=0).batch)


def test_family_is_recognised(case):
    name, model, _ = case
    assert (family_of(model) is None) == (name in GENERAL)


@pytest.mark.parametrize("positions", [None, "END"])
def test_act_patch_equals_naive(case, positions):
    _, model, runs = case
    fast = act_patch_heads(model, runs, "noise", positions, progress=False)
    ref = act_patch_heads_naive(model, runs, "noise", positions)
    assert ref.abs().max() > 1e-3
    assert torch.allclose(fast, ref, atol=1e-4)


def test_path_patch_to_logits_equals_naive(case):
    _, model, runs = case
    heads = all_heads(model.cfg.n_layers, model.cfg.n_heads)
    ref = path_patch_naive(model, runs, heads)
    assert ref.abs().max() > 1e-3
    assert torch.allclose(path_patch(model, runs, heads, progress=False), ref, atol=1e-4)


def test_path_patch_to_qkv_equals_naive(case):
    _, model, runs = case
    receivers = [Receiver(Head(1, 0), "q", "END"), Receiver(Head(1, 1), "k", "S1+1"),
                 Receiver(Head(1, 3), "v", "S2")]
    senders = [Head(0, h) for h in range(model.cfg.n_heads)]
    ref = path_patch_naive(model, runs, senders, receivers)
    fast = path_patch(model, runs, senders, receivers, budget_gb=1e-6, progress=False)
    assert ref.abs().max() > 1e-5
    assert torch.allclose(fast, ref, atol=1e-4)


def test_mean_ablation_equals_hooked_forward(case):
    _, model, runs = case
    ev = MeanAblation(model, runs)
    circuits = [{Head(0, 1): None, Head(1, 2): ["END"]}, {Head(1, 0): None},
                {Head(0, h): None for h in range(model.cfg.n_heads)}]
    ref = []
    for circuit in circuits:
        with model.hooks(fwd_hooks=ev.hooks([ev.ablation(circuit)])):
            logits = model(runs.batch.clean_tokens)
        ref.append(runs.batch.metric(logits_at(logits, runs.batch.read_positions)))
    assert torch.allclose(ev.metrics(circuits), torch.stack(ref), atol=1e-4)


def _eap_by_autograd(model, batch, hook: str, delta) -> float:
    """d mean-metric / d eps with eps * delta added at `hook` only (the bridge's hook)."""
    eps = torch.zeros((), requires_grad=True)

    def add(act, hook=None):
        return act + eps * delta

    with torch.enable_grad(), model.hooks(fwd_hooks=[(hook, add)]):
        logits = model(batch.clean_tokens)
        metric = batch.metric(logits_at(logits, batch.read_positions)).mean()
        (grad,) = torch.autograd.grad(metric, eps)
    return float(grad)


def test_eap_edge_gradients_equal_autograd(case):
    """INPUT -> MLP1 and INPUT -> LOGITS: delta . gradient at the receiver's own input."""
    name, model, runs = case
    batch = runs.batch
    scores = edge_attribution(model, batch, receivers=("mlp", "logits"), chunk_size=16)
    name0 = "blocks.0.hook_resid_pre"  # what INPUT writes: the embeddings
    delta = (runs.corrupted_cache[name0] - runs.clean_cache[name0]).clone()
    got = {r: float(scores.scores[0, scores.receivers.index(r)]) for r in ("MLP1", "LOGITS")}
    assert got["LOGITS"] == pytest.approx(
        _eap_by_autograd(model, batch, "ln_final.hook_in", delta), abs=1e-4)
    if "blocks.1.ln2.hook_in" in model.hook_dict:  # GPT-J's MLP shares ln1 with attention
        assert got["MLP1"] == pytest.approx(
            _eap_by_autograd(model, batch, "blocks.1.ln2.hook_in", delta), abs=1e-4)


def test_family_mlp_equals_the_bridge_mlp(case):
    """The engine's MLP (a fused tanh-GELU where HF writes it elementwise) computes what the
    bridge's MLP does; GPT-2 and GPT-J (gelu_new) take the fused kernel, and a model in
    training mode (dropout live) keeps the bridge's own module."""
    name, model, _ = case
    family = family_of(model)
    if family is None:
        pytest.skip("general path: no engine MLP")
    x = torch.randn(3, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    bridge = model.blocks[1].mlp
    fast = family.mlp(model, 1)
    with torch.no_grad():
        ref = bridge(x)
        assert ref.abs().max() > 1e-3
        assert torch.allclose(fast(x), ref, atol=1e-6, rtol=1e-5)
    assert (fast is not bridge) == (name in ("gpt2", "gptj"))
    with torch.enable_grad():  # under autograd: the same values and input gradients
        x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        (g_fast,) = torch.autograd.grad(fast(x_fast).square().sum(), x_fast)
        (g_ref,) = torch.autograd.grad(bridge(x_ref).square().sum(), x_ref)
    assert torch.allclose(g_fast, g_ref, atol=1e-5, rtol=1e-4)
    model.train()
    try:
        assert family.mlp(model, 1) is bridge
    finally:
        model.eval()


LAYER_NORM_FAMILIES = ("gpt2", "gptj", "neox")  # nn.LayerNorm; the others use RMSNorms
LLAMA_RMS_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")  # weight * x / rms(x); Gemma: 1 + w
FAST_NORM_FAMILIES = LAYER_NORM_FAMILIES + LLAMA_RMS_FAMILIES


def _layer_norm_by_hand(norm, x):
    hf = norm.original_component
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.square().mean(-1, keepdim=True) + hf.eps).sqrt()
    return centred / scale * hf.weight + hf.bias


def _rms_norm_by_hand(norm, x):
    hf = norm.original_component
    return x / (x.square().mean(-1, keepdim=True) + hf.variance_epsilon).sqrt() * hf.weight


def test_family_norms_equal_the_bridge_norms(case):
    """The engine's norms (`F.layer_norm` where the block wraps an `nn.LayerNorm`,
    `F.rms_norm` where it wraps a Llama-form RMSNorm) compute what the bridge's norms and a
    hand-written norm do; Gemma's RMSNorms (1 + weight), a bfloat16 input and a model in
    training mode keep the bridge's own modules."""
    name, model, _ = case
    family = family_of(model)
    if family is None:
        pytest.skip("general path: no engine norms")
    x = 3 * torch.randn(3, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(0)) + 1
    block = model.blocks[1]
    names = [n for n in ("ln1", "ln2", "ln1_post", "ln2_post") if hasattr(block, n)]
    assert "ln1" in names
    for norm_name in names:
        bridge, fast = getattr(block, norm_name), family.norm(model, 1, norm_name)
        with torch.no_grad():
            ref = bridge(x)
            assert torch.allclose(fast(x), ref, atol=1e-5)
            if name in LAYER_NORM_FAMILIES:
                assert torch.allclose(fast(x), _layer_norm_by_hand(bridge, x), atol=1e-5)
            if name in LLAMA_RMS_FAMILIES:
                assert torch.allclose(fast(x), _rms_norm_by_hand(bridge, x), atol=1e-5)
        assert (fast is not bridge) == (name in FAST_NORM_FAMILIES)
    if name in LLAMA_RMS_FAMILIES:  # the bridge's numerics for another dtype
        with torch.no_grad():
            half = x.to(torch.bfloat16)
            ref = block.ln1.original_component(half)
            assert torch.equal(family.norm(model, 1, "ln1")(half), ref)
    model.train()
    try:
        assert family.norm(model, 1, "ln1") is block.ln1
    finally:
        model.eval()


def test_llama_rms_norms_compute_llamas_forward():
    """Every class `fast_norm` runs as `F.rms_norm` has LlamaRMSNorm's forward, line for line
    (a new transformers version that changes one must drop it from the list); Gemma's and
    OLMo-2's RMSNorms, which differ, are not listed."""
    import inspect

    import transformers

    from interp.arch import LLAMA_RMS_NORMS

    def source(name: str) -> str:
        family = name.removesuffix("RMSNorm").lower()
        module = getattr(transformers.models, family)
        cls = getattr(getattr(module, f"modeling_{family}"), name)
        return inspect.getsource(cls.forward)

    llama = source("LlamaRMSNorm")
    assert "rsqrt" in llama and "self.weight *" in llama
    for name in LLAMA_RMS_NORMS:
        assert source(name) == llama, name
    for name in ("GemmaRMSNorm", "Olmo2RMSNorm"):
        assert name not in LLAMA_RMS_NORMS and source(name) != llama
