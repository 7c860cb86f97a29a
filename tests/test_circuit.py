from dataclasses import dataclass

import pytest
import torch

from interp.circuit import (
    all_heads_ablated,
    circuit_metric,
    completeness,
    faithfulness,
    full_circuit,
    minimality,
    normalised_faithfulness,
    without,
)
from interp.errors import UserValueError
from interp.ioi.dataset import build_ioi
from interp.mean_ablation import MeanAblation, resample_pick
from interp.metrics import LogitDiff, logits_at
from interp.nodes import Head, Mlp
from interp.patching import prepare_runs
from interp.patching.runs import Runs
from interp.tasks.base import TaskBatch, UnembedMetric
from interp.tasks.greater_than import GreaterThanTask


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


@pytest.mark.parametrize("kind", ["mean", "resample"])
def test_all_heads_ablated_at_the_reads_equals_the_full_run(tiny, runs, kind):
    """F(0) from one token per prompt equals the plain hooked forward of the empty circuit."""
    ev = MeanAblation(tiny, runs, kind=kind, seed=1)
    fast = all_heads_ablated(ev)
    assert fast is not None and not torch.allclose(fast, ev.runs.clean_metric, atol=1e-3)
    assert torch.allclose(fast, circuit_metric(tiny, ev.runs, {}), atol=1e-5)
    f = faithfulness(tiny, runs, {Head(1, 0): None}, MeanAblation(tiny, runs, kind=kind, seed=1))
    assert abs(f["F_all_heads_ablated"] - fast.mean().item()) < 1e-6


@pytest.mark.parametrize("family", ["llama", "neox", "gemma2"])
def test_all_heads_ablated_on_other_families(family):
    """GQA + rotary, parallel blocks, post-norms with soft-capped logits."""
    from tiny_families import tiny_model

    model = tiny_model(family)
    fam_runs = prepare_runs(model, build_ioi(model, n_prompts=6, seed=0).batch)
    fast = all_heads_ablated(MeanAblation(model, fam_runs))
    assert torch.allclose(fast, circuit_metric(model, fam_runs, {}), atol=1e-5)


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


class SetFunction(MeanAblation):
    """A `MeanAblation` whose F(C) is a hand-written function of the circuit's node set."""

    def __init__(self, value):  # no model: nothing is run
        self.value = value

    def metrics(self, circuits, progress=False):
        return torch.tensor([[float(self.value(set(c)))] for c in circuits])


def _one_prompt_runs(clean_metric: float) -> Runs:
    tokens = torch.zeros(1, 2, dtype=torch.long)
    batch = TaskBatch(tokens, tokens, torch.tensor([1]), torch.tensor([0]),
                      LogitDiff(torch.tensor([0]), torch.tensor([1])))
    return Runs(batch, {}, {}, torch.tensor([clean_metric]), torch.tensor([0.0]), {}, {})


A, B, C, M = Head(0, 0), Head(0, 1), Head(1, 0), Mlp(0)
FULL = _one_prompt_runs(1.0)  # F(M) = 1


def test_minimality_falls_back_to_the_group_for_backup_heads():
    """A and B back each other up (F = 1 while either is kept); C does nothing. Knocking out
    A alone changes nothing, but with its group-mate B gone it costs everything."""
    ev = SetFunction(lambda kept: 1.0 if kept & {A, B} else 0.0)
    circuit = {A: None, B: None, C: None}
    mini = minimality(None, FULL, circuit, {"movers": [A, B], "other": [C]}, 0.01, ev=ev)
    per = mini["per_node"]
    assert per["L0H0"] == {"contribution": 1.0, "K": "group movers minus v",
                           "relative_to_F_M": 1.0, "minimal": True}
    assert per["L0H1"]["minimal"] and per["L0H1"]["K"] == "group movers minus v"
    assert per["L1H0"] == {"contribution": 0.0, "K": "{}", "relative_to_F_M": 0.0,
                           "minimal": False}  # the rule rejects a node that does nothing
    assert mini["all_minimal"] is False


def test_minimality_without_fallback_when_single_knockout_suffices():
    ev = SetFunction(lambda kept: 0.5 * (A in kept) + 0.25 * (B in kept))
    mini = minimality(None, FULL, {A: None, B: None}, {"g": [A, B]}, 0.3, ev=ev)
    assert mini["per_node"]["L0H0"]["K"] == "{}" and mini["per_node"]["L0H0"]["minimal"]
    assert mini["per_node"]["L0H1"]["contribution"] == 0.25  # |0.5 - 0.75|; group gives 0.25
    assert not mini["per_node"]["L0H1"]["minimal"]


def test_faithfulness_counts_heads_and_mlps_apart():
    """n_heads used to count the MLP too."""
    ev = SetFunction(lambda kept: 0.2 + 0.6 * (A in kept))  # F(0) = 0.2, F(C) = 0.8
    f = faithfulness(None, FULL, {A: None, M: None}, ev)
    assert (f["n_heads"], f["n_mlps"]) == (1, 1)
    assert f["normalised_faithfulness"] == pytest.approx((0.8 - 0.2) / (1.0 - 0.2))
    assert f["faithfulness"] == pytest.approx(0.8)


def test_normalised_faithfulness_refuses_f_model_equal_f_empty():
    assert normalised_faithfulness(1.5, 2.0, 1.0) == 0.5
    assert normalised_faithfulness(-1.0, -3.0, 1.0) == 0.5
    with pytest.raises(UserValueError, match=r"F\(M\) = 2.*F\(0\) = 2.*undefined"):
        normalised_faithfulness(1.0, 2.0, 2.0)
    with pytest.raises(UserValueError, match="undefined"):  # evaluate used to divide by zero
        faithfulness(None, FULL, {A: None}, SetFunction(lambda kept: 1.0))


def _forward_with_z(model, runs, z_of_layer, keep=()):
    """Plain forward: every head's z outside `keep` replaced by `z_of_layer[layer]`."""
    b = runs.batch
    hooks = []
    for layer in range(model.cfg.n_layers):
        heads = [h for h in range(model.cfg.n_heads) if Head(layer, h) not in keep]

        def hook(z, hook=None, new=z_of_layer[layer], heads=heads):
            z = z.clone()
            z[:, :, heads] = new[:, :, heads]
            return z
        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    logits = model.run_with_hooks(b.clean_tokens, fwd_hooks=hooks)
    return b.metric(logits_at(logits, b.read_positions))


def test_resample_ablation_takes_one_corrupted_prompt_of_the_group(tiny):
    runs = prepare_runs(tiny, GreaterThanTask().build(tiny, 6, seed=0))  # one group
    groups = runs.batch.groups
    pick = resample_pick(groups, seed=3)
    assert torch.equal(groups[pick], groups) and torch.equal(pick, resample_pick(groups, 3))
    assert not torch.equal(pick, torch.arange(len(groups)))  # not the identity
    assert resample_pick(torch.tensor([0, 1, 1]), 0)[0] == 0  # a group of one picks itself
    ev = MeanAblation(tiny, runs, kind="resample", seed=3)
    keep = {Head(1, 2): None}
    got = ev.metrics([{}, keep])
    z = [runs.corrupted_cache[f"blocks.{la}.attn.hook_z"][pick] for la in range(2)]
    assert torch.allclose(got[0], _forward_with_z(tiny, runs, z), atol=1e-5)
    assert torch.allclose(got[1], _forward_with_z(tiny, runs, z, keep), atol=1e-5)
    assert runs.bases == {} and ev.runs.batch.groups is not groups  # runs left unchanged


def test_ablation_kind_is_validated(tiny, runs):
    with pytest.raises(UserValueError, match=r"\('mean', 'zero', 'resample'\), got 'median'"):
        MeanAblation(tiny, runs, kind="median")


def test_discover_refuses_an_undefined_normalisation_before_scoring(tiny, monkeypatch):
    """A metric no ablation can move: F(M) = F(0), refused before any edge is scored."""
    import interp.discover as discover_module

    @dataclass
    class Flat(UnembedMetric):
        n: int

        def __call__(self, logits):
            return logits[..., 0] * 0.0

        def subset(self, index):
            return Flat(len(index))

    tokens = torch.arange(12).view(2, 6) + 100
    batch = TaskBatch(tokens, tokens + 1, torch.tensor([5, 5]), torch.tensor([0, 0]), Flat(2))
    monkeypatch.setattr(discover_module, "edge_attribution",
                        lambda *a, **k: pytest.fail("scored edges before the check"))
    with pytest.raises(UserValueError, match="normalised faithfulness is undefined"):
        discover_module.discover(tiny, batch, progress=False)


def test_faithfulness_on_the_same_means_runs_f0_once(tiny, runs):
    """F(0) is computed once per `MeanAblation`: a second faithfulness (e.g. the circuit with
    the unclassified heads) reuses it and counts no run for it."""
    from interp.patching.counter import counting

    ev = MeanAblation(tiny, runs)
    circuit = {Head(1, 0): None}
    first = faithfulness(tiny, runs, circuit, ev)
    with counting() as count:
        before = count.tokens
        again = faithfulness(tiny, runs, circuit, ev)
        assert count.tokens == before  # C is a cached base, F(0) is kept
    assert again["F_all_heads_ablated"] == first["F_all_heads_ablated"]
    assert again["F_all_heads_ablated"] == pytest.approx(
        circuit_metric(tiny, runs, {}).mean().item(), abs=1e-5)
