"""Word analogies on a hand-made embedding where the answers are known."""

from types import SimpleNamespace

import pytest
import torch

from interp.analogies import evaluate, load_analogies, nearest, neighbours, solve
from interp.models.random_gpt2 import gpt2_tokenizer


@pytest.fixture(scope="module")
def fake_model():
    """GPT-2 tokenizer + an embedding with king = man + royal, queen = woman + royal, ..."""
    tok = gpt2_tokenizer()
    gen = torch.Generator().manual_seed(0)
    emb = 0.01 * torch.randn(len(tok), 16, generator=gen)

    def put(word, vec):
        emb[tok.encode(" " + word)[0]] = vec

    man, woman, royal, young = torch.eye(16)[:4] * torch.tensor([[3.0], [3.0], [2.0], [2.0]])
    put("man", man)
    put("woman", woman)
    put("king", man + royal)
    put("queen", woman + royal)
    put("boy", man + young)
    put("girl", woman + young + 0.05 * torch.eye(16)[5])
    return SimpleNamespace(tokenizer=tok, W_E=emb, W_U=emb.T)


def test_nearest_excludes_inputs_on_hand_made_embedding():
    matrix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.9, 1.1], [-1.0, 0.0]])
    # a - b + c = row0 - row4 + row1 = [2, 1]: closest would be row 2, then row 3 ...
    top, _ = solve(matrix, (0, 4, 1), k=2)
    assert top.tolist() == [2, 3]
    # ... but when row 2 is an input it must be skipped
    top, _ = nearest(matrix, torch.tensor([1.0, 1.0]), exclude=[2], k=1)
    assert top.tolist() == [3]


def test_evaluate_on_known_geometry(fake_model):
    items = [row for row in load_analogies() if row.a == "king" and row.expected == "queen"]
    items += [row for row in load_analogies() if row.a == "boy" and row.expected == "girl"]
    res = evaluate(fake_model, items, "embed", k=10)
    assert res["overall"]["n"] == 2
    assert res["overall"]["accuracy@1"] == 1.0
    assert res["per_category"]["gender"]["accuracy@1"] == 1.0
    # the nearest word to "woman" alone (c only) is not "queen" here
    assert res["overall"]["c_only_baseline@1"] < 1.0


def test_neighbour_list_never_contains_inputs(fake_model):
    nbrs = neighbours(fake_model, "king", "man", "woman", k=5)
    words = [w.strip() for w, _ in nbrs]
    assert words[0] == "queen"
    assert not {"king", "man", "woman"} & set(words)
    assert all(a >= b for (_, a), (_, b) in zip(nbrs, nbrs[1:], strict=False))


def test_table_and_errors(fake_model, tmp_path):
    rows = load_analogies()
    assert len(rows) >= 40
    assert {"capital", "plural", "comparative", "gender", "nationality"} <= {r.category
                                                                            for r in rows}
    with pytest.raises(ValueError, match="single tokens"):
        neighbours(fake_model, "Ouagadougou", "man", "woman")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\nx,y,z\n")
    with pytest.raises(ValueError, match="category,a,b,c,expected"):
        load_analogies(bad)


def test_batched_solve_equals_one_query_at_a_time():
    gen = torch.Generator().manual_seed(1)
    matrix = torch.randn(50, 8, generator=gen)
    triples = torch.tensor([[0, 1, 2], [5, 3, 9], [7, 7, 4]])
    top, sims = solve(matrix, triples, k=4)
    for row, (a, b, c) in enumerate(triples.tolist()):
        query = matrix[a] - matrix[b] + matrix[c]
        plain = torch.nn.functional.cosine_similarity(matrix, query[None], dim=-1)
        plain[[a, b, c]] = -float("inf")
        assert top[row].tolist() == plain.topk(4).indices.tolist()
        assert torch.allclose(sims[row], plain.topk(4).values, atol=1e-5)
