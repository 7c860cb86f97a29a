"""ACDC: automatic circuit discovery by greedy edge pruning (Conmy et al. 2023).

Start from the full edge graph (`interp.edges.EdgeGraph`: embeddings, heads and MLPs as
senders; q/k/v of every head, every MLP input and the logits as receivers). Walk the
receivers from the logits backwards, in reverse topological order. For each receiver, try
removing each incoming edge that is still kept: the edge-ablated run (`interp.edge_ablation`,
the sender's output replaced by its ablated value in that receiver's input only) is scored by
the ACDC metric; when the metric moves by at most `threshold` from its current value, the
removal is accepted (and the current value becomes the new one), otherwise the edge is
restored. A receiver whose node has no kept outgoing edge left can no longer reach the output:
its incoming edges are removed without a test ("skipped").

Metric (`metric=`): "kl" (default), the mean over prompts of KL(clean || circuit) of the
next-token distribution at the task's read position; or "task", the mean task metric (e.g.
the logit difference). The accept rule is |m_new - m_current| <= threshold for both (ACDC's
`abs_value_threshold` variant, as the issue states it: an edge is kept only if removing it
moves the metric by more than T).

Order (ACDC's result depends on it): receivers are the logits, then layer by layer from the
last to the first: the layer's MLP (it reads after the heads in a sequential block), then its
heads from the highest index down, each head's inputs in the order q, k, v. Within a
receiver, senders are tried from the latest to the earliest (MLP, then heads from the highest
index down, of the latest layer first; the embeddings last) -- ACDC's reverse topological
order.

Cost. Removing an edge into a receiver of layer L leaves everything before layer L unchanged,
and in this walk every earlier decision concerns receivers at layer >= L, so the runs are
resumed from the clean residual stream at layer L. The accept rule is sequential, but it is
evaluated in batches without changing its result: the candidates of a receiver are scored as
cumulative removals (current - {e1}, current - {e1, e2}, ...) in one batched forward,
speculating that every removal is accepted (most are); the walk then reads the values in
order, and at the first rejected edge e_j the rest of the batch is discarded and the next
batch starts from current - {e1..e_(j-1)}. The batch length adapts (halved after a rejection,
doubled after a batch without one). `n_forwards` counts batched forward calls,
`forward_equivalents` the work: a row resumed at layer L over the prompt set costs
(n_layers - L) / n_layers of one full forward of the prompt set.

Example:
    >>> result = acdc(model, runs, threshold=0.01)
    >>> len(result.edges), result.n_forwards, result.forward_equivalents
"""

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.edge_ablation import EdgeMask
from interp.edges import EMBED, LOGITS, Edge
from interp.errors import UserValueError
from interp.forward import unembed
from interp.metrics import logits_at
from interp.nodes import Head, Mlp

METRICS = ("kl", "task")
AUTO_FRACTION = 0.01  # the default threshold, as a fraction of the metric's range
INPUT_ORDER = {"q": 0, "k": 1, "v": 2, None: 0}



class Scorer(Protocol):
    """The ACDC metric of the walk's current edge set minus each list of `removals` (runs
    resumed at layer `start`), and `remove` to commit a removal to the current set."""

    def score(self, removals: Sequence[Sequence[Edge]], start: int) -> list[float]: ...

    def remove(self, edge: Edge) -> None: ...


class SetScorer:
    """A `Scorer` from a function of the kept edge set (tests, and any non-engine metric)."""

    def __init__(self, edges: Sequence[Edge], metric: Callable[[set], float]):
        self.kept, self.metric, self.calls = set(edges), metric, 0

    def score(self, removals, start: int) -> list[float]:
        self.calls += 1
        return [self.metric(self.kept.difference(r)) for r in removals]

    def remove(self, edge: Edge) -> None:
        self.kept.discard(edge)


class EngineScorer:
    """A `Scorer` on the edge-ablation engine: the current set is an `EdgeMask`, each
    candidate a copy of it with the removed edges ablated."""

    def __init__(self, engine, edges: Sequence[Edge] | None = None):
        self.engine = engine
        self.mask = engine.full() if edges is None else engine.mask(edges)

    def score(self, removals, start: int) -> list[float]:
        masks = []
        for removal in removals:
            mask = EdgeMask(self.mask.keep.clone())
            for edge in removal:
                mask.keep[self.engine.graph.index(edge)] = False
            masks.append(mask)
        return self.engine.metrics(masks).mean(-1).tolist()

    def remove(self, edge: Edge) -> None:
        self.mask.keep[self.engine.graph.index(edge)] = False


@dataclass
class KLToClean:
    """KL(clean || x) of the next-token distribution, per prompt, as a task `Metric`.

    `clean_logprobs` `[batch, vocab]`: log-softmax of the clean logits at the read positions.
    """

    clean_logprobs: Float[Tensor, "batch vocab"]

    def __call__(self, logits: Float[Tensor, "... batch vocab"]) -> Float[Tensor, "... batch"]:
        logp = logits.float().log_softmax(-1)
        p = self.clean_logprobs.exp()
        return (p * (self.clean_logprobs - logp)).sum(-1)

    def from_resid(self, model, resid: Float[Tensor, "... batch d_model"]) -> Tensor:
        return self(unembed(model, resid))

    def subset(self, index) -> "KLToClean":
        return KLToClean(self.clean_logprobs[index])


def kl_runs(model, runs):
    """`runs` whose task metric is KL(clean || x) at the read positions (a copy)."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    read = runs.batch.read_positions
    with torch.inference_mode():
        clean = unembed(model, logits_at(runs.clean_cache[last], read)).float().log_softmax(-1)
        corrupted = unembed(model, logits_at(runs.corrupted_cache[last], read))
    metric = KLToClean(clean)
    batch = replace(runs.batch, metric=metric)
    return replace(runs, batch=batch, clean_metric=metric(clean),
                   corrupted_metric=metric(corrupted))


def receiver_key(edge: Edge) -> tuple:
    """The (receiver, input) an edge enters."""
    return (edge.receiver, edge.input)


def layer_of(node, n_layers: int) -> int:
    """The layer a sender or receiver sits in (EMBED: -1, LOGITS: n_layers)."""
    if node == EMBED:
        return -1
    if node == LOGITS:
        return n_layers
    return node.layer


def _topo(node, n_layers: int) -> tuple:
    """Topological position of a node: embeddings, then per layer heads then the MLP."""
    if isinstance(node, Head):
        return (node.layer, 0, node.head)
    if isinstance(node, Mlp):
        return (node.layer, 1, 0)
    return (layer_of(node, n_layers), 0, 0)


def receiver_order(edges: Sequence[Edge], n_layers: int) -> list[tuple]:
    """Receivers (receiver, input) in ACDC's walk order (module docstring)."""
    keys = {receiver_key(e) for e in edges}
    return sorted(keys, key=lambda k: (_topo(k[0], n_layers), -INPUT_ORDER[k[1]]),
                  reverse=True)


def sender_order(edges: Sequence[Edge], n_layers: int) -> list[Edge]:
    """Edges into one receiver, latest sender first."""
    return sorted(edges, key=lambda e: _topo(e.sender, n_layers), reverse=True)


@dataclass
class AcdcResult:
    """What ACDC kept and what it cost.

    Attributes:
        edges: the kept edges, in graph order.
        n_edges_total: edges of the full graph.
        metric: "kl" or "task"; `current`: its value for the kept circuit;
            `full`: its value for the edge set the walk starts from: the full model (KL: 0),
            or, with a prescreen, the prescreened edges.
        n_tested: edges tried; `n_skipped`: edges removed untested (receiver unreachable).
        n_forwards: batched forward calls; `forward_equivalents`: their work in full
            forwards of the prompt set (module docstring); `rows`: candidate runs evaluated.
    """

    edges: list[Edge]
    n_edges_total: int
    threshold: float
    metric: str
    current: float
    full: float
    n_tested: int = 0
    n_skipped: int = 0
    n_forwards: int = 0
    forward_equivalents: float = 0.0
    rows: int = 0
    prescreen: int | None = None  # ACDC ran on the top-|EAP| edges only (approximation)
    trace: list[tuple[str, float, bool]] = field(default_factory=list, repr=False)


class _Walk:
    """The mutable state of one ACDC walk."""

    def __init__(self, edges: Sequence[Edge], score: Scorer, n_layers: int, threshold: float):
        self.kept = set(edges)
        self.scorer, self.n_layers, self.threshold = score, n_layers, threshold
        self.out_degree = Counter(e.sender for e in edges)
        self.into: dict[tuple, list[Edge]] = {}
        for e in edges:
            self.into.setdefault(receiver_key(e), []).append(e)
        [self.current] = score.score([[]], n_layers)
        self.full = self.current
        self.stats = Counter()
        self.trace: list[tuple[str, float, bool]] = []

    def remove(self, edge: Edge) -> None:
        self.kept.discard(edge)
        self.scorer.remove(edge)
        self.out_degree[edge.sender] -= 1

    def reachable(self, receiver) -> bool:
        return receiver == LOGITS or self.out_degree[receiver] > 0

    def visit(self, key: tuple, batch: int) -> int:
        """Prune the edges into one receiver; returns the batch length to use next."""
        candidates = sender_order([e for e in self.into[key] if e in self.kept], self.n_layers)
        if not self.reachable(key[0]):
            for e in candidates:
                self.remove(e)
            self.stats["skipped"] += len(candidates)
            return batch
        start = layer_of(key[0], self.n_layers)
        while candidates:
            block = candidates[:batch]
            values = self._cumulative(block, start)
            accepted = self._accept(block, values)
            candidates = candidates[accepted + (accepted < len(block)):]
            batch = batch * 2 if accepted == len(block) else max(1, batch // 2)
        return batch

    def _cumulative(self, block: list[Edge], start: int) -> list[float]:
        removals = [block[:j + 1] for j in range(len(block))]
        values = self.scorer.score(removals, start)
        self.stats["forwards"] += 1
        self.stats["rows"] += len(block)
        self.stats["fe"] += len(block) * (self.n_layers - max(start, 0)) / self.n_layers
        return values

    def _accept(self, block: list[Edge], values: list[float]) -> int:
        """Apply the sequential rule to cumulative values; returns how many were removed
        before the first kept edge (the kept one, if any, is marked tested too)."""
        for j, (edge, value) in enumerate(zip(block, values, strict=True)):
            self.stats["tested"] += 1
            removed = abs(value - self.current) <= self.threshold
            self.trace.append((str(edge), value - self.current, not removed))
            if not removed:
                return j
            self.remove(edge)
            self.current = value
        return len(block)


def check_threshold(threshold: float) -> float:
    if not threshold >= 0 or threshold != threshold or threshold == float("inf"):
        raise UserValueError(f"--threshold {threshold}: must be a finite number >= 0, "
                             "e.g. --threshold 0.01")
    return threshold


def acdc_walk(edges: Sequence[Edge], scorer: Scorer, n_layers: int, threshold: float,
              metric: str = "kl", progress: bool = True, batch: int = 16) -> AcdcResult:
    """ACDC over `edges` with a `Scorer` (the module docstring; `acdc` scores on the
    edge-ablation engine)."""
    check_threshold(threshold)
    walk = _Walk(edges, scorer, n_layers, threshold)
    order = receiver_order(edges, n_layers)
    for key in tqdm(order, desc="ACDC receivers", disable=not progress):
        batch = walk.visit(key, batch)
    kept = [e for e in edges if e in walk.kept]
    s = walk.stats
    return AcdcResult(kept, len(edges), threshold, metric, walk.current, walk.full,
                      s["tested"], s["skipped"], s["forwards"], s["fe"], s["rows"],
                      trace=walk.trace)


def acdc(model, runs, threshold: float | None, metric: str = "kl", kind: str = "mean",
         seed: int = 0, progress: bool = True, prescreen: int | None = None,
         auto_fraction: float = AUTO_FRACTION) -> AcdcResult:
    """ACDC on `runs` (clean prompts; ablated values from the corrupted ones, `kind` as in
    `interp.edge_ablation`) over the whole graph (`EdgeGraph.edges`).

    `prescreen=N` (an approximation, reported as such): ACDC runs on the subgraph of the N
    edges with the largest |EAP| score (`interp.discover.eap_edges`); every other edge is
    ablated from the start and never tested. The walk then starts from that subgraph's metric.

    `threshold=None` ("auto"): `auto_fraction` of the metric's range, |m(no edge kept) -
    m(full model)| (for KL: 1% of KL(clean || every sender ablated)), so one default suits
    models whose outputs differ in scale; the value used is `result.threshold`.
    """
    from interp.discover import EAP_FORWARDS
    from interp.edge_ablation import EdgeAblation

    if metric not in METRICS:
        raise UserValueError(f"--acdc-metric {metric!r}: use one of {METRICS}")
    if threshold is not None:
        check_threshold(threshold)
    engine = EdgeAblation(model, kl_runs(model, runs) if metric == "kl" else runs, kind, seed)
    if threshold is None:
        full, empty = engine.metrics([engine.full(), engine.empty()]).mean(-1).tolist()
        threshold = auto_fraction * abs(empty - full)
    edges = all_edges = engine.graph.edges()
    if prescreen is not None:
        top = _prescreened(model, runs, prescreen)
        edges = [e for e in edges if e in top]
    scorer = EngineScorer(engine, None if prescreen is None else edges)
    result = acdc_walk(edges, scorer, model.cfg.n_layers, threshold, metric, progress)
    result.prescreen, result.n_edges_total = prescreen, len(all_edges)
    # the prescreen's EAP: one forward and backward of the clean run (corrupted run cached)
    result.forward_equivalents = engine.n_forwards + (0 if prescreen is None
                                                      else EAP_FORWARDS["attribution"])
    return result


def _prescreened(model, runs, n: int) -> set[Edge]:
    """The n edges with the largest |EAP| score."""
    from interp.attribution import edge_attribution
    from interp.discover import RECEIVERS, eap_edges

    if n < 1:
        raise UserValueError(f"--prescreen {n}: must be >= 1 (the edges ACDC tests)")
    ranked = eap_edges(edge_attribution(model, runs.batch, receivers=RECEIVERS, runs=runs))
    return {e for e, _ in ranked[:n]}


def acdc_summary(model, runs, result: AcdcResult) -> dict:
    """The summary.json fields of an ACDC run, with the circuit's task-metric faithfulness
    under edge ablation (the numbers `interp evaluate-circuit` reproduces)."""
    from interp.circuit import normalised_faithfulness
    from interp.discover import edge_nodes
    from interp.edge_ablation import EdgeAblation

    f_c, f_empty = EdgeAblation(model, runs).metrics([set(result.edges), set()]).mean(-1)
    f_c, f_empty, f_m = f_c.item(), f_empty.item(), runs.clean_metric.mean().item()
    return {
        "threshold": result.threshold, "acdc_metric": result.metric,
        "n_edges_total": result.n_edges_total, "n_edges": len(result.edges),
        "nodes": [str(n) for n in edge_nodes(result.edges)],
        "edges": [str(e) for e in result.edges],
        "acdc_metric_value": result.current, "acdc_metric_at_start": result.full,
        "F_C": f_c, "F_M": f_m, "F_no_edges": f_empty,
        "normalised_faithfulness": normalised_faithfulness(f_c, f_m, f_empty),
        "n_tested": result.n_tested, "n_skipped": result.n_skipped,
        "n_forwards": result.n_forwards, "candidate_runs": result.rows,
        "forward_equivalents": round(result.forward_equivalents + 2, 3),
        "forward_equivalents_walk": round(result.forward_equivalents, 3),
        "forward_equivalents_note": "2 for the clean and corrupted runs, plus the engine's "
                                    "edge-ablated runs (a run resumed at layer L counts "
                                    "(n_layers - L) / n_layers)",
        "order": "receivers: logits, then layers last to first (MLP, heads high to low, "
                 "q k v); senders latest first (interp.acdc)",
        "accept_rule": "remove when |metric change| <= threshold",
        "prescreen": (None if result.prescreen is None else
                      f"APPROXIMATION: ACDC tested only the {result.prescreen} edges with the "
                      "largest |EAP| score; every other edge was ablated untested"),
    }


def acdc_lines(summary: dict, label: str) -> list[str]:
    """The printed report of an ACDC run."""
    s = summary
    return [f"acdc {label}: threshold {s['threshold']} ({s['acdc_metric']}): kept "
            f"{s['n_edges']} of {s['n_edges_total']} edges, {len(s['nodes'])} nodes",
            f"  {s['acdc_metric']} metric {s['acdc_metric_value']:.5f} (at the walk's start "
            f"{s['acdc_metric_at_start']:.5f}); F(C)={s['F_C']:.4f} F(M)={s['F_M']:.4f} "
            f"F(no edges)={s['F_no_edges']:.4f} normalised faithfulness "
            f"{s['normalised_faithfulness']:.3f}",
            f"  {s['n_tested']} edges tested, {s['n_skipped']} removed untested; "
            f"{s['n_forwards']} batched forwards, {s['candidate_runs']} candidate runs, "
            f"{s['forward_equivalents']:.1f} forward-equivalents"]
