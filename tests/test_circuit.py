import pytest
import torch

from interp.circuit import (
    circuit_metric,
    completeness,
    faithfulness,
    full_circuit,
    minimality,
    without,
)
from interp.ioi.dataset import build_ioi
from interp.metrics import logits_at
from interp.nodes import Head, Mlp
from interp.patching import prepare_runs


@pytest.fixture(scope="module")
def runs(tiny):
    return prepare_runs(tiny, build_ioi(tiny, n_prompts=12, seed=0).batch)


def test_full_circuit_is_the_model(tiny, runs):
    assert torch.allclose(circuit_metric(tiny, runs, full_circuit(tiny)), runs.clean_metric,
                          atol=1e-5)
    f = faithfulness(tiny, runs, full_circuit(tiny))
    assert abs(f["faithfulness"] - 1) < 1e-4


def test_empty_circuit_equals_hand_mean_ablation(tiny, runs):
    """Every head replaced by its per-template, per-position mean over p_ABC."""
    b = runs.batch
    hooks = []
    for layer in range(tiny.cfg.n_layers):
        z = runs.corrupted_cache[f"blocks.{layer}.attn.hook_z"]
        means = torch.stack([z[b.groups == g].mean(0) for g in b.groups.tolist()])
        hooks.append((f"blocks.{layer}.attn.hook_z", lambda a, hook=None, m=means: m))
    ref = b.metric(logits_at(tiny.run_with_hooks(b.clean_tokens, fwd_hooks=hooks),
                             b.read_positions))
    assert torch.allclose(circuit_metric(tiny, runs, {}), ref, atol=1e-5)


def test_positions_restrict_what_is_kept(tiny, runs):
    everywhere = circuit_metric(tiny, runs, {Head(1, 0): None})
    at_end = circuit_metric(tiny, runs, {Head(1, 0): ["END"]})
    nowhere = circuit_metric(tiny, runs, {})
    # layer-1 heads only matter at END for a metric read at END
    assert torch.allclose(everywhere, at_end, atol=1e-5)
    assert not torch.allclose(everywhere, nowhere, atol=1e-6)
    with pytest.raises(ValueError, match="unknown position"):
        circuit_metric(tiny, runs, {Head(1, 0): ["NOPE"]})


def test_mlp_nodes_switch_on_mlp_ablation(tiny, runs):
    with_mlp = circuit_metric(tiny, runs, {**full_circuit(tiny), Mlp(0): None})
    assert not torch.allclose(with_mlp, runs.clean_metric, atol=1e-6)  # MLP1 now ablated


def test_completeness_and_minimality_shapes(tiny, runs):
    circuit = {Head(0, 1): None, Head(1, 2): ["END"], Head(1, 3): ["END"]}
    groups = {"a": [Head(0, 1)], "b": [Head(1, 2), Head(1, 3)]}
    comp = completeness(tiny, runs, circuit, groups)
    c_minus = circuit_metric(tiny, runs, without(circuit, groups["b"])).mean().item()
    assert comp["b"]["F_C_minus_K"] == pytest.approx(c_minus, abs=1e-6)
    mini = minimality(tiny, runs, circuit, groups)
    assert set(mini["per_node"]) == {"L0H1", "L1H2", "L1H3"}
