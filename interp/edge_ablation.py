"""Exact edge ablation: each receiver reads its own mix of real and ablated senders.

The residual stream is a sum of sender outputs (plus constant biases such as the attention
output bias b_O, which no edge carries and which always stays):

    R_L = e + sum_{senders s before layer L} o_s + biases

with e the embeddings, o_s a head's output z_s W_O[s] or an MLP's output. An edge set says,
for every receiver r (each head's q, k and v input, per QUERY head on GQA models; each MLP's
input; the logits) and every sender s it can read, whether the edge s -> r is kept (at every
position, or only at named positions). The receiver's input is

    x_r = sum_s (o_s if (s -> r) kept at this position else a_s) + biases
        = R_L - sum_{s not kept} (o_s - a_s)                                (*)

where o_s is the sender's output IN THIS forward (it depends on what its own inputs were) and
a_s its ablated value: its mean over the corrupted prompts of the same group (template),
position by position; its output on one corrupted prompt of the group ("resample"); or zero
("zero"), from `interp.mean_ablation` (`MeanAblation`'s group means and `ablation_runs`).

So one forward computes every receiver's input at once: keep D_s = o_s - a_s for the
senders computed so far ([senders, prompts, pos, d_model]), and for the receivers of layer L
take R_L minus a masked matmul A_L @ D, A_L[r, s] = 1 where s -> r is ablated (an edge kept
only at some positions adds back D_s there). The receiver's norm, projection, rotary,
attention and MLP are then recomputed from x_r, the new outputs update D and R, and the
logits read R_final - A_logits @ D at the metric's read positions. No forward per edge.

The rows of A_L are 0/1, so the matmul only runs over the columns where a layer's receivers
differ: the columns every receiver ablates are one shared sum, either added directly or as
S - (the columns every receiver keeps), S the running sum of all of D (whichever reads fewer
columns: a top-k circuit's receivers keep a few of many held senders), and the columns no
receiver ablates drop. An MLP, a single receiver, reads only such sums.

Memory: a run holds D_s only for the senders it needs them for: live senders (some receiver
keeps an edge from them; the others send a_s everywhere, so they enter R as a_s and are not
computed) that some receiver reads ablated. A sparse circuit holds its own heads' D_s; the
full model minus a few senders holds none. The clean run's D_s are computed from its cache
when a run resuming from it needs them, never stored for all senders.

Identities (tests/test_edge_ablation.py): every edge kept = the clean model (all D_s terms
drop); no edge kept = every sender ablated; one edge ablated with corrupted activations =
path patching of that sender into that receiver (`interp.patching.path.path_patch`); a node
circuit as the full set of its edges (with embeddings and MLPs connected to everything) =
`MeanAblation`.

Batching and resuming: several edge sets run in one forward (items x prompts rows) under a
memory budget. An edge set that agrees with a cached base run on every receiver of layers
< L, and keeps no sender before L that the base did not compute, shares that run's senders
and residual stream up to layer L and resumes there (the clean run is the first base;
`add_base` caches another, e.g. ACDC's current circuit, whose candidates differ from it at
one receiver; `metrics` caches an edge set as a base when another set of the same call
resumes later from it, e.g. a circuit C before its variants C minus an edge).

Families: the fast engine's (`interp.arch.FAMILIES`), except Gemma 2, whose post-attention
norm mixes the heads before they reach the residual stream (a head has no additive output
there). Other models get a one-line refusal naming the architecture: evaluate them at node
level (a circuit file with groups only).

Example:
    >>> ev = EdgeAblation(model, runs)                    # or kind="resample", seed=0
    >>> graph = ev.graph
    >>> circuit = ev.mask([Edge(Head(9, 9), LOGITS), ...])  # everything else ablated
    >>> ev.metrics([circuit, ev.full(), ev.empty()]).mean(-1)  # [3]
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.arch import family_of, fast_norm, slow_reason
from interp.edges import Edge, EdgeGraph
from interp.errors import UserValueError
from interp.mean_ablation import Circuit, MeanAblation, group_means, keep_mask
from interp.nodes import Head, Mlp
from interp.patching import counter
from interp.patching.runs import Runs, metric_from_resid, prepare_runs
from interp.patching.sparse import _attend_dense, _Scores, base_run
from interp.patching.workers import run_items, side_by_side_items

MAX_BASES = 4  # cached base runs, the clean one included
IDENTICAL = 1 << 30  # `first_difference` of two edge sets that agree on every receiver
BUDGET_GB = {"cpu": 1.0, "cuda": 8.0}  # activation memory of one batched forward
# hook-name endings EdgeAblation reads: pass them to `prepare_runs` / keep them in `release`
CORRUPTED_HOOKS = ("blocks.0.hook_resid_pre", "attn.hook_z", "hook_mlp_out")


def clean_hooks(model) -> tuple[str, ...]:
    """Hook-name endings of the clean run EdgeAblation reads: every layer's resid_pre, z and
    MLP output, and the last layer's resid_post."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    return ("hook_resid_pre", "attn.hook_z", "hook_mlp_out", last)


def edge_runs(model, batch) -> Runs:
    """`prepare_runs` caching only what EdgeAblation reads (`clean_hooks`, `CORRUPTED_HOOKS`):
    also what its node ablation and the edge scores (`interp.attribution`) read."""
    return prepare_runs(model, batch, clean_hooks(model), CORRUPTED_HOOKS)


class EdgeAblationUnsupported(UserValueError):
    """The model's blocks do not give every head an additive output (or are not known)."""


def check_edges_supported(model) -> None:
    """Refuse, in one line, a model whose edges the exact engine cannot ablate."""
    reason = slow_reason(model)
    family = family_of(model)
    if reason is None and family.post_norms:
        reason = (f"{family.name} normalises the sum of its heads before the residual stream, "
                  "so a head has no additive output to ablate per edge")
    if reason is not None:
        raise EdgeAblationUnsupported(
            f"edge ablation cannot run this model: {reason}; evaluate the circuit at node "
            "level instead (a circuit file with groups and no edges)")


@dataclass
class EdgeMask:
    """Which edges an edge set keeps, by `EdgeGraph` index.

    `keep[r, s]`: the edge s -> r is kept at every position. `at[(r, s)]`: kept only at
    these named positions, or where a [prompts, pos] bool tensor is True (only where
    keep[r, s] is False). Entries for edges the graph lacks (a sender after the receiver)
    are ignored.
    """

    keep: Bool[Tensor, "receivers senders"]
    at: dict[tuple[int, int], tuple[str, ...] | Tensor] = field(default_factory=dict)

    def copy(self) -> "EdgeMask":
        return EdgeMask(self.keep.clone(), dict(self.at))

    def without(self, receiver: int, sender: int) -> "EdgeMask":
        """A copy with the edge sender -> receiver ablated at every position."""
        out = self.copy()
        out.keep[receiver, sender] = False
        out.at.pop((receiver, sender), None)
        return out

    def differing_receivers(self, other: "EdgeMask", readable: Tensor | None = None
                            ) -> Bool[Tensor, " receivers"]:
        """Receivers whose kept edges differ; with `readable` ([receivers, senders], True
        where the graph has the edge), entries for edges the graph lacks are ignored."""
        diff = self.keep != other.keep
        rows = (diff if readable is None else diff & readable).any(1)
        for key in set(self.at) | set(other.at):
            if readable is not None and not readable[key]:
                continue
            a, b = self.at.get(key), other.at.get(key)
            same = (a is b or (isinstance(a, tuple) and a == b)
                    or (isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)))
            if not same:
                rows[key[0]] = True
        return rows


@dataclass
class _Base:
    """A run that edge sets resume from: its edge set, the senders it computed (`live`),
    their D_s in sender order (None for the clean run: computed on demand from its cache),
    R_L at the start of every layer and the final one [prompts, pos, d], and its metric."""

    mask: EdgeMask
    live: Bool[Tensor, " senders"]
    deltas: Float[Tensor, "live prompts pos d_model"] | None
    resid: list[Tensor]
    metric: Float[Tensor, " prompts"]


class EdgeAblation:
    """Edge-ablated runs of many edge sets on one `Runs` (clean prompts; ablated values
    from the corrupted ones, `kind` "mean", "zero" or "resample" with `seed`).

    Args:
        model: a TransformerBridge of a supported family (`check_edges_supported`).
        runs: from `interp.patching.prepare_runs`.
        budget_gb: activation memory of one batched forward (None: device default).
    """

    @torch.inference_mode()
    def __init__(self, model, runs: Runs, kind: str = "mean", seed: int = 0,
                 budget_gb: float | None = None):
        check_edges_supported(model)
        self.nodes = MeanAblation(model, runs, kind, seed)  # the group means, per kind
        self.model, self.runs, self.batch = model, self.nodes.runs, self.nodes.runs.batch
        self.family, self.graph = family_of(model), EdgeGraph.of(model)
        self.engine = base_run(model, self.runs)
        self.seq = self.batch.clean_tokens.shape[1]
        device = "cuda" if str(model.cfg.device).startswith("cuda") else "cpu"
        self.budget_gb = BUDGET_GB[device] if budget_gb is None else budget_gb
        self._positions: dict[tuple[str, ...], Tensor] = {}
        self.n_forwards = 0.0  # forward-pass equivalents run so far (resumed runs: fractions)
        self._readable = torch.arange(self.graph.n_senders)[None] < torch.tensor(
            [self.graph.readable(r) for r in range(self.graph.n_receivers)])[:, None]
        self._embed_mean: Tensor | None = None
        self._ablated_attn: dict[int, Tensor] = {}  # layer -> every head ablated, plus b_O
        self._index: dict[Edge, tuple[int, int]] = {}  # `graph.index`, memoised
        self.bases = [self._clean_base()]

    # -- edge sets ----------------------------------------------------------------------------
    def full(self) -> EdgeMask:
        """Every edge kept: the clean model."""
        g = self.graph
        return EdgeMask(torch.ones(g.n_receivers, g.n_senders, dtype=torch.bool))

    def empty(self) -> EdgeMask:
        """No edge kept: every receiver reads only ablated senders."""
        g = self.graph
        return EdgeMask(torch.zeros(g.n_receivers, g.n_senders, dtype=torch.bool))

    def mask(self, edges: Iterable[Edge]) -> EdgeMask:
        """The `EdgeMask` keeping exactly `edges` (each at its positions; every position when
        None); ValueError for an edge the graph lacks or an unknown position name."""
        out = self.empty()
        everywhere, positional = [], []
        for edge in edges:
            at = self._index.get(edge)  # hashing an Edge is most of this loop's time
            if at is None:
                at = self._index[edge] = self.graph.index(edge)
            if edge.positions is None:
                everywhere.append(at)
            else:
                positional.append((edge, *at))
        if everywhere:
            out.keep[tuple(torch.tensor(everywhere).T)] = True
        for edge, r, s in positional:  # where not kept everywhere
            if not out.keep[r, s]:
                self._position_mask(edge.positions)  # checks the names
                merged = set(out.at.get((r, s), ())) | set(edge.positions)
                out.at[(r, s)] = tuple(sorted(merged))
        return out

    def node_mask(self, circuit: Circuit) -> EdgeMask:
        """A node circuit (node -> kept positions, as `MeanAblation` takes it) as the full set
        of its edges: every edge out of a kept node, at its positions, into every receiver;
        the embeddings always, and the MLPs too unless the circuit lists MLP nodes."""
        g = self.graph
        out = self.empty()
        out.keep[:, 0] = True
        with_mlps = any(isinstance(node, Mlp) for node in circuit)
        if not with_mlps:
            for layer in range(g.n_layers):
                out.keep[:, g.sender_index(Mlp(layer))] = True
        for node, positions in circuit.items():
            s = g.sender_index(node)
            if positions is None:
                out.keep[:, s] = True
            else:
                for r in range(g.n_receivers):
                    if s < g.readable(r):
                        out.at[(r, s)] = tuple(positions)
        return out

    def _position_mask(self, names: tuple[str, ...] | Tensor) -> Bool[Tensor, "prompts pos"]:
        if isinstance(names, Tensor):
            return names
        if names not in self._positions:
            self._positions[names] = keep_mask(self.batch, list(names), self.seq)
        return self._positions[names]

    # -- evaluation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def metrics(self, edge_sets: Sequence[EdgeMask | Iterable[Edge]],
                progress: bool = False) -> Float[Tensor, "n_sets prompts"]:
        """Per-prompt metric (raw units) of each edge set's edge-ablated run."""
        if not edge_sets:
            return torch.empty(0, len(self.batch))
        masks = [m if isinstance(m, EdgeMask) else self.mask(m) for m in edge_sets]
        lives = [self._live([m]) for m in masks]
        self._add_useful_bases(masks, lives)
        placed = [self._best_base(m, live) for m, live in zip(masks, lives, strict=True)]
        out = [base.metric if start == IDENTICAL else None for base, start in placed]
        pending = sorted((start, i) for i, (_, start) in enumerate(placed) if start != IDENTICAL)
        side_by_side = side_by_side_items(self.model.cfg.device)
        chunks = self._chunks(pending, masks, lives, self.budget_gb / side_by_side)
        n_layers = self.model.cfg.n_layers
        # the longest runs first (most senders computed over most layers), so that runs side
        # by side finish together
        chunks.sort(key=lambda c: -len(c) * int(lives[c[0][1]].sum()) * (n_layers - c[0][0]))
        jobs = [partial(self._run, [(masks[i], placed[i][0]) for _, i in chunk], chunk[0][0])
                for chunk in chunks]
        done = run_items(jobs, self.model.cfg.device, progress, desc="edge-ablated runs")
        for chunk, (values, _, _) in zip(chunks, done, strict=True):
            self._count(len(chunk), chunk[0][0])
            for (_, i), value in zip(chunk, values, strict=True):
                out[i] = value
        return torch.stack(out)

    @torch.inference_mode()
    def add_base(self, edge_set: EdgeMask | Iterable[Edge]) -> None:
        """Run `edge_set` and cache it as a base run (the oldest non-clean base goes when
        there are `MAX_BASES`): edge sets that differ from it only at receivers of layer >= L,
        and keep no sender it did not compute before L, then resume at L."""
        mask = edge_set if isinstance(edge_set, EdgeMask) else self.mask(edge_set)
        live = self._live([mask])
        base, start = self._best_base(mask, live)
        if start == IDENTICAL:  # a base with this very edge set exists (e.g. the clean run)
            self.bases.append(base)
            return
        metric, deltas, resid = self._run([(mask, base)], start, keep=True)
        self._count(1, start)
        if len(self.bases) >= MAX_BASES:
            self.bases.pop(1)
        self.bases.append(_Base(mask.copy(), live, deltas[0], resid, metric[0]))

    def _add_useful_bases(self, masks: list[EdgeMask], lives: list[Tensor]) -> None:
        """Cache as a base each edge set that shares no layer with the bases but from which
        another of `masks` would resume later than from any base (while there is room)."""
        for i, (mask, live) in enumerate(zip(masks, lives, strict=True)):
            if len(self.bases) >= MAX_BASES:
                return
            if self._best_base(mask, live)[1] != 0:
                continue
            candidate = _Base(mask, live, None, [], None)
            if any(self._start(masks[j], lives[j], candidate)
                   > self._best_base(masks[j], lives[j])[1]
                   for j in range(len(masks)) if j != i):
                self.add_base(mask)

    def first_difference(self, a: EdgeMask, b: EdgeMask) -> int:
        """The first layer with a receiver whose edges differ (the logits count as layer
        n_layers; `IDENTICAL` when no receiver differs)."""
        rows = a.differing_receivers(b, self._readable).nonzero()
        if len(rows) == 0:
            return IDENTICAL
        return min(int(rows[0]) // self.graph.per_layer, self.model.cfg.n_layers)

    def _start(self, mask: EdgeMask, live: Tensor, base: _Base) -> int:
        """The layer an edge set resumes at from `base`: its first differing receiver's,
        or earlier, the layer of the first sender it keeps that the base did not compute."""
        start = self.first_difference(mask, base.mask)
        missing = (live & ~base.live).nonzero()
        if len(missing):
            start = min(start, max(0, self.graph.sender_slot(int(missing[0]))[0]))
        return start

    def _best_base(self, mask: EdgeMask, live: Tensor) -> tuple[_Base, int]:
        starts = [self._start(mask, live, b) for b in self.bases]
        best = max(reversed(range(len(starts))), key=lambda i: starts[i])  # ties: the newest
        return self.bases[best], starts[best]

    def _chunks(self, pending: list[tuple[int, int]], masks: list[EdgeMask],
                lives: list[Tensor], budget_gb: float) -> list[list[tuple[int, int]]]:
        """`pending` (start, set index), sorted by start, cut into batches of one start and
        one set of live senders (a batch computes the union of its items' live senders,
        and holds D_s for those any item reads ablated) that fit `budget_gb` each."""
        cfg = self.model.cfg
        row_bytes = 4 * len(self.batch) * self.seq * cfg.d_model
        chunks, ablated = [], None
        for start, i in pending:
            mine = self._ablated_from([masks[i]], start)
            fits = False
            if chunks:
                s0, i0 = chunks[-1][0]
                if s0 == start and torch.equal(lives[i0], lives[i]):
                    grown = ablated | mine
                    held = int((lives[i] & grown).sum())
                    cost = (len(chunks[-1]) + 1) * row_bytes * (held + 6 * cfg.n_heads + 4)
                    fits = cost <= budget_gb * 2**30
            if fits:
                chunks[-1].append((start, i))
                ablated = grown
            else:
                chunks.append([(start, i)])
                ablated = mine
        return chunks

    # -- the forward --------------------------------------------------------------------------
    def _clean_base(self) -> _Base:
        """The clean run as a base; its D_s = clean output - ablated value are computed
        from the clean cache when a run needs them (`_deltas`)."""
        cache, g = self.runs.clean_cache, self.graph
        resid = [cache[f"blocks.{la}.hook_resid_pre"] for la in range(g.n_layers)]
        resid.append(cache[f"blocks.{g.n_layers - 1}.hook_resid_post"])
        return _Base(self.full(), torch.ones(g.n_senders, dtype=torch.bool), None, resid,
                     self.runs.clean_metric)

    def _deltas(self, base: _Base, senders: Tensor) -> Float[Tensor, "n prompts pos d_model"]:
        """D_s of `base`'s run for the given senders (each computed by that run)."""
        if base.deltas is not None:
            return base.deltas[torch.cumsum(base.live, 0)[senders] - 1]
        cache, g, nodes = self.runs.clean_cache, self.graph, self.nodes
        out = []
        for layer, group in _by_layer(senders.tolist(), g):
            if layer < 0:
                out.append((cache["blocks.0.hook_resid_pre"] - self._ablated_embed())[None])
                continue
            heads = [s for s in group if s < g.n_heads]
            if heads:
                z = cache[f"blocks.{layer}.attn.hook_z"][..., heads, :]
                mean = nodes.z_means[layer][..., heads, :]
                out.append(self._head_outputs(layer, (z - mean)[None], heads)[0])
            if len(heads) < len(group):
                mlp = cache[f"blocks.{layer}.hook_mlp_out"] - nodes.mlp_means()[layer]
                out.append(mlp[None])
        return torch.cat(out)

    def _delta_sum(self, base: _Base, senders: Tensor) -> Float[Tensor, "prompts pos d_model"]:
        """The sum of `base`'s D_s over `senders` (0 for none), a few layers at a time."""
        total = torch.zeros_like(base.resid[0])
        for lo in range(0, len(senders), 4 * (self.graph.n_heads + 1)):
            total += self._deltas(base, senders[lo:lo + 4 * (self.graph.n_heads + 1)]).sum(0)
        return total

    def _resumed_resid(self, base: _Base, live: Tensor, start: int, every: bool
                       ) -> list[Float[Tensor, "prompts pos d_model"]]:
        """`base`'s R_L with the senders it computed but `live` lacks sending their ablated
        values (o_s -> a_s): at `start` ([R_start]), or with `every` at each layer <= start."""
        g = self.graph
        dead = base.live & ~live
        if not every:
            return [base.resid[start] - self._delta_sum(base, dead[:g.senders_before(start)]
                                                        .nonzero().flatten())]
        out, total = [], torch.zeros_like(base.resid[0])
        for layer in range(start + 1):
            lo = 0 if layer == 0 else g.senders_before(layer - 1)
            senders = dead[:g.senders_before(layer)].nonzero().flatten()
            total = total + self._delta_sum(base, senders[senders >= lo])
            out.append(base.resid[layer] - total)
        return out

    def _ablated_embed(self) -> Tensor:
        if self._embed_mean is None:
            self._embed_mean = group_means(self.runs.corrupted_cache["blocks.0.hook_resid_pre"],
                                           self.batch.groups)
        return self._embed_mean

    def _ablated_attention(self, layer: int) -> Float[Tensor, "prompts pos d_model"]:
        """The layer's attention output with every head ablated (sum of a_s, plus b_O)."""
        if layer not in self._ablated_attn:
            z = self.nodes.z_means[layer]
            out = z.flatten(-2) @ self.engine.w["W_O"][layer].flatten(0, 1)
            b_o = self.engine.w["b_O"]
            self._ablated_attn[layer] = out if b_o is None else out + b_o[layer]
        return self._ablated_attn[layer]

    def _head_outputs(self, layer: int, z: Float[Tensor, "k prompts pos heads d_head"],
                      heads: list[int] | None = None) -> Float[Tensor, "k heads prompts pos d"]:
        """Outputs z W_O of the heads z holds: every head, or the given `heads` in order."""
        w_o = self.engine.w["W_O"][layer]
        w_o = w_o if heads is None else w_o[heads]
        return torch.einsum("knphe,hed->khnpd", z, w_o)

    def _run(self, items: list[tuple[EdgeMask, _Base]], start: int, keep: bool = False):
        """Metrics [k, prompts] of edge sets resumed at `start` from their bases; with
        `keep`, also the D_s of every sender computed and the residual at every layer (for
        a new base).

        Only live senders are computed: a sender no item keeps any edge from sends its
        ablated value to every receiver, so its own output cancels in (*) (D_s = 0) and
        its inputs need not be computed. Only the D_s that some receiver from `start` on
        subtracts are held: a live sender every such receiver keeps needs none."""
        g, n_layers = self.graph, self.model.cfg.n_layers
        masks = [m for m, _ in items]
        live = self._live(masks)
        held = live if keep else live & self._ablated_from(masks, start)
        state = _State(live, held, masks, self._kept_at(masks), g)
        state.allocate(items[0][1].resid[start])
        done = state.n_cols(g.senders_before(start))
        resid, kept = [], None
        for i, (_, base) in enumerate(items):
            have = base.live[state.cols[:done]]
            if have.any():
                state.deltas[i, have.nonzero().flatten()] = self._deltas(
                    base, state.cols[:done][have])
            resid.append(self._resumed_resid(base, live, start, keep))
        if keep:
            kept = resid[0]
        resid = torch.stack([r[-1] for r in resid])
        for layer in range(start, n_layers):
            resid = self._layer(layer, resid, state)
            if keep:
                kept.append(resid[0])
        read = self.batch.read_positions
        rows = torch.arange(len(read))
        final = resid[:, rows, read] - self._mix_read(state, read)
        metric = metric_from_resid(self.model, self.batch, final)
        return metric, state.deltas if keep else None, kept

    def _count(self, n_items: int, start: int) -> None:
        """Count `n_items` runs resumed at `start` (in the caller's thread: `_run` may run
        on a worker, side by side with others)."""
        n_layers = self.model.cfg.n_layers
        self.n_forwards += n_items * (n_layers - start) / n_layers
        counter.add(n_items * self.batch.clean_tokens.numel() * (n_layers - start))

    def _live(self, masks: list[EdgeMask]) -> Bool[Tensor, " senders"]:
        live = torch.zeros(self.graph.n_senders, dtype=torch.bool)
        for m in masks:
            live |= (m.keep & self._readable).any(0)
            for (r, s) in m.at:
                if s < self.graph.readable(r):
                    live[s] = True
        live[0] = True  # the embeddings cost nothing
        return live

    def _ablated_from(self, masks: list[EdgeMask], start: int) -> Bool[Tensor, " senders"]:
        """Senders that some receiver of layer >= `start` (or the logits) reads ablated
        somewhere: at every position, or outside the positions of a positional edge."""
        g = self.graph
        first = min(start, self.model.cfg.n_layers) * g.per_layer
        out = torch.zeros(g.n_senders, dtype=torch.bool)
        for m in masks:
            out |= (~m.keep[first:] & self._readable[first:]).any(0)
        return out

    def _kept_at(self, masks: list[EdgeMask]) -> list[tuple[Tensor, Tensor]]:
        """Positional edges grouped by their positions: [(position mask [prompts, pos, 1],
        B [k, receivers, senders]: 1 where the edge is kept only there)]."""
        groups: dict = {}
        g = self.graph
        for item, m in enumerate(masks):
            for (r, s), names in m.at.items():
                if not m.keep[r, s]:
                    key = names if isinstance(names, tuple) else id(names)
                    if key not in groups:
                        groups[key] = (self._position_mask(names)[..., None],
                                       torch.zeros(len(masks), g.n_receivers, g.n_senders,
                                                   dtype=torch.bool))
                    groups[key][1][item, r, s] = True
        return list(groups.values())

    def _inputs(self, state: "_State", resid: Float[Tensor, "k prompts pos d_model"],
                rows: list[int], n_senders: int) -> Float[Tensor, "k receivers prompts pos d"]:
        """The input (*) of each receiver in `rows`, among the first `n_senders` senders:
        R - A @ D, plus P * (B_P @ D) for the senders that positional edges keep at
        positions P (`_item_inputs` for A, `_State.product` for each B_P)."""
        cols = state.n_cols(n_senders)
        out = state.scratch((resid.shape[0], len(rows), *resid.shape[1:]))
        for item in range(resid.shape[0]):
            self._item_inputs(state, item, resid[item], rows, cols, out[item])
        for pos, kept in state.kept_at:
            back = state.product(kept[:, rows, :cols])
            if back is not None:
                out += pos * back.view_as(out)
        return out

    @staticmethod
    def _item_inputs(state: "_State", item: int, resid: Float[Tensor, "prompts pos d_model"],
                     rows: list[int], cols: int, out: Float[Tensor, "receivers prompts pos d"]
                     ) -> None:
        """R - A @ D for one item's receivers, into `out`. A's rows are 0/1: the columns
        every row ablates (I) are one sum shared by all rows, the columns no row ablates
        drop, and only the columns where rows differ (E) are multiplied per row:

            A @ D = sum_I D + A_E @ D_E = S - sum_{kept by all} D - (1 - A_E) @ D_E

        with S the sum of every column (`_State.running_sum`, updated once per column).
        The shared sum reads whichever of I and the kept-by-all columns is smaller: e.g.
        a top-k circuit's receivers keep a few of many held senders."""
        a = state.ablated[item, rows, :cols]
        every, some = a.all(0), a.any(0)
        n_every, n_none = int(every.sum()), cols - int(some.sum())
        if n_every <= n_none:
            common, weights, sign = state.column_sum(item, every), a, -1.0
        else:
            common = state.running_sum(item, cols) - state.column_sum(item, ~some)
            weights, sign = ~a, 1.0
        torch.sub(resid, common, out=out[0])
        out[1:] = out[0]
        differ = some & ~every
        if differ.any():
            flat = out.view(len(rows), -1)
            state.addmm(flat, item, weights, differ, sign)

    def _mix_read(self, state: "_State", read: Tensor) -> Float[Tensor, "k prompts d_model"]:
        rows = torch.arange(len(read))
        at_read = state.deltas[:, :, rows, read]  # [k, live senders, prompts, d]
        logits = self.graph.logits_index
        out = torch.einsum("ks,ksnd->knd", state.ablated[:, logits].to(at_read.dtype), at_read)
        for pos, kept in state.kept_at:
            back = torch.einsum("ks,ksnd->knd", kept[:, logits].to(at_read.dtype), at_read)
            out -= pos[rows, read].to(out.dtype) * back
        return out

    def _layer(self, layer: int, resid: Tensor, state: "_State"
               ) -> Float[Tensor, "k prompts pos d_model"]:
        """One block: every live receiver of `layer` reads its own mix (*); records the
        layer's new outputs in `state` and returns R at the next layer."""
        model, g, h = self.model, self.graph, self.model.cfg.n_heads
        r0, first = layer * g.per_layer, g.sender_index(Head(layer, 0))
        heads = state.live[first:first + h].nonzero().flatten().tolist()
        attn = self._ablated_attention(layer)  # dead heads send a_s; live ones a_s + D_s
        if heads:
            rows = [r0 + kind * h + i for kind in range(3) for i in heads]
            unique, inverse = state.distinct(rows, g.senders_before(layer))
            x = self._inputs(state, resid, unique, g.senders_before(layer))
            z = self._attention(layer, x, inverse, heads) - self.nodes.z_means[layer][..., heads, :]
            deltas = self._head_outputs(layer, z, heads)  # D_s = (z - mean z) W_O
            state.record([first + i for i in heads], deltas)
            attn = attn + deltas.sum(1)
        mlp_mean = self.nodes.mlp_means()[layer]
        if not state.live[first + h]:
            return resid + attn + mlp_mean
        mid = resid if g.parallel else resid + attn
        mlp_in = self._inputs(state, mid, [r0 + 3 * h], g.senders_before(layer, mlp=True))[:, 0]
        shape = mlp_in.shape
        norm = fast_norm(self.family.mlp_norm(model, layer))
        out = self.family.mlp(model, layer)(norm(mlp_in.reshape(-1, *shape[-2:]))).view(shape)
        state.record([first + h], (out - mlp_mean)[:, None])
        return (resid + attn if g.parallel else mid) + out

    def _attention(self, layer: int, x: Float[Tensor, "k inputs prompts pos d_model"],
                   inverse: list[int], heads: list[int]
                   ) -> Float[Tensor, "k prompts pos heads d_head"]:
        """Attention of the given query heads, each reading its own q, k and v inputs:
        receiver row i (the q of every head, then the k, then the v) reads x[:, inverse[i]]
        (receivers with the same mix share one input, normed once)."""
        model, fam, engine = self.model, self.family, self.engine
        k, n_in, n, p, d = x.shape
        h = len(heads)
        normed = fam.attn_input(model, layer, x.reshape(-1, d)).view(k, n_in, n, p, d)
        w, b = self._qkv_weights(layer, heads)
        qkv = x.new_empty(k, n, p, 3 * h, w.shape[-1])
        index = torch.tensor(inverse)
        for u in range(n_in):
            rows = (index == u).nonzero().flatten()
            qkv[..., rows, :] = torch.einsum("knpd,ide->knpie", normed[:, u], w[rows])
        if b is not None:
            qkv = qkv + b
        prompt = torch.arange(n).repeat_interleave(p).repeat(k)
        pos = torch.arange(p).repeat(k * n)
        q, key, v = (qkv[..., i * h:(i + 1) * h, :].reshape(k * n * p, h, -1) for i in range(3))
        q = engine.rotate(layer, "q", q, prompt, pos).view(k * n, p, h, -1)
        key = engine.rotate(layer, "k", key, prompt, pos).view(k * n, p, h, -1)
        rule = _Scores(fam.scale(model, layer), fam.softcap(model, layer),
                       fam.window(model, layer))
        z = _attend_dense(q, key, v.view(k * n, p, h, -1), rule)
        return z.view(k, n, p, h, -1)

    def _qkv_weights(self, layer: int, heads: list[int]) -> tuple[Tensor, Tensor | None]:
        """W_Q, W_K, W_V of the given query heads (k, v per query head), stacked:
        [3 x len(heads), d_model, d_head] (and the biases)."""
        w, n_heads = self.engine.w, self.model.cfg.n_heads
        mats, biases = [], []
        for kind in ("Q", "K", "V"):
            mat, bias = w[f"W_{kind}"][layer], w[f"b_{kind}"]
            slots = [i // (n_heads // mat.shape[0]) for i in heads]  # GQA: the KV head
            mats.append(mat[slots])
            if bias is not None:
                biases.append(bias[layer][slots])
        return torch.cat(mats), (torch.cat(biases) if biases else None)


class _State:
    """The D_s a batched run holds (the `held` senders, in compact columns, zero until
    filled), its live senders and its edge masks over the held columns."""

    def __init__(self, live: Tensor, held: Tensor, masks: list[EdgeMask], kept_at: list,
                 graph: EdgeGraph):
        self.live = live
        self.cols = held.nonzero().flatten()  # sender index of each compact column
        self.col_of = torch.full((graph.n_senders,), -1, dtype=torch.long)
        self.col_of[self.cols] = torch.arange(len(self.cols))
        self.deltas: Tensor | None = None
        self.ablated = torch.stack([~m.keep[:, self.cols] for m in masks])
        self.kept_at = [(pos, kept[:, :, self.cols]) for pos, kept in kept_at]

    def allocate(self, like: Float[Tensor, "prompts pos d_model"]) -> None:
        self.deltas = like.new_zeros(len(self.ablated), len(self.cols), *like.shape)
        self._total, self._total_cols = None, 0
        self._gathered: Tensor | None = None
        self._scratch: Tensor | None = None

    def scratch(self, shape: tuple[int, ...]) -> Tensor:
        """A buffer of `shape` that the next call hands out again (the receivers' inputs of
        one step): a fresh tensor this large costs page faults at every layer."""
        n = math.prod(shape)
        if self._scratch is None or len(self._scratch) < n:
            self._scratch = self.deltas.new_empty(n)
        return self._scratch[:n].view(shape)

    def running_sum(self, item: int, cols: int) -> Float[Tensor, "prompts pos d_model"]:
        """The sum of the item's first `cols` columns of D. Kept for every item and
        extended as later layers ask for more columns (they are filled in sender order),
        so each column is added once per run."""
        if self._total is None:
            self._total = torch.zeros_like(self.deltas[:, 0])
        for col in range(self._total_cols, cols):
            self._total += self.deltas[:, col]
        self._total_cols = max(self._total_cols, cols)
        total = self._total[item]
        if cols < self._total_cols:  # an earlier prefix (`_run`'s ascending order never asks)
            total = total - self.deltas[item, cols:self._total_cols].sum(0)
        return total

    def column_sum(self, item: int, which: Bool[Tensor, " cols"]
                   ) -> Float[Tensor, "prompts pos d_model"] | float:
        """The sum of the item's columns of D where `which` is True (0.0 for none), one
        column at a time (a strided gather or a sum over dim 0 reads D slower)."""
        index = which.nonzero().flatten().tolist()
        if not index:
            return 0.0
        total = self.deltas[item, index[0]].clone()
        for col in index[1:]:
            total += self.deltas[item, col]
        return total

    def addmm(self, out: Float[Tensor, "receivers n"], item: int,
              weights: Bool[Tensor, "receivers cols"], which: Bool[Tensor, " cols"],
              sign: float) -> None:
        """out += sign * weights[:, which] @ D[item, which] (D's columns flattened)."""
        index = which.nonzero().flatten()
        lo, hi = int(index[0]), int(index[-1]) + 1
        deltas = self.deltas[item].view(self.deltas.shape[1], -1)
        if 4 * len(index) >= 3 * (hi - lo):  # a few zero columns beat copying D
            w, d = weights[:, lo:hi] & which[lo:hi], deltas[lo:hi]
        else:
            if self._gathered is None or len(self._gathered) < len(index):
                self._gathered = deltas.new_empty(len(index), deltas.shape[1])
            w = weights[:, index]
            d = torch.index_select(deltas, 0, index, out=self._gathered[:len(index)])
        out.addmm_(w.to(d.dtype), d, alpha=sign)

    def product(self, a: Bool[Tensor, "k rows cols"]) -> Float[Tensor, "k rows n"] | None:
        """a @ D over the columns a uses (None: none), D's columns flattened."""
        k, cols = a.shape[0], a.shape[2]
        used = a.flatten(0, 1).any(0)
        n_used = int(used.sum())
        if n_used == 0:
            return None
        if 4 * n_used >= cols:  # multiplying by a few zero columns beats copying D
            d = self.deltas[:, :cols].reshape(k, cols, -1)
        else:
            index = used.nonzero().flatten()
            a, d = a[:, :, index], self.deltas.index_select(1, index).reshape(k, n_used, -1)
        return torch.bmm(a.to(d.dtype), d)

    def distinct(self, rows: list[int], n_senders: int) -> tuple[list[int], list[int]]:
        """Receivers with distinct mixes over the first `n_senders` senders (their masks
        in every item and every positional group agree): (one receiver of each, and for
        each of `rows` the index of its mix among them)."""
        cols = self.n_cols(n_senders)
        parts = [self.ablated[:, rows, :cols]] + [kept[:, rows, :cols]
                                                  for _, kept in self.kept_at]
        key = torch.cat(parts, -1).transpose(0, 1).flatten(1)  # [rows, ...]
        if key.shape[1] == 0:  # no held sender before them: one mix (R itself)
            return rows[:1], [0] * len(rows)
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        first: dict[int, int] = {}
        order = [first.setdefault(int(u), len(first)) for u in inverse]
        unique: list[int] = []
        for row, u in zip(rows, order, strict=True):
            if u == len(unique):  # order numbers mixes by first appearance
                unique.append(row)
        return unique, order

    def n_cols(self, n_senders: int) -> int:
        """How many compact columns belong to the first `n_senders` senders."""
        return int(torch.searchsorted(self.cols, n_senders))

    def record(self, senders: list[int], values: Tensor) -> None:
        """D_s of new outputs (values [k, len(senders), prompts, pos, d]) of held senders."""
        cols = self.col_of[senders]
        held = (cols >= 0).nonzero().flatten()
        if len(held) == len(senders):
            self.deltas[:, cols] = values
        elif len(held):
            self.deltas[:, cols[held]] = values[:, held]


def _by_layer(senders: list[int], graph: EdgeGraph) -> list[tuple[int, list[int]]]:
    """Sender indices (ascending) grouped by layer: [(layer, [slot, ...])], slot n_heads
    the MLP; the embeddings as layer -1."""
    out: list[tuple[int, list[int]]] = []
    for s in senders:
        layer, slot = graph.sender_slot(s)
        if not out or out[-1][0] != layer:
            out.append((layer, []))
        out[-1][1].append(slot)
    return out
