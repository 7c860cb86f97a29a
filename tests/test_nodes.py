import pytest

from interp.nodes import Head, Mlp, NodeError, all_heads, check_node, format_node, parse_node


def test_round_trip():
    for text in ["L0H0", "L9H9", "L11H10", "MLP3"]:
        assert format_node(parse_node(text)) == text
    assert parse_node("L9H6") == Head(9, 6) and parse_node("MLP0") == Mlp(0)


@pytest.mark.parametrize("bad", ["9.9", "L9", "H9", "mlp3", "L-1H2", ""])
def test_malformed(bad):
    with pytest.raises(NodeError, match="not a node name"):
        parse_node(bad)


def test_out_of_range_names_model_shape():
    with pytest.raises(NodeError, match="n_layers=2"):
        check_node("L2H0", n_layers=2, n_heads=4)
    with pytest.raises(NodeError, match="n_heads=4"):
        check_node("L1H4", n_layers=2, n_heads=4)
    assert check_node("L1H3", 2, 4) == Head(1, 3)


def test_all_heads_is_layer_major():
    heads = all_heads(2, 3)
    assert heads[:4] == [Head(0, 0), Head(0, 1), Head(0, 2), Head(1, 0)] and len(heads) == 6
