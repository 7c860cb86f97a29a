"""The IOI classes' edges (`interp.ioi.edges`), on hand-built class lists."""

from interp.circuits.format import parse_circuit, to_yaml
from interp.ioi.edges import class_edges, classified_spec


def _triples(edges):
    return [(e.sender, e.receiver, e.input) for e in edges]


def test_edges_between_found_classes_only():
    classes = {"name_movers": ["L9H9"], "s_inhibition": ["L7H3"], "induction": [],
               "duplicate_token": ["L3H0"], "previous_token": ["L2H2"]}
    assert _triples(class_edges(classes)) == [
        ("name_movers", "logits", None), ("s_inhibition", "name_movers", "q"),
        ("duplicate_token", "s_inhibition", "v")]  # no induction: its edges go (rejected)


def test_classified_spec_round_trips_with_edges():
    spec = classified_spec({"name_movers": ["L9H9"], "s_inhibition": ["L7H3", "L8H6"]},
                           "demo", model="gpt2", task="ioi")
    back = parse_circuit(to_yaml(spec))
    assert back == spec and back.groups["s_inhibition"].positions == ["END"]
    assert _triples(back.edges) == [("name_movers", "logits", None),
                                    ("s_inhibition", "name_movers", "q")]
    assert classified_spec({"name_movers": []}, "none") is None
