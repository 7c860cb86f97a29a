"""FFN ablation and o-vector transfer against hand-written hook forwards."""

import pytest
import torch

from interp.capitals import build_prompts, find, load_capitals, mark_tokens
from interp.ffn import (
    Condition,
    MlpMeans,
    ablation,
    add_variants,
    common_suffix,
    critical_layers,
    evaluate,
    mlp_out_at,
    random_like,
    transfer,
    window,
)
from interp.ffn_clean import CleanRun, Ledger, block_activations, length_batches


@pytest.fixture(scope="module")
def model(tiny):
    return tiny  # the session's random:tiny (conftest)


@pytest.fixture(scope="module")
def prompts(model):
    items = mark_tokens(model, load_capitals())
    return build_prompts(model, items[:10], "abstractive")


def manual_probs(model, prompts, hooks):
    """Capital probability at each prompt's read position from a plain hooked forward."""
    with torch.inference_mode():
        logits = model.run_with_hooks(prompts.tokens, fwd_hooks=hooks)
    rows = torch.arange(len(prompts))
    probs = logits[rows, prompts.read_positions].softmax(-1)
    return probs[rows, prompts.capital_ids]


def test_zero_ablation_equals_manual_hook(model, prompts):
    layer = 1
    res = evaluate(model, prompts, [Condition("z", ablation([layer], "zero"))], batch_size=4)
    hook = (f"blocks.{layer}.hook_mlp_out", lambda act, hook: torch.zeros_like(act))
    assert torch.allclose(res["z"].prob, manual_probs(model, prompts, [hook]), atol=1e-6)
    assert torch.allclose(res["clean"].prob, manual_probs(model, prompts, []), atol=1e-6)
    assert not torch.allclose(res["z"].prob, res["clean"].prob, atol=1e-6)


@pytest.mark.parametrize("positions", ["last", "no-first"])
def test_positioned_zero_ablation_equals_manual_hook(model, prompts, positions):
    res = evaluate(model, prompts, [Condition("z", ablation([0, 1], "zero", None, positions))],
                   batch_size=4)
    rows = torch.arange(len(prompts))

    def zero(act, hook):
        act = act.clone()
        if positions == "last":
            act[rows, prompts.read_positions] = 0
        else:
            act[:, 1:] = 0
        return act

    hooks = [(f"blocks.{la}.hook_mlp_out", zero) for la in (0, 1)]
    assert torch.allclose(res["z"].prob, manual_probs(model, prompts, hooks), atol=1e-6)


def _means(model, prompts, batch_size=3):
    return MlpMeans(CleanRun(model, prompts.tokens, prompts.lengths, batch_size, keep_mlp=True))


def test_mean_ablation_value_is_aligned_mean(model, prompts):
    means = _means(model, prompts)
    tail = common_suffix(prompts.tokens, prompts.lengths)
    assert tail >= 3  # "?\nA:" in the GPT-2 tokenizer
    with torch.inference_mode():
        _, cache = model.run_with_cache(prompts.tokens)
    act = cache["blocks.0.hook_mlp_out"]
    read = prompts.read_positions
    rows = torch.arange(len(prompts))
    value = means.value(0, torch.arange(len(prompts)), prompts.tokens.shape[1])
    # the read position gets the mean over every prompt's read position
    assert torch.allclose(value[rows, read], act[rows, read].mean(0).expand(len(rows), -1),
                          atol=1e-5)
    # position 0 (a shared start) gets the mean over every prompt's first token
    assert torch.allclose(value[:, 0], act[:, 0].mean(0).expand(len(rows), -1), atol=1e-5)


def test_mean_ablation_equals_manual_hook(model, prompts):
    means = _means(model, prompts)
    value = means.value(1, torch.arange(len(prompts)), prompts.tokens.shape[1])
    res = evaluate(model, prompts, [Condition("m", ablation([1], "mean", means))], batch_size=4)
    hook = ("blocks.1.hook_mlp_out", lambda act, hook: value.to(act.dtype))
    assert torch.allclose(res["m"].prob, manual_probs(model, prompts, [hook]), atol=1e-6)


def test_transfer_modes_equal_manual_hooks(model, prompts):
    items = mark_tokens(model, load_capitals())
    src = build_prompts(model, [find(items, "Poland")], demos=[find(items, "France")])
    vec = mlp_out_at(model, src.tokens[0, : int(src.lengths[0])], 0)
    read = prompts.read_positions
    rows = torch.arange(len(prompts))
    conds = [Condition(m, transfer(0, vec, m, model.cfg.n_layers)) for m in ("add", "replace")]
    res = evaluate(model, prompts, conds, batch_size=3)

    def add(act, hook):
        act = act.clone()
        act[rows, read] += vec
        return act

    def put(act, hook):
        act = act.clone()
        act[rows, read] = vec
        return act

    assert torch.allclose(res["add"].prob,
                          manual_probs(model, prompts, [("blocks.0.hook_resid_post", add)]),
                          atol=1e-6)
    hooks = [(f"blocks.{la}.hook_mlp_out", put) for la in range(model.cfg.n_layers)]
    assert torch.allclose(res["replace"].prob, manual_probs(model, prompts, hooks), atol=1e-6)


def test_o_vector_is_the_mlp_output_at_the_last_position(model):
    tokens = torch.tensor(model.tokenizer.encode("The capital of Poland is"))
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None])
    assert torch.allclose(mlp_out_at(model, tokens, 1), cache["blocks.1.hook_mlp_out"][0, -1])


def test_random_like_keeps_the_norm():
    v = torch.randn(64)
    r = random_like(v, seed=3)
    assert abs(float(r.norm() - v.norm())) < 1e-4 and not torch.allclose(r, v)
    assert torch.equal(r, random_like(v, seed=3))


def test_windows_are_top_down():
    assert window(24, 1 / 6) == [20, 21, 22, 23]
    assert window(30, 2 / 6) == list(range(20, 30))
    assert window(2, 1 / 6) == [1]
    assert window(24, 1.0) == list(range(24))


def test_critical_layer_prefers_recall_over_global_damage():
    # layer 0 breaks both prompt kinds, layer 2 only the abstractive one
    abstractive = [0.0, 0.9, 0.2, 0.7]
    extractive = [0.0, 1.0, 1.0, 0.95]
    best, layers = critical_layers(abstractive, extractive, 1.0, 1.0)
    assert best == 2 and layers == [2]
    best, layers = critical_layers([0.5, 0.6], [1.0, 1.0], 1.0, 1.0, share=0.5)
    assert best == 0 and layers == [0, 1]


def test_common_suffix():
    toks = torch.tensor([[1, 2, 7, 8, 0], [5, 7, 8, 0, 0], [3, 3, 3, 7, 8]])
    assert common_suffix(toks, torch.tensor([4, 3, 5])) == 2


def test_bad_kinds():
    with pytest.raises(ValueError, match="zero"):
        ablation([0], "resample")
    with pytest.raises(ValueError, match="MlpMeans"):
        ablation([0], "mean")
    with pytest.raises(ValueError, match="add"):
        transfer(0, torch.zeros(4), "swap", 2)


def test_clean_run_in_length_batches_equals_plain_forward(model, prompts):
    clean = CleanRun(model, prompts.tokens, prompts.lengths, batch_size=3)
    assert len(clean.batches) == 4
    for batch in clean.batches:  # trimmed to the batch's longest prompt, sorted by length
        assert batch.width == int(prompts.lengths[batch.rows].max())
    with torch.inference_mode():
        logits = model(prompts.tokens)
    rows = torch.arange(len(prompts))
    assert torch.allclose(clean.read_logits(), logits[rows, prompts.read_positions], atol=1e-5)


def test_block_activations_equal_the_cache_and_skip_the_unembedding(model, prompts):
    names = ["blocks.0.hook_mlp_out", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    calls = []
    handle = model.unembed.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.inference_mode():
            got = block_activations(model, prompts.tokens, names)
            assert not calls  # stopped after the last block
            _, cache = model.run_with_cache(prompts.tokens, names_filter=lambda n: n in names)
    finally:
        handle.remove()
    assert calls  # the hook does see a full forward's unembedding
    for name in names:
        assert torch.allclose(got[name], cache[name], atol=1e-6)
    assert not any(h._forward_hooks for h in model.hook_dict.values())  # hooks removed


def test_length_batches_cover_every_prompt_once():
    lengths = torch.tensor([5, 3, 9, 3, 7])
    batches = length_batches(lengths, 2)
    assert sorted(torch.cat(batches).tolist()) == list(range(5))
    assert [lengths[b].tolist() for b in batches] == [[3, 3], [5, 7], [9]]


def test_ledger_counts_a_clean_run_as_one_forward(model, prompts):
    ledger = Ledger(model.cfg.n_layers)
    CleanRun(model, prompts.tokens, prompts.lengths, batch_size=3, ledger=ledger)
    work = ledger.fpe(prompts.lengths)
    assert work["real_tokens_only"] == 1.0 and work["done"] >= 1.0


def test_batched_add_variants_equal_manual_hooked_forwards(model, prompts):
    vecs = torch.randn(3, model.cfg.d_model) * 5
    clean = CleanRun(model, prompts.tokens, prompts.lengths, batch_size=4)
    outs = add_variants(model, clean, 0, vecs, prompts.capital_ids, max_rows=5)
    rows, read = torch.arange(len(prompts)), prompts.read_positions
    for vec, out in zip(vecs, outs, strict=True):
        def add(act, hook, vec=vec):
            act = act.clone()
            act[rows, read] += vec
            return act
        manual = manual_probs(model, prompts, [("blocks.0.hook_resid_post", add)])
        assert torch.allclose(out.prob, manual, atol=1e-6)


def test_mean_ablation_leaves_a_shared_first_token_alone(model, prompts):
    # every prompt starts with the same token, so its mean MLP output is its own output:
    # mean ablation at all positions equals mean ablation at all but the first
    assert bool((prompts.tokens[:, 0] == prompts.tokens[0, 0]).all())
    means = _means(model, prompts)
    res = evaluate(model, prompts, [Condition("all", ablation([0], "mean", means, "all")),
                                    Condition("nf", ablation([0], "mean", means, "no-first"))])
    assert torch.allclose(res["all"].prob, res["nf"].prob, atol=1e-6)



def _put(rows, read, value):
    def put(act, hook):
        act = act.clone()
        act[rows, read] = value if value.dim() == 1 else value[rows, read]
        return act
    return put


@pytest.mark.parametrize("positions", ["all", "no-first", "last"])
@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_sparse_ablation_equals_manual_hook(model, prompts, positions, kind):
    """Ablations run on the changed tokens only (`interp.ffn_sparse`), stacked by their
    first block: the same probabilities as plain hooked forwards at every position."""
    from interp.ffn import sparse_ablation
    from interp.ffn_sparse import supported

    assert supported(model)
    means = _means(model, prompts)
    rows, read = torch.arange(len(prompts)), prompts.read_positions
    width = prompts.tokens.shape[1]
    where = {"all": (slice(None), slice(None)), "no-first": (slice(None), slice(1, None)),
             "last": (rows, read)}[positions]

    def ablate(layer):
        value = (torch.zeros(model.cfg.d_model) if kind == "zero"
                 else means.value(layer, rows, width))

        def hook(act, hook):
            act = act.clone()
            act[where] = value if kind == "zero" else value[where]
            return act
        return hook

    conds = {"L1": [1], "L0": [0], "L01": [0, 1]}
    ledger = Ledger(model.cfg.n_layers)
    clean = CleanRun(model, prompts.tokens, prompts.lengths, batch_size=4)
    res = evaluate(model, prompts, [
        Condition(name, ablation(layers, kind, means, positions),
                  sparse_ablation(layers, kind, means, positions))
        for name, layers in conds.items()], clean=clean, ledger=ledger)
    per_prompt = {"all": prompts.lengths, "no-first": prompts.lengths - 1,
                  "last": torch.ones(len(prompts), dtype=torch.long)}[positions]
    unshared = int(per_prompt.sum()) * (1 + 2 + 2)  # blocks per condition: 1, 2, 2
    assert ledger.padded == ledger.real
    # the prompts share "Q: What is the capital of": that prefix runs once per batch
    assert ledger.real == unshared if positions == "last" else ledger.real < unshared
    for name, layers in conds.items():
        manual = manual_probs(model, prompts, [(f"blocks.{la}.hook_mlp_out", ablate(la))
                                               for la in layers])
        assert torch.allclose(res[name].prob, manual, atol=1e-6), name
        assert not torch.allclose(res[name].prob, res["clean"].prob, atol=1e-6), name


def test_sparse_transfer_equals_manual_hooks(model, prompts):
    from interp.ffn import transfer_edit

    rows, read = torch.arange(len(prompts)), prompts.read_positions
    vec = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2)) * 5
    n = model.cfg.n_layers
    res = evaluate(model, prompts, [Condition(m, transfer(0, vec, m, n),
                                              transfer_edit(0, vec, m, n))
                                    for m in ("add", "replace")], batch_size=3)

    def add(act, hook):
        act = act.clone()
        act[rows, read] += vec
        return act

    manual = {"add": [("blocks.0.hook_resid_post", add)],
              "replace": [(f"blocks.{la}.hook_mlp_out", _put(rows, read, vec))
                          for la in range(n)]}
    for name, hooks in manual.items():
        assert torch.allclose(res[name].prob, manual_probs(model, prompts, hooks), atol=1e-6)
        assert not torch.allclose(res[name].prob, res["clean"].prob, atol=1e-6), name


def test_common_prefix_and_when_a_prefix_run_is_shared():
    from interp.ffn_sparse import MlpEdit, SparseEdit, _shares_prefix, common_prefix

    tokens = torch.tensor([[5, 6, 7, 1, 0], [5, 6, 7, 2, 3], [5, 6, 8, 2, 3]])
    assert common_prefix(tokens, torch.tensor([3, 4, 4])) == 2
    assert common_prefix(tokens[:2], torch.tensor([3, 4])) == 3
    assert common_prefix(tokens[:2], torch.tensor([1, 4])) == 1  # a read inside the prefix
    where = torch.ones(3, 5, dtype=torch.bool)
    same = torch.arange(5.0)[None, :, None].expand(3, 5, 2)
    zeros = torch.zeros(3, dtype=torch.long)
    assert _shares_prefix(SparseEdit(0, zeros, mlp={0: MlpEdit(where)}), 2)
    assert _shares_prefix(SparseEdit(0, zeros, mlp={0: MlpEdit(where, same)}), 2)
    differs = same.clone()
    differs[1, 1] += 1  # prompt 1's value differs inside the prefix
    assert not _shares_prefix(SparseEdit(0, zeros, mlp={0: MlpEdit(where, differs)}), 2)
    assert _shares_prefix(SparseEdit(0, zeros, mlp={0: MlpEdit(where, differs)}), 1)
    uneven = where.clone()
    uneven[0, 1] = False
    assert not _shares_prefix(SparseEdit(0, zeros, mlp={0: MlpEdit(uneven)}), 2)
    assert not _shares_prefix(SparseEdit(0, zeros + 2, mlp={0: MlpEdit(where)}), 2)  # unchanged


def test_ledger_counts_a_block_without_its_mlp_as_its_attention_share():
    """Two blocks on 10 tokens (20 token-blocks), 4 of them with the MLP skipped, at an MLP
    share of 0.75: 20 - 0.75 * 4 = 17 token-blocks, over a prompt set of 10 tokens x 2."""
    ledger = Ledger(2, mlp_share=0.75)
    ledger.add_packed(10, 2, mlps_skipped=4)
    work = ledger.fpe(torch.tensor([4, 6]))
    assert work == {"done": 0.85, "real_tokens_only": 0.85}
