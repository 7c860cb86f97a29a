import json

import pytest
import torch

from interp.ioi.dataset import build_ioi, fill, ioi_vocab
from interp.ioi.sources import IOISource, dataset_source
from interp.ioi.templates import ABBA_TEMPLATES, BABA_TEMPLATES, to_abba
from interp.metrics import logits_at
from interp.tokens import encode


@pytest.fixture(scope="module")
def ds(tiny):
    return build_ioi(tiny, n_prompts=40, seed=0)


def test_templates():
    assert len(BABA_TEMPLATES) == 15 and len(ABBA_TEMPLATES) == 15
    t = "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to"
    assert to_abba(t) == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to"
    assert fill(t, "Mary", "John", "store", "drink") == (
        "Then, John and Mary went to the store. John gave a drink to")


def test_names_are_single_tokens(tiny, ds):
    for name in ds.vocab.names:
        assert len(tiny.tokenizer.encode(" " + name, add_special_tokens=False)) == 1
    assert len(ds.vocab.names) >= 20


def test_positions_point_at_the_right_tokens(tiny, ds):
    tok = tiny.tokenizer
    for r in ds.records:
        ids, pos = r["clean_tokens"], r["positions"]
        assert ids[pos["IO"]] == tok.encode(r["io"], add_special_tokens=False)[0]
        assert ids[pos["S1"]] == ids[pos["S2"]] == tok.encode(r["s"],
                                                              add_special_tokens=False)[0]
        assert pos["S1+1"] == pos["S1"] + 1 and pos["END"] == len(ids) - 1
        assert ids == encode(tiny, r["clean_prompt"], prepend_bos=False)
        assert pos["S1"] < pos["S2"] < pos["END"]


def test_abc_names_distinct_and_lengths_equal(tiny, ds):
    names = set(ds.vocab.names)
    for r in ds.records:
        clean, corrupted = r["clean_tokens"], r["corrupted_tokens"]
        assert len(clean) == len(corrupted)
        pos = r["positions"]
        abc = [corrupted[pos[k]] for k in ("IO", "S1", "S2")]
        assert len(set(abc)) == 3
        assert {tiny.tokenizer.decode([i]).strip() for i in abc} <= names
        assert clean[pos["S2"] + 1:] == corrupted[pos["S2"] + 1:]  # the rest of the template


def test_deterministic_and_seeded(tiny, ds):
    again = build_ioi(tiny, n_prompts=40, seed=0)
    other = build_ioi(tiny, n_prompts=40, seed=1)
    assert again.records == ds.records
    assert other.records != ds.records


def test_metric_read_at_each_prompts_end(tiny, ds):
    batch = ds.batch
    logits = tiny(batch.clean_tokens)
    values = batch.metric(logits_at(logits, batch.read_positions))
    for row in (0, 5, 17):
        ids = torch.tensor([ds.records[row]["clean_tokens"]])
        alone = tiny(ids)[0, -1]
        io, s = batch.metric.answer[row], batch.metric.wrong[row]
        assert torch.allclose(values[row], alone[io] - alone[s], atol=1e-5)
    assert len(set(batch.read_positions.tolist())) > 1  # lengths really differ


def test_jsonl(tmp_path, ds):
    path = ds.write_jsonl(tmp_path / "dataset.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 40
    assert set(lines[0]) == {"clean_prompt", "corrupted_prompt", "io", "s", "clean_tokens",
                             "corrupted_tokens", "positions", "template", "bos_token",
                             "bos_token_id"}
    assert lines[0]["bos_token"] is None  # GPT-2 runs without BOS, as in the paper
    assert lines[0]["clean_tokens"][0] != 50256


def test_too_few_names_is_a_clear_error(tiny):
    source = IOISource("few", ("[B] and [A]. [B] to",), ("Mary", "John", "Xyzzyqwert"),
                       ("store",), ("ring",))
    with pytest.raises(ValueError, match="single tokens"):
        ioi_vocab(tiny, source)


def test_paper_dataset_is_the_paper_codes_mixed_set(tiny):
    """BABA[:7] + ABBA[:7] (the paper code's "mixed" type), 99 names, 8 places, 8 objects;
    the first paper template filled by hand, and dropped words counted."""
    paper = dataset_source("paper")
    assert paper.templates[:7] == tuple(BABA_TEMPLATES[:7])
    assert paper.templates[7:] == tuple(ABBA_TEMPLATES[:7]) and len(paper.templates) == 14
    assert paper.templates[7] == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to"
    assert (len(paper.names), len(paper.places), len(paper.objects)) == (99, 8, 8)
    assert paper.names[:3] == ("Michael", "Christopher", "Jessica")
    assert len(set(paper.names) & set(dataset_source("extended").names)) == 37
    ds = build_ioi(tiny, 28, 0, source="paper")
    vocab = ds.vocab
    assert vocab.dropped["names"] == 99 - len(vocab.names) and vocab.dropped["places"] == 0
    assert {r["template"] for r in ds.records} == set(paper.templates)
