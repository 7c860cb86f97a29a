"""Evaluating an edge-level circuit hypothesis: faithfulness, completeness, minimality.

The node-level measures of `interp.circuit` (IOI paper, sec. 4), with exact edge ablation
(`interp.edge_ablation`) instead of node ablation: the circuit C is the file's kept edges
(`CircuitSpec.kept_edges`: its edges between nodes, plus the implicit ones of the embeddings
and MLPs); every other edge is ablated at its receiver.

- F(C): the metric with C's edges kept; F(M): the clean model (every edge kept);
  F(0): only the implicit edges kept (no head sends anything), the edge-level counterpart
  of the node-level "every head ablated".
- Completeness per group K: F(C \\ K) and F(M \\ K), K's nodes sending nothing.
- Minimality per file edge e: |F(C \\ e) - F(C)|, e's node pairs removed; one edge-ablated
  run per file edge, so it is skipped (with the reason recorded) for files of more than
  `MAX_MINIMALITY_EDGES` edges, such as the thousands `interp discover` writes.

Beside them, labelled, the node-level faithfulness of the file's groups (edges ignored).

Example:
    >>> spec = load_circuit("circuits/ioi_gpt2_small_paper.yaml", model=model)
    >>> result = evaluate_edges(model, runs, spec, kind="mean")
    >>> result["faithfulness"]["normalised_faithfulness"]
"""

from contextlib import nullcontext

from interp.circuit import (
    all_heads_ablated,
    faithfulness,
    full_circuit,
    normalised_faithfulness,
    read_share,
    without,
)
from interp.circuits.format import CircuitSpec, GroupEdge
from interp.edge_ablation import EdgeAblation, EdgeMask
from interp.nodes import Head, Mlp, Node
from interp.patching.runs import Runs

MAX_MINIMALITY_EDGES = 200
NODE_NOTE = ("the same file's groups evaluated as a node circuit (edges ignored), for "
             "comparison")


def without_senders(mask: EdgeMask, senders: list[int]) -> EdgeMask:
    """A copy where the given senders (indices) send nothing."""
    out = mask.copy()
    out.keep[:, senders] = False
    out.at = {key: value for key, value in out.at.items() if key[1] not in set(senders)}
    return out


def without_edges(ev: EdgeAblation, mask: EdgeMask, edges) -> EdgeMask:
    """A copy with the given edges (`interp.edges.Edge`) ablated at every position."""
    out = mask.copy()
    for edge in edges:
        r, s = ev.graph.index(edge)
        out.keep[r, s] = False
        out.at.pop((r, s), None)
    return out


def implicit_only(ev: EdgeAblation, spec: CircuitSpec) -> EdgeMask:
    """F(0)'s edge set: the embeddings and MLPs connected as the file leaves them implicit."""
    embed, mlps = spec.implicit()
    out = ev.empty()
    out.keep[:, 0] = embed
    if mlps:
        out.keep[:, [ev.graph.sender_index(Mlp(la)) for la in range(ev.graph.n_layers)]] = True
    return out


def edge_label(edge: GroupEdge) -> str:
    target = f"{edge.receiver}.{edge.input}" if edge.input else edge.receiver
    return f"{edge.sender} -> {target}"


def evaluate_edges(model, runs: Runs, spec: CircuitSpec, threshold: float = 0.01,
                   kind: str = "mean", seed: int = 0, progress: bool = False,
                   stage=None) -> dict:
    """Edge-level faithfulness, completeness per group and minimality per file edge, with
    every edge outside the circuit ablated the `kind` way ("mean", "zero", "resample").

    `stage(name)`: a context manager timing each part (e.g. `ExperimentRun.stage`); the
    circuit's own run is cached as a base that the other edge sets resume from.
    """
    stage = stage or (lambda name: nullcontext())
    with stage("edge_faithfulness"):
        ev = EdgeAblation(model, runs, kind, seed)
        graph = ev.graph
        kept = ev.mask(spec.kept_edges(graph))
        ev.add_base(kept)
        f_c = ev.bases[-1].metric.mean().item()
        f_empty = empty_metric(ev, spec, progress)
    explicit = spec.edge_list(graph)
    f_m = runs.clean_metric.mean().item()
    nodes = _nodes(spec, explicit)
    faith = {"F_C": f_c, "F_M": f_m, "faithfulness": f_c / f_m, "F_all_heads_ablated": f_empty,
             "normalised_faithfulness": normalised_faithfulness(f_c, f_m, f_empty),
             "n_edges": len(explicit), "n_kept_edges": int(kept.keep.sum()) + len(kept.at),
             "n_heads": sum(isinstance(n, Head) for n in nodes),
             "n_mlps": sum(isinstance(n, Mlp) for n in nodes)}
    with stage("edge_completeness"):
        complete = _completeness(ev, spec, kept, progress)
    with stage("edge_minimality"):
        minimal = _minimality(ev, spec, kept, f_c, f_m, threshold, progress)
    faith["forward_equivalents"] = ev.n_forwards
    with stage("node_level_faithfulness"):
        nodes_only = faithfulness(model, ev.runs, spec.circuit(), ev.nodes)
    return {"level": "edges", "faithfulness": faith, "completeness": complete,
            "node_level_faithfulness": {**nodes_only, "note": NODE_NOTE},
            "minimality": minimal}


def empty_metric(ev: EdgeAblation, spec: CircuitSpec, progress: bool = False) -> float:
    """F(0): with the embeddings and MLPs implicit it is the node level's every head
    ablated, MLPs kept (`all_heads_ablated`: the read positions only, as no head reads
    another position); otherwise `implicit_only`'s edge-ablated run."""
    if spec.implicit() == (True, True):
        empty = all_heads_ablated(ev.nodes)
        if empty is not None:
            return empty.mean().item()
    return ev.metrics([implicit_only(ev, spec)], progress).mean().item()


def _completeness(ev: EdgeAblation, spec: CircuitSpec, kept: EdgeMask,
                  progress: bool) -> dict:
    """Per group K: F(C \\ K) and F(M \\ K), K's nodes sending nothing."""
    nodes = {name: members for name, members in spec.group_nodes().items() if members}
    groups = {name: [ev.graph.sender_index(n) for n in members]
              for name, members in nodes.items()}
    c_minus = ev.metrics([without_senders(kept, senders) for senders in groups.values()],
                         progress).mean(-1).tolist()
    m_minus = dict(zip(groups, _model_minus(ev, nodes, groups, progress), strict=True))
    return {name: {"F_C_minus_K": c, "F_M_minus_K": m_minus[name],
                   "incompleteness": abs(c - m_minus[name])}
            for name, c in zip(groups, c_minus, strict=True)}


def _model_minus(ev: EdgeAblation, nodes: dict, groups: dict, progress: bool) -> list[float]:
    """F(M \\ K) per group. M minus a group of heads, every other edge kept, is the node
    circuit of every other head (`interp.circuit.full_circuit`), MLPs kept: `MeanAblation`
    runs it on the tokens up to the reads only; a group with an MLP goes to the edge run."""
    heads_only = [name for name in groups if all(isinstance(n, Head) for n in nodes[name])]
    full = full_circuit(ev.model)
    node_values = ev.nodes.metrics([without(full, nodes[name]) for name in heads_only],
                                   progress).mean(-1).tolist()
    others = [name for name in groups if name not in heads_only]
    edge_values = ev.metrics([without_senders(ev.full(), groups[name]) for name in others],
                             progress).mean(-1).tolist()
    values = {**dict(zip(heads_only, node_values, strict=True)),
              **dict(zip(others, edge_values, strict=True))}
    return [values[name] for name in groups]


def _minimality(ev: EdgeAblation, spec: CircuitSpec, kept: EdgeMask, f_c: float, f_m: float,
                threshold: float, progress: bool) -> dict:
    """Per file edge e: |F(C \\ e) - F(C)|, e's node pairs removed (skipped, with the
    reason, above `MAX_MINIMALITY_EDGES` file edges)."""
    if len(spec.edges) > MAX_MINIMALITY_EDGES:
        return {"skipped": f"{len(spec.edges)} file edges > {MAX_MINIMALITY_EDGES}: one "
                           "edge-ablated run per edge; evaluate a smaller hypothesis"}
    per_edge = {edge_label(e): list(_one(spec, e).edge_list(ev.graph)) for e in spec.edges}
    knocked = ev.metrics([without_edges(ev, kept, edges) for edges in per_edge.values()],
                         progress).mean(-1).tolist()
    per = {label: {"contribution": abs(v - f_c), "K": "{}",
                   "relative_to_F_M": abs(v - f_c) / abs(f_m),
                   "minimal": abs(v - f_c) >= threshold * abs(f_m)}
           for label, v in zip(per_edge, knocked, strict=True)}
    return {"threshold": threshold, "per_node": per,
            "all_minimal": all(v["minimal"] for v in per.values())}


def _one(spec: CircuitSpec, edge: GroupEdge) -> CircuitSpec:
    return CircuitSpec(spec.name, spec.groups, [edge])


def _nodes(spec: CircuitSpec, explicit) -> set[Node]:
    nodes = set(spec.circuit())
    nodes |= {n for e in explicit for n in (e.sender, e.receiver) if isinstance(n, (Head, Mlp))}
    return nodes


def minimum_forwards(result: dict, spec: CircuitSpec, batch, n_layers: int
                     ) -> dict[str, float]:
    """The least forward-equivalents each stage of `interp evaluate-circuit` needs (one
    forward of its padded prompt batch = 1; `read_share`: the tokens up to the reads, all a
    run that changes from the first token on must compute):

    - runs: the clean and corrupted cached runs (2);
    - the circuit C, which shares no layer with the clean run (`read_share`), and F(0):
      with the embeddings and MLPs implicit every head is its mean, so no position reads
      another and only the read positions run (1 / prompt length); otherwise F(0) resumes
      from C (not counted);
    - completeness: for each group K, M \\ K and C \\ K from K's first layer on, tokens up
      to the reads (the layers before are the clean run's, or C's);
    - minimality (when run): each C \\ e from its receiver's layer on, resumed from C
      (an edge into the logits needs no block);
    - node level: the groups' node circuit and its F(0), as above (the edge level's, when
      the embeddings and MLPs are implicit: `all_heads_ablated` keeps it).

    Before, the empty circuit counted a full forward and M \\ K nothing: the first is not
    needed (`all_heads_ablated`), the second is (the layers after K's change everywhere);
    C \\ K and C \\ e counted nothing, though they change from K's or e's layer on too.
    """
    share, one_token = read_share(batch), 1.0 / batch.clean_tokens.shape[1]
    removed = share * sum((n_layers - min(n.layer for n in nodes)) / n_layers
                          for nodes in spec.group_nodes().values() if nodes)
    circuit = share + one_token
    if result["level"] != "edges":
        return {"dataset": 0.0, "runs": 2.0, "evaluate": circuit + removed}
    implicit = spec.implicit() == (True, True)  # F(0) once, at edge level, shared
    minimal = 0.0 if "skipped" in result["minimality"] else share * sum(
        (n_layers - _receiver_layer(spec, e, n_layers)) / n_layers for e in spec.edges)
    return {"dataset": 0.0, "runs": 2.0,
            "edge_faithfulness": share + (one_token if implicit else 0.0),
            "edge_completeness": 2 * removed, "edge_minimality": minimal,
            "node_level_faithfulness": share + (0.0 if implicit else one_token)}


def _receiver_layer(spec: CircuitSpec, edge: GroupEdge, n_layers: int) -> int:
    """The first layer a file edge's removal changes: its earliest receiver's (n_layers for
    the logits)."""
    return min((node.layer if isinstance(node, (Head, Mlp)) else n_layers)
               for node, _ in spec.endpoints(edge.receiver))
