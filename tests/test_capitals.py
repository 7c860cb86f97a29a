"""Capital table and prompt builders."""

import pytest
import torch

from interp.capitals import (
    CapitalTask,
    build_prompts,
    demo_indices,
    find,
    load_capitals,
    mark_tokens,
    one_shot,
    sample,
)


@pytest.fixture(scope="module")
def model(tiny):
    return tiny  # the session's random:tiny (conftest)


@pytest.fixture(scope="module")
def items(model):
    return mark_tokens(model, load_capitals())


def test_table_has_150_distinct_pairs():
    rows = load_capitals()
    assert len(rows) >= 150
    assert len({c for c, _ in rows}) == len(rows)
    assert ("Poland", "Warsaw") in rows and ("France", "Paris") in rows


def test_token_marks_follow_the_tokenizer(model, items):
    tok = model.tokenizer
    for it in items:
        for word, first, single in ((it.country, it.country_id, it.country_single),
                                    (it.capital, it.capital_id, it.capital_single)):
            ids = tok.encode(" " + word, add_special_tokens=False)
            assert ids[0] == first and (len(ids) == 1) == single
        assert it.country_id != it.capital_id


@pytest.mark.parametrize("seed", [0, 1, 7, 500])
def test_demonstration_is_never_the_queried_country(model, items, seed):
    chosen = sample(items, 40, seed)
    prompts = build_prompts(model, chosen, "abstractive", seed=seed)
    for it, demo, text in zip(prompts.items, prompts.demos, prompts.texts, strict=True):
        assert demo.country != it.country
        assert text.startswith(f"Q: What is the capital of {demo.country}?\nA: {demo.capital}\n")
        assert text.endswith(f"Q: What is the capital of {it.country}?\nA:")
    assert len({d.country for d in prompts.demos}) == len(chosen)  # rotation uses each once


def test_demo_indices_rotation():
    for n in (2, 3, 10):
        for seed in range(12):
            idx = demo_indices(n, seed)
            assert sorted(idx) == list(range(n))
            assert all(i != j for i, j in enumerate(idx))


def test_one_shot_refuses_own_country(items):
    poland = find(items, "poland")
    with pytest.raises(ValueError, match="demonstration"):
        one_shot(poland, "Poland")


def test_extractive_prompt_states_the_answer(model, items):
    poland, france = find(items, "Poland"), find(items, "France")
    p = build_prompts(model, [poland], "extractive", demos=[france])
    assert p.texts[0] == ("The capital of Poland is Warsaw.\nQ: What is the capital of France?"
                          "\nA: Paris\nQ: What is the capital of Poland?\nA:")


def test_read_positions_are_each_prompts_last_token(model, items):
    p = build_prompts(model, items[:12], "abstractive")
    colon = model.tokenizer.encode(":", add_special_tokens=False)[-1]
    for row, read in enumerate(p.read_positions.tolist()):
        alone = model.tokenizer.encode(p.texts[row], add_special_tokens=False)
        assert p.tokens[row, : read + 1].tolist()[-len(alone):] == alone
        assert int(p.tokens[row, read]) == colon


def test_unknown_country_and_bad_csv(items, tmp_path):
    with pytest.raises(ValueError, match="not in the capitals table"):
        find(items, "Atlantis")
    bad = tmp_path / "bad.csv"
    bad.write_text("nation,city\nFrance,Paris\n")
    with pytest.raises(ValueError, match="country,capital"):
        load_capitals(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("country,capital\nFrance,Paris\nFrance,Lyon\n")
    with pytest.raises(ValueError, match="twice"):
        load_capitals(dup)


def test_capital_task_batch(model):
    batch = CapitalTask().build(model, 30, seed=0)
    assert batch.clean_tokens.shape == batch.corrupted_tokens.shape
    with torch.inference_mode():
        logits = model(batch.clean_tokens)
    rows = torch.arange(len(batch))
    last = logits[rows, batch.read_positions]
    expected = (last[rows, batch.metric.answer] - last[rows, batch.metric.wrong])
    assert torch.allclose(batch.metric(last), expected)
