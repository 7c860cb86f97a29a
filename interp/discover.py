"""Automated circuit discovery from attribution-patching edge scores (EAP / EAP-IG).

1. Score every edge of the head graph with `edge_attribution` (senders: the input embeddings
   and every head's output; receivers: every head's q, k, v input and the logits; direction
   "noise"). MLPs are not nodes here: they stay in the model unablated (the convention of
   `interp.circuit`), so paths through them count as part of the residual stream.
2. For a series of sizes k, keep the k edges with the largest |score| and take the NODES on
   them (the sender heads and the receiver heads; on GQA models a kept k/v edge enters a KV
   head shared by several query heads, and keeps all of them). Evaluating edge-level circuits
   exactly would need path-level ablation; we evaluate the node set the kept edges induce,
   with every other head mean-ablated over the corrupted prompts (`interp.circuit`).
3. Faithfulness of each circuit, normalised MIB-style: f(C) = (F(C) - F(0)) / (F(M) - F(0)),
   F(0) the metric with every head ablated, F(M) the full model. Over the edge fraction
   x = k / n_edges in [0, 1] (with the points (0, 0) and (1, 1), which hold by definition),
   CPR = area under f and CMD = area under |1 - f| (trapezoids), the MIB circuit-track
   metrics (Mueller et al. 2025): higher CPR and lower CMD are better.
4. The best circuit is the smallest evaluated one with f >= `target` (else the most
   faithful); it is written as a circuit hypothesis file (groups = layers).

Example:
    >>> result = discover(model, batch, method="attribution")
    >>> result.cpr, result.cmd, result.best.nodes
"""

from dataclasses import dataclass, field

from interp.attribution import EdgeScores, edge_attribution
from interp.circuit import normalised_faithfulness
from interp.circuits.format import CircuitSpec, Group, GroupEdge
from interp.mean_ablation import MeanAblation
from interp.nodes import Head, Node, parse_node
from interp.patching.runs import prepare_runs

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # as in MIB
SMALL = (1, 2, 5, 10, 20, 50)  # absolute counts below MIB's 0.1%, where small circuits live
RECEIVERS = ("q", "k", "v", "logits")


@dataclass
class CurvePoint:
    n_edges: int
    nodes: list[Node]
    metric: float  # F(C), mean over prompts, raw units
    normalised: float  # (F(C) - F(0)) / (F(M) - F(0))
    edges: list[tuple[str, str, float]] = field(default_factory=list, repr=False)

    def row(self) -> dict:
        return {"n_edges": self.n_edges, "n_nodes": len(self.nodes), "metric": self.metric,
                "normalised_faithfulness": self.normalised}


@dataclass
class Discovery:
    points: list[CurvePoint]
    n_edges_total: int
    f_model: float
    f_empty: float
    cpr: float
    cmd: float
    best: CurvePoint
    edge_scores: EdgeScores
    ranked: list[tuple[str, str, float]] = field(default_factory=list, repr=False)


def receiver_heads(receiver: str, kv_groups: int) -> list[Head]:
    """Heads a receiver name belongs to: "L3H2.q" -> [L3H2]; GQA "L3KV1.k" -> its query heads."""
    if receiver == "LOGITS":
        return []
    name = receiver.split(".")[0]
    if "KV" in name:
        layer, group = name[1:].split("KV")
        return [Head(int(layer), int(group) * kv_groups + i) for i in range(kv_groups)]
    return [parse_node(name)]


def edge_nodes(edges: list[tuple[str, str, float]], kv_groups: int) -> list[Node]:
    """The heads on a list of (sender, receiver, score) edges, sorted."""
    nodes: set[Node] = set()
    for sender, receiver, _ in edges:
        if sender != "INPUT":
            nodes.add(parse_node(sender))
        nodes.update(receiver_heads(receiver, kv_groups))
    return sorted(nodes)


def sizes(n_edges: int, fractions=FRACTIONS, small=SMALL) -> list[int]:
    """Edge counts for the curve: each fraction of n_edges (rounded up) and the small absolute
    counts below the smallest fraction, deduplicated."""
    counts = {max(1, min(n_edges, int(-(-f * n_edges // 1)))) for f in fractions}
    return sorted(counts | {k for k in small if k < min(counts)})


def areas(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(CPR, CMD) by trapezoids over (edge fraction, normalised faithfulness) points."""
    pts = sorted({**{0.0: 0.0, 1.0: 1.0}, **dict(points)}.items())
    cpr = cmd = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        cpr += (x1 - x0) * (y0 + y1) / 2
        cmd += (x1 - x0) * (abs(1 - y0) + abs(1 - y1)) / 2
    return cpr, cmd


def discover(model, batch, method: str = "attribution", steps: int = 5, target: float = 0.8,
             fractions=FRACTIONS, progress: bool = True) -> Discovery:
    """Score edges, evaluate circuits of several sizes, pick the best (module docstring)."""
    runs = prepare_runs(model, batch)  # checks the batch against the model first
    f_model = runs.clean_metric.mean().item()
    ev = MeanAblation(model, runs)
    [f_empty] = ev.metrics([{}]).mean(-1).tolist()
    normalised_faithfulness(f_model, f_model, f_empty)  # refuses F(M) = F(0) before scoring
    scores = edge_attribution(model, batch, receivers=RECEIVERS, method=method, steps=steps)
    ranked = [e for e in scores.edges() if not e[0].startswith("MLP")]  # MLPs are never ablated
    ks = sizes(len(ranked), fractions)
    node_sets = [edge_nodes(ranked[:k], scores.kv_groups) for k in ks]
    values = ev.metrics([{n: None for n in nodes} for nodes in node_sets], progress).mean(-1)
    points = [CurvePoint(k, nodes, value, normalised_faithfulness(value, f_model, f_empty),
                         ranked[:k])
              for k, nodes, value in zip(ks, node_sets, values.tolist(), strict=True)]
    cpr, cmd = areas([(p.n_edges / len(ranked), p.normalised) for p in points])
    good = [p for p in points if p.normalised >= target]
    best = good[0] if good else max(points, key=lambda p: p.normalised)
    return Discovery(points, len(ranked), f_model, f_empty, cpr, cmd, best, scores, ranked)


def circuit_spec(point: CurvePoint, kv_groups: int, name: str, model: str, task: str,
                 description: str = "") -> CircuitSpec:
    """A circuit file for a discovered circuit: one group per layer, group-level edges."""
    layer_of = {}
    groups: dict[str, Group] = {}
    for node in point.nodes:
        key = f"layer{node.layer}"
        groups.setdefault(key, Group(key, []))
        groups[key].nodes.append(node)
        layer_of[node] = key
    edges: dict[tuple, GroupEdge] = {}
    for sender, receiver, _ in point.edges:
        if sender == "INPUT":
            continue
        src = layer_of[parse_node(sender)]
        if receiver == "LOGITS":
            edges.setdefault((src, "logits", None), GroupEdge(src, "logits"))
            continue
        dst = layer_of[receiver_heads(receiver, kv_groups)[0]]
        kind = receiver.split(".")[1]
        edges.setdefault((src, dst, kind), GroupEdge(src, dst, kind))
    return CircuitSpec(name, groups, list(edges.values()), "mean", description, model, task)
