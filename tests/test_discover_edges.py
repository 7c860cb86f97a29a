"""Edge-level discovery: EAP scores cover exactly the edge graph (MHA and GQA), and the
faithfulness curve's endpoints are the engine's full model and empty circuit."""

import pytest
import torch

from interp.attribution import edge_attribution
from interp.discover import RECEIVERS, discover, eap_edges
from interp.edge_ablation import EdgeAblation
from interp.edges import EMBED, LOGITS, Edge, EdgeGraph
from interp.nodes import Head, parse_node
from interp.patching.runs import prepare_runs
from interp.tasks.registry import get_task
from tests.tiny_families import tiny_model


@pytest.fixture(scope="module", params=["tiny", "llama"])
def model(request):
    import interp

    return interp.load_model("random:tiny", device="cpu") if request.param == "tiny" \
        else tiny_model("llama")


def test_eap_edges_are_the_edge_graph_and_share_gqa_scores(model):
    batch = get_task("ioi").build(model, 4, 0)
    scores = edge_attribution(model, batch, receivers=RECEIVERS)
    ranked = eap_edges(scores)
    edges = [e for e, _ in ranked]
    assert len(edges) == len(set(edges))
    assert set(edges) == set(EdgeGraph.of(model).edges())
    assert [abs(s) for _, s in ranked] == sorted((abs(s) for _, s in ranked), reverse=True)
    assert ranked == _eap_edges_by_hand(scores)  # the same edges, shares and tie order
    by_edge = dict(ranked)
    groups = scores.kv_groups
    checked = 0
    for sender, receiver, value in scores.edges():
        if not receiver.endswith((".k", ".v")):
            continue
        name, kind = receiver.split(".")
        layer, index = (int(x) for x in name[1:].replace("KV", "H").split("H"))
        heads = [Head(layer, index * groups + i) for i in range(groups)] if "KV" in name \
            else [Head(layer, index)]
        source = EMBED if sender == "INPUT" else parse_node(sender)
        shares = [by_edge[Edge(source, head, kind)] for head in heads]
        assert sum(shares) == pytest.approx(value, rel=1e-5, abs=1e-9)  # KV score, shared
        checked += 1
    assert checked > 0


def test_curve_endpoints_are_the_full_model_and_no_edges(model):
    batch = get_task("ioi").build(model, 6, 0)
    runs = prepare_runs(model, batch)
    result = discover(model, batch, progress=False, runs=runs, node_level=True)
    ev = EdgeAblation(model, runs)
    f_full, f_empty = ev.metrics([ev.full(), ev.empty()]).mean(-1).tolist()
    last = result.points[-1]
    assert last.n_edges == result.n_edges_total == len(EdgeGraph.of(model).edges())
    assert last.metric == pytest.approx(result.f_model, abs=1e-5)
    assert result.f_model == pytest.approx(f_full, abs=1e-5)
    assert result.f_empty == pytest.approx(f_empty, abs=1e-6)
    assert last.normalised == pytest.approx(1.0, abs=1e-4)
    assert last.node_normalised == pytest.approx(1.0, abs=1e-4)  # every node kept
    for point in result.points:  # each point = the engine on its own top-k edge set
        [value] = ev.metrics([{e for e, _ in result.ranked[:point.n_edges]}]).mean(-1).tolist()
        assert point.metric == pytest.approx(value, abs=1e-5)
    assert set(result.stages) >= {"edge scores", "faithfulness curve (edge ablation)"}
    assert all(s["forward_equivalents"] >= s["minimum_forward_equivalents"] >= 0
               for s in result.stages.values())


def test_edge_runs_hold_what_the_edge_scores_read(model):
    """The edge scores take both runs' sender outputs from discover's lean caches
    (`edge_runs`; a missing hook would cost a forward of its own), and get the scores of a
    forward of each run."""
    from interp.attribution import _from_runs
    from interp.edge_ablation import edge_runs

    batch = get_task("ioi").build(model, 4, 0)
    runs = edge_runs(model, batch)
    cached = _from_runs(model, batch, runs)
    index = torch.arange(len(batch))
    assert cached("clean", index) is not None and cached("corrupted", index) is not None
    lean = edge_attribution(model, batch, receivers=RECEIVERS, runs=runs)
    fresh = edge_attribution(model, batch, receivers=RECEIVERS)
    assert torch.allclose(lean.scores, fresh.scores, atol=1e-6)
    assert "blocks.0.attn.hook_pattern" not in runs.clean_cache  # only what is read


def _eap_edges_by_hand(scores):
    """`eap_edges` as plain Python: every valid (sender, receiver) in row-major order, sorted
    by |score|; a GQA k/v score split over its query heads; sorted again by |share|."""
    rows = [(s, r, float(scores.scores[s, r])) for s in range(len(scores.senders))
            for r in range(len(scores.receivers)) if scores.valid[s, r]]
    rows.sort(key=lambda row: -abs(row[2]))
    out = []
    for s, r, value in rows:
        name = scores.senders[s]
        sender = EMBED if name == "INPUT" else parse_node(name)
        receiver = scores.receivers[r]
        if receiver == "LOGITS":
            targets = [(LOGITS, None)]
        elif receiver.startswith("MLP"):
            targets = [(parse_node(receiver), None)]
        else:
            head, kind = receiver.split(".")
            layer, index = (int(x) for x in head[1:].replace("KV", "H").split("H"))
            groups = scores.kv_groups if "KV" in head else 1
            targets = [(Head(layer, index * groups + i), kind) for i in range(groups)]
        out += [(Edge(sender, t, kind), value / len(targets)) for t, kind in targets]
    return sorted(out, key=lambda pair: -abs(pair[1]))
