"""ACDC: the batched walk against a plain one-edge-at-a-time walk, its rules on hand-built
scorers, and on random:tiny with the edge-ablation engine (KL and task metric)."""

import math
import random

import pytest

from interp.acdc import acdc_walk, receiver_key, receiver_order, sender_order
from interp.discover import edge_graph
from interp.edges import EMBED, LOGITS, Edge
from interp.errors import UserValueError
from interp.nodes import Head, Mlp

GRAPH = edge_graph(2, 4)  # random:tiny's shape


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


def _scorer(metric, calls):
    def score(kept, removals, start):
        calls.append(len(removals))
        return [metric(set(kept).difference(r)) for r in removals]
    return score


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
    calls: list[int] = []
    result = acdc_walk(GRAPH, _scorer(metric, calls), 2, threshold, "task", progress=False,
                       batch=batch)
    kept, current = _naive_walk(GRAPH, metric, 2, threshold)
    assert result.edges == kept
    assert result.current == pytest.approx(current)
    assert result.n_forwards == len(calls) - 1  # the first call scores the full graph
    assert result.n_tested + result.n_skipped + len(result.edges) >= len(GRAPH) - 1


def test_zero_threshold_keeps_exactly_the_edges_that_matter():
    """Additive metric: at T=0 an edge is kept iff its weight is non-zero; the edges into a
    node left with no outgoing edge are removed without a test."""
    useful = {Edge(Head(1, 2), LOGITS), Edge(Head(0, 1), Head(1, 2), "v"),
              Edge(EMBED, Head(0, 1), "q"), Edge(Mlp(0), LOGITS)}

    def metric(kept):
        return sum(1.0 for e in kept if e in useful)

    calls: list[int] = []
    result = acdc_walk(GRAPH, _scorer(metric, calls), 2, 0.0, "task", progress=False)
    assert set(result.edges) == useful
    live = {Head(1, 2), Head(0, 1), Mlp(0), LOGITS}  # nodes with a kept outgoing edge
    dead_inputs = [e for e in GRAPH if e.receiver not in live]
    assert result.n_skipped == len(dead_inputs)
    assert result.n_tested == len(GRAPH) - len(dead_inputs)
    assert result.rows >= result.n_tested and result.n_forwards == len(calls) - 1


def test_huge_threshold_keeps_nothing_and_a_negative_one_is_refused():
    metric = _interacting_metric(0)
    result = acdc_walk(GRAPH, _scorer(metric, []), 2, 1e9, "task", progress=False)
    assert result.edges == []
    with pytest.raises(UserValueError, match="threshold"):
        acdc_walk(GRAPH, _scorer(metric, []), 2, -1.0, "task", progress=False)


def test_walk_order_is_reverse_topological():
    order = receiver_order(GRAPH, 2)
    assert order[0] == (LOGITS, None) and order[1] == (Mlp(1), None)
    assert order[2:5] == [(Head(1, 3), "v"), (Head(1, 3), "k"), (Head(1, 3), "q")]
    assert order[-1] == (Head(0, 0), "q")
    into = sender_order([e for e in GRAPH if e.receiver == LOGITS], 2)
    assert into[0].sender == Mlp(1) and into[1].sender == Head(1, 3)
    assert into[-1].sender == EMBED
