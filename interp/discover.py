"""Automated circuit discovery at edge level: EAP / EAP-IG rankings, evaluated by edge ablation.

1. Score every edge of the graph with `edge_attribution` (one backward; senders: the
   embeddings, every head and every MLP; receivers: every head's q, k, v input, every MLP's
   input and the logits; direction "noise"). On GQA models a k/v score belongs to a KV head
   shared by `kv_groups` query heads; its edges into those query heads get an equal share
   (`eap_edges`).
2. For a series of sizes k, keep the k edges with the largest |score| and evaluate the
   circuit by EDGE ablation (`interp.edge_ablation`): every receiver input sees the senders
   connected to it by a kept edge, and the ablated (mean over the corrupted prompts of the
   group) output of every other sender. All k are batched and resumed from shared base runs.
   With `node_level=True` the nodes the kept edges touch are also evaluated by node ablation
   (`interp.mean_ablation`, every other head and MLP ablated), reported beside it, labelled.
3. Faithfulness of each circuit, normalised MIB-style: f(C) = (F(C) - F(0)) / (F(M) - F(0)),
   F(0) the metric with no edge kept (every sender ablated), F(M) the full model. Over the
   edge fraction x = k / n_edges in [0, 1] (with the points (0, 0) and (1, 1), which hold by
   definition), CPR = area under f and CMD = area under |1 - f| (trapezoids), the MIB
   circuit-track metrics (Mueller et al. 2025): higher CPR and lower CMD are better.
4. The best circuit is the smallest evaluated one with f >= `target` (else the most
   faithful); `circuit_spec` writes it as an edge-level circuit file.

Example:
    >>> result = discover(model, batch, method="attribution")
    >>> result.cpr, result.cmd, len(result.best.edges)
"""

import time
from dataclasses import dataclass, field
from functools import cached_property

import torch

from interp.attribution import EdgeScores, edge_attribution
from interp.circuit import normalised_faithfulness
from interp.edges import EMBED, LOGITS, Edge
from interp.nodes import Head, Mlp, Node, parse_node

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # as in MIB
SMALL = (1, 2, 5, 10, 20, 50)  # absolute counts below MIB's 0.1%, where small circuits live
RECEIVERS = ("q", "k", "v", "mlp", "logits")
EAP_FORWARDS = {"attribution": 3}  # clean forward and backward (x2); corrupted run cached


@dataclass
class CurvePoint:
    n_edges: int
    edges: list[Edge] = field(repr=False)
    metric: float  # F(C), mean over prompts, raw units, edge ablation
    normalised: float  # (F(C) - F(0)) / (F(M) - F(0))
    node_metric: float | None = None  # the induced nodes, node ablation (node_level=True)
    node_normalised: float | None = None

    @cached_property
    def nodes(self) -> list[Node]:
        """The heads and MLPs its edges touch (`edge_nodes`)."""
        return edge_nodes(self.edges)

    def row(self) -> dict:
        out = {"n_edges": self.n_edges, "n_nodes": len(self.nodes), "metric": self.metric,
               "normalised_faithfulness": self.normalised}
        if self.node_metric is not None:
            out["induced_nodes"] = {"metric": self.node_metric,
                                    "normalised_faithfulness": self.node_normalised}
        return out


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
    ranked: list[tuple[Edge, float]] = field(default_factory=list, repr=False)
    stages: dict = field(default_factory=dict)  # name -> {"seconds", "forward_equivalents"}
    node_empty: float | None = None  # F(0) of node ablation (every head and MLP ablated)


def receiver_heads(receiver: str, kv_groups: int) -> list[Head]:
    """Heads a receiver name belongs to: "L3H2.q" -> [L3H2]; GQA "L3KV1.k" -> its query heads."""
    if receiver in ("LOGITS", LOGITS) or receiver.startswith("MLP"):
        return []
    name = receiver.split(".")[0]
    if "KV" in name:
        layer, group = name[1:].split("KV")
        return [Head(int(layer), int(group) * kv_groups + i) for i in range(kv_groups)]
    return [parse_node(name)]


def _sender(name: str):
    return EMBED if name == "INPUT" else parse_node(name)


def _receivers(name: str, kv_groups: int) -> list[tuple]:
    """(receiver, input) pairs of an `EdgeScores` receiver name."""
    if name == "LOGITS":
        return [(LOGITS, None)]
    if name.startswith("MLP"):
        return [(parse_node(name), None)]
    kind = name.split(".")[1]
    return [(head, kind) for head in receiver_heads(name, kv_groups)]


def eap_edges(scores: EdgeScores) -> list[tuple[Edge, float]]:
    """Every edge of the graph with its EAP score, by |score| descending. A GQA k/v score
    belongs to a KV head: each of its query heads' edges gets an equal share (the shares
    sum to it), and they stay adjacent in the ranking."""
    senders = [_sender(name) for name in scores.senders]  # names parsed once
    receivers = [_receivers(name, scores.kv_groups) for name in scores.receivers]
    (s, r), values = scores.ranked()  # by |score|, then (sender, receiver)
    shares = values / torch.tensor([len(t) for t in receivers], dtype=values.dtype)[r]
    order = torch.argsort(-shares.abs(), stable=True)  # by |share|, then |score|, ...
    return [(Edge(senders[u], head, kind), share)
            for u, v, share in zip(s[order].tolist(), r[order].tolist(),
                                   shares[order].tolist(), strict=True)
            for head, kind in receivers[v]]


def edge_nodes(edges, kv_groups: int = 1) -> list[Node]:
    """The heads and MLPs on a list of `Edge`s (or of EdgeScores (sender, receiver, score)
    name triples, whose GQA k/v receivers belong to `kv_groups` query heads), sorted heads
    first."""
    nodes: set[Node] = set()
    for edge in edges:
        if isinstance(edge, Edge):
            nodes.update(n for n in (edge.sender, edge.receiver) if isinstance(n, (Head, Mlp)))
            continue
        sender, receiver = edge[0], edge[1]
        nodes.update([] if sender == "INPUT" else [parse_node(sender)])
        nodes.update(r for r, _ in _receivers(receiver, kv_groups) if r != LOGITS)
    return sorted(nodes, key=lambda n: (isinstance(n, Mlp), n.layer, getattr(n, "head", 0)))


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


class _Stages:
    """Wall time and forward-equivalents per stage (one forward of the prompt set = 1), and
    the least forward work the stage's definition needs (default: what it did)."""

    def __init__(self):
        self.record: dict[str, dict] = {}

    def __call__(self, name: str, forwards: float, started: float,
                 minimum: float | None = None) -> None:
        least = forwards if minimum is None else minimum
        self.record[name] = {"seconds": round(time.perf_counter() - started, 3),
                             "forward_equivalents": round(forwards, 3),
                             "minimum_forward_equivalents": round(least, 3)}


def discover(model, batch, method: str = "attribution", steps: int = 5, target: float = 0.8,
             fractions=FRACTIONS, progress: bool = True, node_level: bool = False,
             runs=None) -> Discovery:
    """Score edges, evaluate circuits of several sizes by edge ablation, pick the best
    (module docstring)."""
    from interp.edge_ablation import EdgeAblation, edge_runs

    stages, t = _Stages(), time.perf_counter()
    runs = runs or edge_runs(model, batch)  # checks the batch against the model first
    stages("clean and corrupted runs", 2, t)
    t = time.perf_counter()
    f_model = runs.clean_metric.mean().item()
    ev = EdgeAblation(model, runs)
    [f_empty] = ev.metrics([set()]).mean(-1).tolist()
    normalised_faithfulness(f_model, f_model, f_empty)  # refuses F(M) = F(0) before scoring
    stages("F(0): every sender ablated", 1, t)
    t = time.perf_counter()
    scores = edge_attribution(model, batch, receivers=RECEIVERS, method=method, steps=steps,
                              runs=runs)
    ranked = eap_edges(scores)
    # the endpoint runs' sender outputs come from the cached runs: EAP is one forward and
    # backward of the clean run, EAP-IG one per step (the head grid comes with them)
    work = EAP_FORWARDS.get(method, 3 * steps)
    stages("edge scores", work, t)
    t = time.perf_counter()
    ks = sizes(len(ranked), fractions)
    edge_sets = [[e for e, _ in ranked[:k]] for k in ks]
    before = ev.n_forwards
    values = ev.metrics(edge_sets, progress).mean(-1).tolist()
    # least = done: each circuit resumes at its first layer with an ablated edge, and
    # computes every token (a mean-ablated sender changes every position)
    stages("faithfulness curve (edge ablation)", ev.n_forwards - before, t)
    points = [CurvePoint(k, edges, value, normalised_faithfulness(value, f_model, f_empty))
              for k, edges, value in zip(ks, edge_sets, values, strict=True)]
    node_empty = _node_level(model, runs, points, f_model, stages, progress) if node_level \
        else None
    cpr, cmd = areas([(p.n_edges / len(ranked), p.normalised) for p in points])
    good = [p for p in points if p.normalised >= target]
    best = good[0] if good else max(points, key=lambda p: p.normalised)
    return Discovery(points, len(ranked), f_model, f_empty, cpr, cmd, best, scores, ranked,
                     stages.record, node_empty)


def _node_level(model, runs, points, f_model, stages, progress) -> float:
    """Fill each point's induced-node evaluation (node ablation); returns its F(0)."""
    from interp.mean_ablation import MeanAblation

    t = time.perf_counter()
    ev = MeanAblation(model, runs)
    empty = {Mlp(la): [] for la in range(model.cfg.n_layers)}  # every head and MLP ablated
    circuits = [empty] + [{n: None for n in p.nodes} | {m: [] for m in empty if m not in
                                                       p.nodes} for p in points]
    values = ev.metrics(circuits, progress).mean(-1).tolist()
    f_empty = values[0]
    for point, value in zip(points, values[1:], strict=True):
        point.node_metric = value
        point.node_normalised = normalised_faithfulness(value, f_model, f_empty)
    stages("induced nodes (node ablation)", len(circuits), t)
    return f_empty


def edge_rows(ranked: list[tuple[Edge, float]], n: int = 30) -> list[dict]:
    """The first n (edge, score) pairs as JSON rows."""
    return [{"edge": str(e), "score": s} for e, s in ranked[:n]]


def discover_summary(result: Discovery, target: float) -> dict:
    """The summary.json fields of an EAP discovery."""
    out = {
        "metric_full_model": result.f_model, "metric_no_edges": result.f_empty,
        "n_edges_total": result.n_edges_total,
        "evaluation": "edge ablation (each receiver sees the mean-ablated output of every "
                      "sender not connected to it by a kept edge)",
        "curve": [p.row() for p in result.points],
        "CPR": result.cpr, "CMD": result.cmd,
        "best": {**result.best.row(), "nodes": [str(n) for n in result.best.nodes],
                 "target": target},
        "top_edges": edge_rows(result.ranked),
        "stages": result.stages,
        "forward_equivalents": round(sum(s["forward_equivalents"]
                                         for s in result.stages.values()), 3),
        "notes": "top-|EAP score| edges; F(0) = no edge kept (every sender, the embeddings "
                 "included, mean-ablated over the corrupted prompts); CPR/CMD over the edge "
                 "fraction (MIB)",
    }
    if result.node_empty is not None:
        out["induced_nodes"] = {
            "metric_all_nodes_ablated": result.node_empty,
            "notes": "node-level evaluation of the nodes the kept edges touch (every other "
                     "head and MLP mean-ablated), shown beside the edge-level one"}
    return out


def discover_lines(result: Discovery, label: str) -> list[str]:
    """The printed report of an EAP discovery."""
    nodes = result.node_empty is not None
    lines = [f"discover {label}: {result.n_edges_total} edges, F(model)={result.f_model:.4f}, "
             f"F(no edges)={result.f_empty:.4f}",
             "  edges  nodes  faithfulness (edge ablation)" + ("  [induced nodes, node "
                                                               "ablation]" if nodes else "")]
    for p in result.points:
        extra = f"  [{p.node_normalised:.3f}]" if nodes else ""
        lines.append(f"  {p.n_edges:>7} {len(p.nodes):>4}  {p.normalised:.3f}{extra}")
    fe = sum(s["forward_equivalents"] for s in result.stages.values())
    lines.append(f"CPR={result.cpr:.3f} CMD={result.cmd:.3f}; best: {result.best.n_edges} "
                 f"edges, {len(result.best.nodes)} nodes, faithfulness "
                 f"{result.best.normalised:.3f}; {fe:.1f} forward-equivalents")
    return lines


def edge_circuit(edges: list[Edge], name: str, model: str, task: str,
                 description: str = ""):
    """A circuit file for a discovered edge set: one group per layer (labels for the
    completeness test) and every edge node to node (`{from: L20H0, to: L23H0, input: q}`).
    The embeddings and MLPs are nodes of the graph here, so their edges are listed too."""
    from interp.circuits.format import CircuitSpec, Group, GroupEdge

    groups: dict[str, Group] = {}
    for node in edge_nodes(edges):
        key = f"layer{node.layer}"
        groups.setdefault(key, Group(key, []))
        groups[key].nodes.append(node)
    listed = [GroupEdge(str(e.sender), str(e.receiver), e.input) for e in edges]
    return CircuitSpec(name, dict(sorted(groups.items(), key=lambda kv: int(kv[0][5:]))),
                       listed, "mean", description, model, task)
