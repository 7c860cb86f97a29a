"""Circuit hypothesis files: one-line errors with line numbers, round trip, the paper file."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from interp.circuits.format import CircuitFormatError, load_circuit, parse_circuit, to_yaml
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
    (GOOD.replace("to: movers", "to: mover"), 9, ["unknown group 'mover'"]),
    (GOOD.replace("from: movers", "from: late"), 10, ["unknown group 'late'"]),
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
