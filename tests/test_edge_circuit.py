"""Edge-level circuit evaluation (`interp.edge_circuit`) and `interp evaluate-circuit`'s level."""

import json

import pytest
import torch

from interp.circuit import evaluate
from interp.circuits.format import parse_circuit
from interp.cli import main
from interp.edge_circuit import evaluate_edges
from interp.ioi.dataset import build_ioi
from interp.patching import prepare_runs

GROUPS = """\
groups:
  a: {nodes: [L0H1, L1H2], positions: [END]}
  b: {nodes: [L0H3], positions: [S2]}
  c: [L1H0]
"""


@pytest.fixture(scope="module")
def runs(tiny):
    return prepare_runs(tiny, build_ioi(tiny, n_prompts=8, seed=0).batch)


def _all_pairs(text: str) -> str:
    names = ("a", "b", "c")
    lines = [f"  - {{from: {s}, to: {r}}}" for s in names for r in (*names, "logits")]
    return text + "edges:\n" + "\n".join(lines) + "\n"


def test_a_node_circuit_as_all_its_edges_is_the_node_evaluation(tiny, runs):
    spec = parse_circuit(_all_pairs(GROUPS), model=tiny)
    edges = evaluate_edges(tiny, runs, spec)
    nodes = evaluate(tiny, runs, spec.circuit(), spec.group_nodes())
    for key in ("F_C", "F_M", "F_all_heads_ablated"):
        assert edges["faithfulness"][key] == pytest.approx(nodes["faithfulness"][key], abs=1e-5)
        assert edges["node_level_faithfulness"][key] == nodes["faithfulness"][key]
    for name, c in nodes["completeness"].items():
        for key in ("F_C_minus_K", "F_M_minus_K"):
            assert edges["completeness"][name][key] == pytest.approx(c[key], abs=1e-5)
    fewer = parse_circuit(GROUPS + "edges:\n  - {from: a, to: logits}\n", model=tiny)
    assert abs(evaluate_edges(tiny, runs, fewer)["faithfulness"]["F_C"]
               - nodes["faithfulness"]["F_C"]) > 1e-4  # fewer edges: a different circuit


def test_minimality_per_file_edge(tiny, runs):
    spec = parse_circuit(GROUPS + "edges:\n  - {from: a, to: logits}\n"
                         "  - {from: b, to: c, input: v}\n", model=tiny)
    mini = evaluate_edges(tiny, runs, spec)["minimality"]["per_node"]
    assert list(mini) == ["a -> logits", "b -> c.v"]
    assert all(torch.isfinite(torch.tensor(v["contribution"])) for v in mini.values())


def test_minimality_is_skipped_for_files_with_many_edges(tiny, runs, monkeypatch):
    """Above the cap no per-edge runs are made, and faithfulness is unchanged."""
    import interp.edge_circuit as edge_circuit

    spec = parse_circuit(GROUPS + "edges:\n  - {from: a, to: logits}\n"
                         "  - {from: b, to: c, input: v}\n", model=tiny)
    full = evaluate_edges(tiny, runs, spec)
    monkeypatch.setattr(edge_circuit, "MAX_MINIMALITY_EDGES", 1)
    capped = evaluate_edges(tiny, runs, spec)
    assert "2 file edges > 1" in capped["minimality"]["skipped"]
    assert capped["faithfulness"]["F_C"] == pytest.approx(full["faithfulness"]["F_C"], abs=1e-6)
    assert capped["faithfulness"]["forward_equivalents"] < full["faithfulness"][
        "forward_equivalents"]


@pytest.mark.parametrize("edges,level", [(True, "edges"), (False, "nodes")])
def test_evaluate_circuit_records_the_level(tmp_path, edges, level):
    path = tmp_path / "c.yaml"
    path.write_text(GROUPS + ("edges:\n  - {from: a, to: logits}\n"
                              "  - {from: b, to: c, input: v}\n" if edges else ""))
    assert main(["evaluate-circuit", "--task", "ioi", "--circuit", str(path), "--model",
                 "random:tiny", "--n-prompts", "6", "--out", str(tmp_path)]) == 0
    summary = json.loads(next(tmp_path.glob("random-tiny/evaluate-ioi-c/summary.json"))
                         .read_text())
    assert summary["level"] == level
    minimums = {k: v["minimum_forward_equivalents"] for k, v in summary["costs"].items()
                if v["minimum_forward_equivalents"] is not None}
    assert minimums["runs"] == 2.0 and sum(minimums.values()) > 2.0
    for stage, minimum in minimums.items():  # a lower bound: never above what was counted
        assert summary["costs"][stage]["forward_equivalents"] >= minimum - 1e-9, stage
    if edges:  # C \\ K and C \\ e change from their layers on: not free
        assert minimums["edge_completeness"] > 0 and minimums["edge_minimality"] > 0


def test_empty_circuit_from_the_reads_equals_the_edge_ablated_run(tiny, runs):
    """F(0) with implicit embeddings and MLPs comes from the read positions alone
    (`all_heads_ablated`); it equals the edge engine's run of the implicit edges."""
    from interp.edge_ablation import EdgeAblation
    from interp.edge_circuit import implicit_only

    spec = parse_circuit(GROUPS + "edges:\n  - {from: a, to: logits}\n", model=tiny)
    got = evaluate_edges(tiny, runs, spec)["faithfulness"]["F_all_heads_ablated"]
    ev = EdgeAblation(tiny, runs)
    plain = ev.metrics([implicit_only(ev, spec)]).mean().item()
    assert got == pytest.approx(plain, abs=1e-5)
    from_embed = parse_circuit(GROUPS + "edges:\n  - {from: embed, to: a}\n", model=tiny)
    assert from_embed.implicit()[0] is False  # the edge-ablated run, embeddings to `a` only
    other = evaluate_edges(tiny, runs, from_embed)["faithfulness"]["F_all_heads_ablated"]
    assert other == pytest.approx(ev.metrics([implicit_only(ev, from_embed)]).mean().item(),
                                  abs=1e-6)


def test_model_minus_a_group_equals_the_edge_ablated_run(tiny, runs):
    """F(M \\ K) of a group of heads comes from the node engine; it equals the edge
    engine's run of every edge but K's (a group with an MLP takes that run itself)."""
    from interp.edge_ablation import EdgeAblation
    from interp.edge_circuit import without_senders

    text = GROUPS + "  d: [MLP0, L1H1]\nedges:\n  - {from: a, to: logits}\n"
    spec = parse_circuit(text, model=tiny)
    got = evaluate_edges(tiny, runs, spec)["completeness"]
    ev = EdgeAblation(tiny, runs)
    for name, members in spec.group_nodes().items():
        senders = [ev.graph.sender_index(n) for n in members]
        plain = ev.metrics([without_senders(ev.full(), senders)]).mean().item()
        assert got[name]["F_M_minus_K"] == pytest.approx(plain, abs=1e-5), name
