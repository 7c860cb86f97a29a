"""Circuit hypothesis files: one-line errors with line numbers, round trip, the paper file."""

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from interp.circuits.format import (
    MAX_BYTES,
    CircuitFormatError,
    load_circuit,
    parse_circuit,
    to_yaml,
)
from interp.nodes import Head, Mlp

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "circuits" / "ioi_gpt2_small_paper.yaml"
GPT2 = SimpleNamespace(cfg=SimpleNamespace(n_layers=12, n_heads=12))
TINY = SimpleNamespace(cfg=SimpleNamespace(n_layers=2, n_heads=4))

GOOD = """\
name: demo
ablation: mean
groups:
  movers:
    nodes: [L1H2, L1H3]
    positions: [END]
  early: [L0H1, MLP0]
edges:
  - {from: early, to: movers, input: v}
  - {from: movers, to: logits}
"""

# (text, line of the problem, words the message must contain)
BAD = [
    (GOOD.replace("L1H3", "L1X3"), 5, ["unknown node 'L1X3'", "L{layer}H{head}"]),
    (GOOD.replace("to: movers", "to: mover"), 9, ["unknown group or node 'mover'"]),
    (GOOD.replace("from: movers", "from: late"), 10, ["unknown group or node 'late'"]),
    (GOOD.replace("ablation: mean", "ablation: median"), 2, ["bad ablation 'median'"]),
    (GOOD.replace("input: v", "input: z"), 9, ["bad edge input 'z'"]),
    (GOOD.replace("    positions: [END]\n", "    position: [END]\n"), 6, ["unknown key"]),
    (GOOD.replace("nodes: [L1H2, L1H3]", "nodes: [L1H2, L1H3"), 6, ["not valid YAML"]),
    ("name: x\n", 1, ["no 'groups:'"]),
    (GOOD.replace("  early: [L0H1, MLP0]\n", "  early: []\n"), 7, ["empty"]),
]


@pytest.mark.parametrize("text,line,words", BAD)
def test_malformed_files_give_one_line_with_the_line_number(tmp_path, text, line, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CircuitFormatError) as err:
        load_circuit(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message


def test_range_checks_against_the_model_name_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace("L0H1", "L0H7"))
    load_circuit(path, model=GPT2)  # fine for 12 heads
    with pytest.raises(CircuitFormatError, match=rf"^{path}:7: L0H7: head 7 out of range"):
        load_circuit(path, model=TINY)
    with pytest.raises(CircuitFormatError, match=r":11: L9H9: layer 9 out of range"):
        load_circuit(PAPER, model=TINY)


def test_unknown_position_for_the_task(tmp_path):
    with pytest.raises(CircuitFormatError, match=r":4: group 'movers': unknown position 'END'"):
        parse_circuit(GOOD, "c.yaml", positions={"YY": None})


def test_parse_and_round_trip():
    spec = parse_circuit(GOOD, "c.yaml", model=TINY)
    assert spec.circuit() == {Head(1, 2): ["END"], Head(1, 3): ["END"], Head(0, 1): None,
                              Mlp(0): None}
    assert [(e.sender, e.receiver, e.input) for e in spec.edges] == [
        ("early", "movers", "v"), ("movers", "logits", None)]
    assert parse_circuit(to_yaml(spec)) == spec


def test_union_of_positions_when_a_node_is_in_two_groups():
    text = ("groups:\n  a: {nodes: [L1H1], positions: [S2]}\n"
            "  b: {nodes: [L1H1], positions: [END]}\n")
    assert parse_circuit(text).circuit() == {Head(1, 1): ["END", "S2"]}


def test_paper_circuit_has_the_26_heads_in_7_classes():
    spec = load_circuit(PAPER, model=GPT2, positions={"IO": 0, "S1": 0, "S1+1": 0, "S2": 0,
                                                      "END": 0})
    groups = spec.group_nodes()
    assert len(groups) == 7 and len(spec.circuit()) == 26
    assert groups["name_movers"] == [Head(9, 9), Head(9, 6), Head(10, 0)]
    assert groups["previous_token"] == [Head(2, 2), Head(4, 11)]
    assert spec.groups["previous_token"].positions == ["S1+1"]
    assert parse_circuit(to_yaml(spec)) == spec


def test_empty_circuit_is_allowed_and_round_trips():
    spec = parse_circuit("name: nothing\ngroups: {}\n")
    assert spec.circuit() == {} and parse_circuit(to_yaml(spec)) == spec


def _one_line_error(path) -> str:
    with pytest.raises(CircuitFormatError) as err:
        load_circuit(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_non_utf8_file_names_the_file_and_line(tmp_path):
    # BUG before the fix: a raw UnicodeDecodeError without the file name.
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("demo", "d\xe9mo").encode("latin-1"))
    assert "not UTF-8" in _one_line_error(path) and f"{path}:1:" in _one_line_error(path)


def test_folder_is_refused(tmp_path):
    # BUG before the fix: IsADirectoryError traceback.
    assert "is a folder" in _one_line_error(tmp_path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_circuit(tmp_path / "nope.yaml")
    with pytest.raises(CircuitFormatError):
        load_circuit(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", [
    "groups:\n  g: " + "[" * 100_000 + "]" * 100_000 + "\n",   # flow style
    "groups:\n  g:\n" + "- " * 100_000 + "L0H1\n",               # block style
    "groups:\n  g:\n    nodes: [[[[[[[[L0H1]]]]]]]]\n",            # just past MAX_DEPTH
])
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path, text):
    # BUG before the fix: RecursionError traceback for 100,000 levels.
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    message = _one_line_error(path)
    assert "nested more than" in message or "not valid YAML" in message


def test_huge_file_is_refused_before_parsing(tmp_path):
    # BUG before the fix: a 1M-node file was accepted after 127 s (and parsed twice).
    path = tmp_path / "huge.yaml"
    line = "    - L1H1\n"
    path.write_text("groups:\n  g:\n" + line * (MAX_BYTES // len(line) + 1))
    t0 = time.perf_counter()
    assert f"at most {MAX_BYTES:,}" in _one_line_error(path)
    assert time.perf_counter() - t0 < 1


def test_70k_node_file_parses_fast(tmp_path):
    nodes = "".join(f"    - L{i % 12}H{i % 12}\n" for i in range(70_000))
    path = tmp_path / "big.yaml"
    path.write_text("groups:\n  g:\n" + nodes)
    assert path.stat().st_size <= MAX_BYTES
    t0 = time.perf_counter()
    spec = load_circuit(path, model=GPT2)
    assert len(spec.groups["g"].nodes) == 70_000 and spec.groups["g"].node_lines[-1] == 70_002
    assert time.perf_counter() - t0 < 10


EDGES = """\
groups:
  movers:
    nodes: [L1H2, L1H3]
    positions: [END]
  early: [L0H1]
edges:
  - {from: early, to: movers, input: v}
  - {from: L0H1, to: L1H2, input: q, positions: [S2]}
  - {from: embed, to: MLP1}
  - {from: MLP0, to: logits}
"""

# (replace, by, line of the problem, words the message must contain)
BAD_EDGES = [
    ("from: L0H1, to: L1H2", "from: L0X1, to: L1H2", 8, ["unknown group or node 'L0X1'"]),
    ("to: MLP1}", "to: embed}", 9, ["'embed' cannot be an edge's 'to'"]),
    ("from: MLP0", "from: logits", 10, ["'logits' cannot be an edge's 'from'"]),
    ("to: MLP1}", "to: MLP1, input: q}", 9, ["bad edge input 'q'", "MLP"]),
    ("positions: [S2]}", "positions: {a: 1}}", 8, ["a position must be a single value"]),
    ("positions: [S2]}", "position: [S2]}", 8, ["unknown key 'position'"]),
]


@pytest.mark.parametrize("old,new,line,words", BAD_EDGES)
def test_malformed_edges_give_one_line_with_the_line_number(tmp_path, old, new, line, words):
    path = tmp_path / "e.yaml"
    path.write_text(EDGES.replace(old, new))
    message = _one_line_error(path)
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message, message


def test_edges_checked_against_the_model_and_the_task(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(EDGES.replace("from: L0H1, to: L1H2", "from: L1H2, to: L0H1"))
    with pytest.raises(CircuitFormatError, match=rf"^{path}:8: no edge L1H2 -> L0H1"):
        load_circuit(path, model=TINY)
    path.write_text(EDGES.replace("to: MLP1}", "to: MLP7}"))
    with pytest.raises(CircuitFormatError, match=rf"^{path}:9: MLP7: layer 7 out of range"):
        load_circuit(path, model=TINY)
    path.write_text(EDGES)
    with pytest.raises(CircuitFormatError, match=rf"^{path}:8: .*unknown position 'S2'"):
        load_circuit(path, model=TINY, positions={"END": 0})


def test_edges_expand_to_node_pairs_and_round_trip():
    from interp.edges import EMBED, LOGITS, Edge, EdgeGraph

    spec = parse_circuit(EDGES, "e.yaml", model=TINY)
    assert parse_circuit(to_yaml(spec)) == spec
    graph = EdgeGraph(2, 4, parallel=False)
    assert spec.edge_list(graph) == [
        Edge(Head(0, 1), Head(1, 2), "v"), Edge(Head(0, 1), Head(1, 3), "v"),
        Edge(Head(0, 1), Head(1, 2), "q", ("S2",)), Edge(EMBED, Mlp(1)), Edge(Mlp(0), LOGITS)]
    assert spec.implicit() == (False, False)  # it names embed and MLPs: nothing implicit
    assert set(spec.kept_edges(graph)) == set(spec.edge_list(graph))
    movers = parse_circuit(GOOD.replace("MLP0", "L0H2").replace(
        "{from: early, to: movers, input: v}", "{from: early, to: movers}"))
    edges = movers.edge_list(graph)
    assert Edge(Head(0, 1), Head(1, 2), "k") in edges  # no input: q, k and v
    assert Edge(Head(1, 2), LOGITS, None, ("END",)) in edges  # the sender group's positions
    kept = set(movers.kept_edges(graph))  # embeddings and MLPs implicit
    assert Edge(EMBED, Head(1, 0), "q") in kept and Edge(Mlp(0), LOGITS) in kept
    assert Edge(Head(1, 3), Mlp(1), None, ("END",)) in kept  # circuit heads feed the MLPs
    assert Edge(Head(0, 0), Mlp(1)) not in kept  # a head outside the circuit does not
    assert Edge(Head(0, 1), Head(1, 0), "q") not in kept
