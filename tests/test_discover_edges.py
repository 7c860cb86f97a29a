"""Edge-level discovery: EAP scores cover exactly the edge graph (MHA and GQA), and the
faithfulness curve's endpoints are the engine's full model and empty circuit."""

import pytest

from interp.attribution import edge_attribution
from interp.discover import RECEIVERS, discover, eap_edges
from interp.edge_ablation import EdgeAblation
from interp.edges import EMBED, Edge, EdgeGraph
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
