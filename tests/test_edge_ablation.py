"""Identities of exact edge ablation (`interp.edge_ablation`), on random:tiny (GPT-2) and a
tiny GQA Llama (2 query heads per key/value head), each against an independent computation:
the cached clean run, hooked bridge forwards, `path_patch` and `MeanAblation`."""

from dataclasses import replace

import pytest
import torch

import interp
from interp.edge_ablation import EdgeAblation, EdgeAblationUnsupported, check_edges_supported
from interp.edges import EMBED, LOGITS, Edge
from interp.ioi.dataset import build_ioi
from interp.mean_ablation import MeanAblation, group_means, keep_mask
from interp.metrics import logits_at
from interp.nodes import Head, Mlp
from interp.patching import prepare_runs
from interp.patching.path import Receiver, path_patch
from tests.tiny_families import tiny_model

MODELS = ("tiny", "llama")


def _load(name: str, constant_mlps: bool = False):
    model = interp.load_model("random:tiny", device="cpu") if name == "tiny" else \
        tiny_model("llama")
    if constant_mlps:  # MLP out = its bias: every path from a head is its direct edge
        for block in model.blocks:
            for pname, p in block.mlp.original_component.named_parameters():
                if pname.split(".")[0] in ("c_proj", "down_proj") and pname.endswith("weight"):
                    p.data.zero_()
    return model


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    model = _load(request.param)
    return model, prepare_runs(model, build_ioi(model, n_prompts=6, seed=0).batch)


@pytest.fixture(scope="module", params=MODELS)
def constant_mlp_case(request):
    model = _load(request.param, constant_mlps=True)
    runs = prepare_runs(model, build_ioi(model, n_prompts=6, seed=0).batch)
    one = replace(runs.batch, groups=torch.arange(len(runs.batch)))  # a_s = corrupted prompt i
    return model, replace(runs, batch=one)


def _forced(ev, mask):
    """`mask` with the edge embed -> first receiver kept through a positional entry at every
    position: the same edge set, but the run can no longer resume from a base."""
    mask = mask.copy()
    if mask.keep[0, 0]:
        mask.keep[0, 0] = False
        mask.at[(0, 0)] = torch.ones(len(ev.batch), ev.seq, dtype=torch.bool)
    return mask


def test_all_edges_kept_is_the_clean_model(case):
    model, runs = case
    ev = EdgeAblation(model, runs)
    got = ev.metrics([_forced(ev, ev.full())])[0]
    assert torch.allclose(got, runs.clean_metric, atol=1e-4)
    assert ev.n_forwards == 1


def test_no_edge_kept_is_every_sender_ablated(case):
    model, runs = case
    ev = EdgeAblation(model, runs)
    got = ev.metrics([ev.empty()])[0]
    nodes = MeanAblation(model, runs)
    hooks = nodes.hooks([nodes.ablation({Mlp(0): []})])  # every head and every MLP ablated
    embed = group_means(runs.corrupted_cache["blocks.0.hook_resid_pre"], runs.batch.groups)
    hooks.append(("blocks.0.hook_resid_pre", lambda act, hook=None: embed))
    with model.hooks(fwd_hooks=hooks):
        logits = model(runs.batch.clean_tokens)
    want = runs.batch.metric(logits_at(logits, runs.batch.read_positions))
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, runs.clean_metric, atol=1e-2)


def test_node_circuit_as_its_edges_is_node_evaluation(case):
    model, runs = case
    ev = EdgeAblation(model, runs)
    circuits = [{Head(0, 1): None, Head(1, 2): ["END"], Head(1, 3): ["END", "S2"]},
                {Head(0, 0): ["S1+1"], Head(0, 2): None, Mlp(0): None, Mlp(1): ["END"]},
                {}]
    got = ev.metrics([ev.node_mask(c) for c in circuits])
    want = MeanAblation(model, runs).metrics(circuits)
    assert torch.allclose(got, want, atol=1e-4)


def _without(ev, mask, edge, ablated_at=None):
    r, s = ev.graph.index(edge)
    out = mask.without(r, s)
    if ablated_at is not None:  # ablated only at that named position
        out.at[(r, s)] = ~keep_mask(ev.batch, [ablated_at], ev.seq)
    return out


def test_one_edge_with_corrupted_values_is_path_patching(constant_mlp_case):
    model, runs = constant_mlp_case
    ev = EdgeAblation(model, runs)
    full = ev.full()
    sender = Head(0, 1)
    cases = [(Edge(Head(1, 2), LOGITS), None, "logits"),
             (Edge(sender, LOGITS), None, "logits"),
             (Edge(sender, Head(1, 3), "q"), "END", [Receiver(Head(1, 3), "q", "END")]),
             (Edge(sender, Head(1, 1), "k"), "S2", [Receiver(Head(1, 1), "k", "S2")]),
             (Edge(sender, Head(1, 2), "v"), "S1+1", [Receiver(Head(1, 2), "v", "S1+1")])]
    for edge, where, receivers in cases:
        got = (ev.metrics([_without(ev, full, edge, where)])[0] - runs.clean_metric).mean()
        want = path_patch(model, runs, [edge.sender], receivers, progress=False)[0]
        assert abs(got - want) < 1e-6, (str(edge), got, want)
        if edge.input in (None, "v") or model.cfg.n_key_value_heads:  # tiny GPT-2's random
            assert abs(want) > 3e-5, str(edge)  # attention is near-uniform: q, k barely move


def test_gqa_kv_edge_is_seen_by_its_query_head_only(case):
    model, runs = case
    ev = EdgeAblation(model, runs)
    full = ev.full()
    into = [ev.metrics([_without(ev, full, Edge(EMBED, Head(1, h), "v"))])[0] for h in (0, 1)]
    assert not torch.allclose(into[0], into[1], atol=1e-5)  # heads 0, 1 share a KV head on GQA


def test_batched_and_resumed_runs_equal_single_runs(case):
    model, runs = case
    ev = EdgeAblation(model, runs)
    full = ev.full()
    sets = [_without(ev, full, Edge(Head(0, h), Head(1, h), "q")) for h in range(3)]
    sets += [ev.empty(), _without(ev, ev.empty(), Edge(EMBED, Mlp(1)))]
    ev.add_base(sets[3])
    sparse = ev.node_mask({Head(0, 1): None, Head(0, 3): ["S2"], Head(1, 2): ["END"]})
    ev.add_base(sparse)  # resumed runs of its variants drop senders that no edge keeps
    sets += [_without(ev, sparse, Edge(Head(0, 1), Head(1, 2), "v")),
             _without(ev, sparse, Edge(Head(0, 1), LOGITS)),
             _without(ev, sparse, Edge(Head(1, 2), LOGITS))]
    together = torch.cat([ev.metrics(sets[:5]), ev.metrics(sets[5:])])  # apart: fewer live
    alone = torch.cat([EdgeAblation(model, runs, budget_gb=1e-9).metrics([_forced(ev, s)])
                       for s in sets])
    assert torch.allclose(together, alone, atol=1e-5)


def test_chunks_side_by_side_equal_one_by_one(case):
    """On 2 CPU threads the chunks run side by side (one thread each, longest first) and give
    the 1-thread loop's metrics in the callers' order, with the same forward count."""
    from tests.patching.torch_threads import torch_threads

    model, runs = case
    ev = EdgeAblation(model, runs)
    full = ev.full()
    sets = [_without(ev, full, Edge(Head(0, h), Head(1, h), "q")) for h in range(2)]
    sets += [ev.empty(), ev.node_mask({Head(0, 1): None, Head(1, 2): ["END"]}),
             _without(ev, full, Edge(EMBED, Mlp(1)))]
    counts, values = [], []
    for threads in (1, 2):
        ev = EdgeAblation(model, runs, budget_gb=1e-9)  # one set per chunk
        with torch_threads(threads):
            values.append(ev.metrics(sets))
            assert torch.get_num_threads() == threads
        counts.append(ev.n_forwards)
    alone = torch.cat([EdgeAblation(model, runs).metrics([s]) for s in sets])
    assert torch.allclose(values[0], alone, atol=1e-5)  # each set's value in its place
    assert torch.allclose(values[1], alone, atol=1e-5)
    assert len({round(v, 4) for v in alone.mean(1).tolist()}) >= 3  # different circuits
    assert counts[0] == counts[1] > 0


def test_edges_with_positions(case):
    model, runs = case
    ev = EdgeAblation(model, runs)
    edge = Edge(Head(0, 1), Head(1, 0), "v")
    r, s = ev.graph.index(edge)
    ablated = ev.full().without(r, s)
    by_name, by_tensor = ablated.copy(), ablated.copy()
    by_name.at[(r, s)] = ("S2",)
    by_tensor.at[(r, s)] = keep_mask(ev.batch, ["S2"], ev.seq)
    named = ev.mask([e for e in ev.graph.edges() if e != edge] + [replace(edge, positions=("S2",))])
    got = ev.metrics([by_name, by_tensor, named, ablated, _forced(ev, ev.full())])
    assert torch.allclose(got[0], got[1], atol=1e-6)
    assert torch.allclose(got[0], got[2], atol=1e-6)
    assert not torch.allclose(got[0], got[3], atol=1e-5)  # kept at S2 differs from ablated
    assert not torch.allclose(got[0], got[4], atol=1e-5)  # ... and from kept everywhere


def test_unsupported_family_is_refused_in_one_line():
    model = tiny_model("gemma2")
    with pytest.raises(EdgeAblationUnsupported, match="node level") as err:
        check_edges_supported(model)
    assert "\n" not in str(err.value)
    olmo = tiny_model("olmo2")
    with pytest.raises(EdgeAblationUnsupported, match="Olmo2ForCausalLM"):
        check_edges_supported(olmo)


def _sparse_mask(ev):
    """Embeddings and MLPs into everything, plus L0H1 -> L1H2.q: L0H1 feeds one receiver."""
    g = ev.graph
    mask = ev.empty()
    mask.keep[:, 0] = True
    for layer in range(g.n_layers):
        mask.keep[:, g.sender_index(Mlp(layer))] = True
    mask.keep[g.index(Edge(Head(0, 1), Head(1, 2), "q"))] = True
    return mask


def test_held_deltas_only_equal_every_live_sender_held(case, monkeypatch):
    """A run holds D_s only for the live senders some receiver reads ablated (the full
    model minus a sender holds none); its metrics equal runs that hold every live sender
    (a base run) and, for the full model minus a sender, the node-level ablation."""
    import interp.edge_ablation as engine

    model, runs = case
    ev = EdgeAblation(model, runs)
    g = ev.graph
    held = []
    allocate = engine._State.allocate
    monkeypatch.setattr(engine._State, "allocate",
                        lambda self, like: (held.append(len(self.cols)), allocate(self, like)))
    sparse = _sparse_mask(ev)
    minus = ev.full()
    minus.keep[:, g.sender_index(Head(0, 2))] = False
    got = torch.cat([ev.metrics([sparse]), ev.metrics([minus])])
    assert ev.bases[0].deltas is None  # the clean base's D_s are computed on demand
    assert held == [1, 0]  # sparse: L0H1 (ablated except into L1H2.q); minus: none
    dense = EdgeAblation(model, runs)
    for mask, value in zip((sparse, minus), got, strict=True):
        dense.add_base(mask)  # holds the D_s of every live sender
        assert torch.allclose(value, dense.bases[-1].metric, atol=1e-5)
    nodes = MeanAblation(model, runs).metrics([{Head(la, h): None for la in range(2)
                                                for h in range(4) if (la, h) != (0, 2)}])
    assert torch.allclose(got[1], nodes[0], atol=1e-4)


def test_resuming_from_bases_that_dropped_or_lack_senders(case):
    """Bases compute only their live senders: a set keeping a sender its base lacks starts
    at that sender's layer, and a base resumed from another base without one of its
    senders subtracts that sender at every later layer; all equal fresh single runs."""
    model, runs = case
    ev = EdgeAblation(model, runs)
    g = ev.graph
    first = _sparse_mask(ev)
    ev.add_base(first)
    second = first.without(*g.index(Edge(Head(0, 1), Head(1, 2), "q")))  # L0H1 now dead
    ev.add_base(second)
    assert ev._best_base(second, ev._live([second]))[1] != 0
    third = second.without(*g.index(Edge(EMBED, Head(1, 0), "v")))
    fourth = second.copy()
    fourth.keep[g.index(Edge(Head(0, 3), LOGITS))] = True  # L0H3: computed by no base
    assert ev._best_base(fourth, ev._live([fourth]))[1] == 0
    got = ev.metrics([third, fourth])
    fresh = EdgeAblation(model, runs)
    want = torch.cat([fresh.metrics([_forced(fresh, m)]) for m in (third, fourth)])
    assert torch.allclose(got, want, atol=1e-5)


def test_entries_for_edges_the_graph_lacks_do_not_stop_resuming(case):
    """The full model minus a layer-1 head, written with its column cleared for every
    receiver (earlier ones cannot read it), resumes from the clean run at layer 1."""
    model, runs = case
    ev = EdgeAblation(model, runs)
    minus = ev.full()
    minus.keep[:, ev.graph.sender_index(Head(1, 1))] = False
    got = ev.metrics([minus])
    assert ev.n_forwards == 0.5
    fresh = EdgeAblation(model, runs)
    assert torch.allclose(got, fresh.metrics([_forced(fresh, minus)]), atol=1e-5)
    assert fresh.n_forwards == 1


def test_receiver_inputs_equal_the_plain_masked_sum(case):
    """`_inputs` (a shared sum for the columns every row ablates or keeps, the kept
    complement, differing columns sliced or gathered) equals R - A @ D + P * (B_P @ D)
    written out, for two items in one batch: one whose rows ablate most senders (the
    complement; differing columns 0 and 5, gathered) and one whose rows keep most (the
    direct sum; differing columns 1, 2, 4, sliced with column 3, which every row ablates,
    in between), with an edge kept only at END."""
    import interp.edge_ablation as engine

    model, runs = case
    ev = EdgeAblation(model, runs)
    g, h = ev.graph, model.cfg.n_heads
    rows = list(range(g.per_layer, g.per_layer + 3 * h))  # layer 1's q, k, v receivers
    n = g.senders_before(1)
    assert n == 6  # the embeddings and layer 0's heads and MLP
    most_ablated, most_kept = ev.empty(), ev.full()
    most_kept.keep[rows, 3] = False
    for i, row in enumerate(rows):
        most_ablated.keep[row, 0] = i % 2 == 0
        most_ablated.keep[row, 5] = i % 3 == 0
        most_kept.keep[row, 1] = most_kept.keep[row, 4] = i % 2 == 0
        most_kept.keep[row, 2] = i % 3 == 0
    most_kept.at[(rows[1], 1)] = ("END",)
    masks = [most_ablated, most_kept]
    everything = torch.ones(g.n_senders, dtype=torch.bool)
    state = engine._State(everything, everything, masks, ev._kept_at(masks), g)
    resid = torch.randn(2, len(ev.batch), ev.seq, model.cfg.d_model, dtype=torch.float64)
    state.allocate(resid[0])
    state.deltas.normal_()
    for receivers, senders in ((rows, n), ([g.per_layer + 3 * h], g.senders_before(1, True))):
        got = ev._inputs(state, resid, receivers, senders)
        end = keep_mask(ev.batch, ["END"], ev.seq)[..., None]
        for item, mask in enumerate(masks):
            for j, r in enumerate(receivers):
                want = resid[item].clone()
                for s in range(senders):
                    if not mask.keep[r, s]:
                        kept_here = end if (r, s) in mask.at else torch.zeros_like(end)
                        want -= torch.where(kept_here, 0.0, state.deltas[item, s])
                assert torch.allclose(got[item, j], want, atol=1e-10), (item, r)
    for cols in (5, 2, 6):  # the running prefix sums, extended, then an earlier prefix
        for item in range(2):
            want = state.deltas[item, :cols].sum(0)
            assert torch.allclose(state.running_sum(item, cols), want, atol=1e-10), cols
