"""ACDC: the batched walk against a plain one-edge-at-a-time walk, its rules on hand-built
scorers, and on random:tiny with the edge-ablation engine (KL and task metric)."""

import math
import random

import pytest

from interp.acdc import SetScorer, acdc_walk, receiver_key, receiver_order, sender_order
from interp.edges import EMBED, LOGITS, Edge, EdgeGraph
from interp.errors import UserValueError
from interp.nodes import Head, Mlp

GRAPH = EdgeGraph(2, 4, parallel=False).edges()  # random:tiny's shape


def _naive_walk(edges, metric, n_layers, threshold):
    """ACDC as written in the paper: one metric evaluation per edge, in the same order."""
    kept = set(edges)
    current = metric(kept)
    for key in receiver_order(edges, n_layers):
        receiver = key[0]
        into = sender_order([e for e in edges if receiver_key(e) == key and e in kept],
                            n_layers)
        if receiver != LOGITS and not any(e.sender == receiver for e in kept):
            kept -= set(into)
            continue
        for edge in into:
            value = metric(kept - {edge})
            if abs(value - current) <= threshold:
                kept.discard(edge)
                current = value
    return [e for e in edges if e in kept], current




def _interacting_metric(seed: int):
    """A non-additive metric of the kept set: weighted sum plus pairwise products, so the
    order and the sequential updates matter."""
    rng = random.Random(seed)
    weight = {e: rng.choice([0.0, 0.0, 0.0, rng.uniform(-1, 1)]) for e in GRAPH}
    pairs = [(rng.choice(GRAPH), rng.choice(GRAPH), rng.uniform(-1, 1)) for _ in range(40)]

    def metric(kept):
        terms = [weight[e] for e in kept] + [w for a, b, w in pairs if a in kept and b in kept]
        return math.fsum(terms)  # exact: independent of the set's iteration order
    return metric


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_batched_walk_equals_the_one_edge_at_a_time_walk(seed, threshold, batch):
    metric = _interacting_metric(seed)
    scorer = SetScorer(GRAPH, metric)
    result = acdc_walk(GRAPH, scorer, 2, threshold, "task", progress=False, batch=batch)
    kept, current = _naive_walk(GRAPH, metric, 2, threshold)
    assert result.edges == kept
    assert result.current == pytest.approx(current)
    assert result.n_forwards == scorer.calls - 1  # the first call scores the full graph
    assert result.n_tested + result.n_skipped + len(result.edges) >= len(GRAPH) - 1


def test_zero_threshold_keeps_exactly_the_edges_that_matter():
    """Additive metric: at T=0 an edge is kept iff its weight is non-zero; the edges into a
    node left with no outgoing edge are removed without a test."""
    useful = {Edge(Head(1, 2), LOGITS), Edge(Head(0, 1), Head(1, 2), "v"),
              Edge(EMBED, Head(0, 1), "q"), Edge(Mlp(0), LOGITS)}

    def metric(kept):
        return sum(1.0 for e in kept if e in useful)

    scorer = SetScorer(GRAPH, metric)
    result = acdc_walk(GRAPH, scorer, 2, 0.0, "task", progress=False)
    assert set(result.edges) == useful
    live = {Head(1, 2), Head(0, 1), Mlp(0), LOGITS}  # nodes with a kept outgoing edge
    dead_inputs = [e for e in GRAPH if e.receiver not in live]
    assert result.n_skipped == len(dead_inputs)
    assert result.n_tested == len(GRAPH) - len(dead_inputs)
    assert result.rows >= result.n_tested and result.n_forwards == scorer.calls - 1


def test_huge_threshold_keeps_nothing_and_a_negative_one_is_refused():
    metric = _interacting_metric(0)
    result = acdc_walk(GRAPH, SetScorer(GRAPH, metric), 2, 1e9, "task", progress=False)
    assert result.edges == []
    with pytest.raises(UserValueError, match="threshold"):
        acdc_walk(GRAPH, SetScorer(GRAPH, metric), 2, -1.0, "task", progress=False)


def test_walk_order_is_reverse_topological():
    order = receiver_order(GRAPH, 2)
    assert order[0] == (LOGITS, None) and order[1] == (Mlp(1), None)
    assert order[2:5] == [(Head(1, 3), "q"), (Head(1, 3), "k"), (Head(1, 3), "v")]
    assert order[-1] == (Head(0, 0), "v")
    into = sender_order([e for e in GRAPH if e.receiver == LOGITS], 2)
    assert into[0].sender == Mlp(1) and into[1].sender == Head(1, 3)
    assert into[-1].sender == EMBED


# -- on random:tiny, with the edge-ablation engine ---------------------------------------------

def _tiny_case(dead: Head, loud: Head, scale: float = 30.0):
    """random:tiny with `dead`'s W_O zeroed (it writes nothing: removing its edges changes
    nothing) and `loud`'s W_O scaled up (its direct effect on the logits dominates)."""
    import interp
    from interp.patching.runs import prepare_runs
    from interp.tasks.registry import get_task

    model = interp.load_model("random:tiny", device="cpu")
    d_head = model.cfg.d_head
    for head, factor in ((dead, 0.0), (loud, scale)):
        weight = model.blocks[head.layer].attn.original_component.c_proj.weight  # [in, out]
        weight.data[head.head * d_head:(head.head + 1) * d_head] *= factor
    assert float(model.W_O[dead.layer, dead.head].detach().abs().max()) == 0.0
    runs = prepare_runs(model, get_task("ioi").build(model, 8, 0))
    return model, runs


@pytest.fixture(scope="module")
def tiny_case():
    return _tiny_case(Head(0, 2), Head(1, 1))


def test_zero_threshold_on_tiny_removes_exactly_the_edges_that_change_nothing(tiny_case):
    """T=0 (up to float32 noise, ~1e-8 here): every edge out of the head that writes nothing
    goes, tested (it reaches the output), since its removal changes nothing; the loud head's
    direct edge and most others stay, and the circuit still scores as the full model."""
    from interp.acdc import acdc

    model, runs = tiny_case
    result = acdc(model, runs, 1e-6, metric="task", progress=False)
    assert not [e for e in result.edges if e.sender == Head(0, 2)]
    removed = {name for name, _, kept in result.trace if not kept}
    assert {str(e) for e in GRAPH if e.sender == Head(0, 2)} <= removed
    assert Edge(Head(1, 1), LOGITS) in result.edges
    assert len(result.edges) > len(GRAPH) // 2
    assert abs(result.current - result.full) <= 1e-6 * len(removed)


def test_threshold_keeps_the_head_that_writes_the_answer(tiny_case):
    """A threshold at 20% of the loud head's direct effect: its edge to the logits stays,
    nothing of the silent head stays; a huge threshold keeps nothing."""
    from interp.acdc import acdc
    from interp.edge_ablation import EdgeAblation

    model, runs = tiny_case
    ev = EdgeAblation(model, runs)
    full = ev.full()
    without = full.copy()
    without.keep[ev.graph.index(Edge(Head(1, 1), LOGITS))] = False
    f_full, f_without = ev.metrics([full, without]).mean(-1).tolist()
    effect = abs(f_full - f_without)
    result = acdc(model, runs, 0.2 * effect, metric="task", progress=False)
    assert Edge(Head(1, 1), LOGITS) in result.edges
    assert not [e for e in result.edges if Head(0, 2) in (e.sender, e.receiver)]
    assert acdc(model, runs, 1e6, metric="task", progress=False).edges == []


def test_kl_metric_is_zero_for_the_full_model_and_grows_when_edges_go(tiny_case):
    from interp.acdc import acdc

    model, runs = tiny_case
    result = acdc(model, runs, 1e6, metric="kl", progress=False)
    assert result.full == pytest.approx(0.0, abs=1e-6) and result.current > 1e-6
    assert result.edges == []


def test_acdc_circuit_file_round_trips_through_evaluate_circuit(tmp_path, capsys):
    """The acceptance command: ACDC on random:tiny writes an edge circuit.yaml whose
    edge-level evaluation reproduces ACDC's own F(C) to 1e-6 and its normalised faithfulness
    to 1e-5. (On 2 threads a run alone in its call uses both threads and one beside others
    uses one, so sums round differently, ~1e-7; the normalisation divides by F(M) - F(0).)"""
    import json

    from interp.circuits.format import load_circuit
    from interp.cli import main

    assert main(["discover", "--task", "ioi", "--method", "acdc", "--model", "random:tiny",
                 "--n-prompts", "8", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "random-tiny" / "discover-ioi-acdc"
    found = json.loads((folder / "summary.json").read_text())
    assert found["n_edges"] > 0 and found["threshold"] > 0 and found["n_forwards"] > 0
    assert found["circuit_file_exact"] is True
    spec = load_circuit(folder / "circuit.yaml")
    assert sorted(str(e) for e in spec.edge_list(EdgeGraph(2, 4, False))) == \
        sorted(found["edges"])
    assert "forward-equivalents" in capsys.readouterr().out
    assert main(["evaluate-circuit", "--task", "ioi", "--model", "random:tiny", "--n-prompts",
                 "8", "--circuit", str(folder / "circuit.yaml"), "--out", str(tmp_path)]) == 0
    evaluated = json.loads(next((tmp_path / "random-tiny").glob("evaluate-ioi-*/summary.json"))
                           .read_text())
    assert evaluated["level"] == "edges"
    faith = evaluated["faithfulness"]
    assert abs(faith["F_C"] - found["F_C"]) <= 1e-6
    assert abs(faith["normalised_faithfulness"] - found["normalised_faithfulness"]) <= 1e-5


def test_bad_acdc_options_fail_in_one_line(tmp_path, capsys):
    from interp.cli import main

    assert main(["discover", "--task", "ioi", "--model", "random:tiny", "--threshold", "0.1",
                 "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--method acdc" in err


def test_prescreen_tests_only_the_top_eap_edges(tiny_case):
    """--prescreen N: ACDC runs on the N top-|EAP| edges; the rest are ablated untested."""
    from interp.acdc import acdc, acdc_summary
    from interp.attribution import edge_attribution
    from interp.discover import RECEIVERS, eap_edges

    model, runs = tiny_case
    top = {e for e, _ in eap_edges(edge_attribution(model, runs.batch,
                                                    receivers=RECEIVERS))[:20]}
    result = acdc(model, runs, 1e-6, metric="task", progress=False, prescreen=20)
    assert set(result.edges) <= top and result.n_tested + result.n_skipped == 20
    assert result.n_edges_total == len(GRAPH)
    assert "APPROXIMATION" in acdc_summary(model, runs, result)["prescreen"]
