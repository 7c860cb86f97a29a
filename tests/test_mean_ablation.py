import pytest
import torch

from interp.circuit import circuit_metric, full_circuit, without
from interp.ioi.dataset import build_ioi
from interp.mean_ablation import MeanAblation
from interp.nodes import Head, Mlp
from interp.patching import prepare_runs


@pytest.fixture(scope="module")
def runs(tiny):
    return prepare_runs(tiny, build_ioi(tiny, n_prompts=12, seed=0).batch)


def _circuits(model):
    full = full_circuit(model)
    late = [Head(model.cfg.n_layers - 1, h) for h in range(2)]
    circuit = {Head(0, 1): None, Head(1, 2): ["END"], Head(1, 3): ["END", "S2"]}
    return [
        circuit,                                   # from the embeddings: a new base
        without(circuit, [Head(1, 2)]),            # resumes from that base at layer 1
        without(full, late),                       # resumes from the clean run
        without(full, [Head(0, 0)]),               # differs from both at layer 0
        full,                                      # identical to the clean run
        {**circuit, Mlp(0): None},                 # MLP 1 ablated too
        {},                                        # everything ablated
        circuit,                                   # a repeat
    ]


def test_resumed_batched_runs_equal_plain_forwards(tiny, runs):
    circuits = _circuits(tiny)
    got = MeanAblation(tiny, runs).metrics(circuits)
    for circuit, row in zip(circuits, got, strict=True):
        assert torch.allclose(row, circuit_metric(tiny, runs, circuit), atol=1e-4)


def test_bases_are_reused(tiny, runs):
    ev = MeanAblation(tiny, runs)
    circuit = {Head(0, 1): None, Head(1, 2): ["END"]}
    ev.metrics([circuit, without(circuit, [Head(1, 2)])])
    assert len(ev.bases) == 2  # the clean run and the circuit; the variant resumed from it


def test_first_difference(tiny, runs):
    ev = MeanAblation(tiny, runs)
    full = ev.ablation(full_circuit(tiny))
    assert full.first_difference(full) == tiny.cfg.n_layers
    assert ev.ablation(without(full_circuit(tiny), [Head(1, 3)])).first_difference(full) == 1
    assert ev.ablation({**full_circuit(tiny), Mlp(1): None}).first_difference(full) == 0


def test_one_chunk_per_item_gives_the_same(tiny, runs, monkeypatch):
    circuits = _circuits(tiny)
    together = MeanAblation(tiny, runs).metrics(circuits)
    monkeypatch.setattr("interp.mean_ablation.chunk_size", lambda *a: 1)
    apart = MeanAblation(tiny, runs).metrics(circuits)
    assert torch.allclose(together, apart, atol=1e-5)


def test_base_cache_is_bounded(tiny, runs, monkeypatch):
    """Past MAX_BASES, runs that share nothing with a base start at layer 0, uncached."""
    monkeypatch.setattr("interp.mean_ablation.MAX_BASES", 2)
    circuits = [{Head(0, h): None} for h in range(4)]
    ev = MeanAblation(tiny, runs)
    got = ev.metrics(circuits)
    assert len(ev.bases) == 2
    for circuit, row in zip(circuits, got, strict=True):
        assert torch.allclose(row, circuit_metric(tiny, runs, circuit), atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "neox"])
def test_sparse_resumes_equal_plain_forwards_on_rotary_families(family):
    """GQA and rotary models: the token-sparse resumed runs against plain hooked forwards."""
    from tiny_families import tiny_model

    model = tiny_model(family)
    runs = prepare_runs(model, build_ioi(model, n_prompts=10, seed=1).batch)
    circuits = _circuits(model)[:5]
    got = MeanAblation(model, runs).metrics(circuits)
    for circuit, row in zip(circuits, got, strict=True):
        assert torch.allclose(row, circuit_metric(model, runs, circuit), atol=1e-4)


def test_resumed_runs_compute_only_changed_tokens(tiny, runs, monkeypatch):
    """A circuit that differs from its base only at END recomputes one token per prompt."""
    import interp.mean_ablation as ma

    seen = []
    real = ma.forward_changed
    monkeypatch.setattr(ma, "forward_changed",
                        lambda model, base, x, tokens, *a: seen.append(len(tokens.rows))
                        or real(model, base, x, tokens, *a))
    circuit = {Head(0, 1): None, Head(1, 2): ["END"]}
    ev = MeanAblation(tiny, runs)
    ev.metrics([circuit])
    assert seen == [int((runs.batch.read_positions + 1).sum())]  # the base: tokens to the read
    seen.clear()
    got = ev.metrics([without(circuit, [Head(1, 2)])])
    assert seen == [len(runs.batch)]
    assert torch.allclose(got[0], circuit_metric(tiny, runs, without(circuit, [Head(1, 2)])),
                          atol=1e-4)


def test_a_new_base_is_the_plain_forward_up_to_the_reads(tiny, runs):
    """A base run computes the tokens up to each read position only; there its residual
    stream is a plain hooked forward's, at every layer."""
    from interp.circuit import ablation_hooks
    from interp.patching.counter import counting

    circuit = {Head(0, 1): None, Head(1, 2): ["END"]}
    ev = MeanAblation(tiny, runs)
    with counting() as count:
        before = count.tokens
        ev.metrics([circuit])
        counted = count.tokens - before
    reads = runs.batch.read_positions
    assert counted == tiny.cfg.n_layers * int((reads + 1).sum())
    names = [f"blocks.{la}.hook_resid_pre" for la in range(tiny.cfg.n_layers)]
    with tiny.hooks(fwd_hooks=ablation_hooks(tiny, runs, circuit)):
        _, cache = tiny.run_with_cache(runs.batch.clean_tokens, names_filter=names)
    base = ev.bases[-1]
    for layer, name in enumerate(names):
        for row, read in enumerate(reads.tolist()):
            assert torch.allclose(base.resid_pre[layer][row, :read + 1],
                                  cache[name][row, :read + 1], atol=1e-5)


def test_group_means_held_per_group_equal_a_plain_loop(tiny, runs):
    """`GroupMeans` holds one row per group; expanded, each prompt's row is the plain mean
    of its group's rows (bit for bit), and `PerLayerMeans` reads as the per-layer list."""
    from interp.mean_ablation import GroupMeans, PerLayerMeans

    groups = torch.arange(len(runs.batch)) % 3  # (the batch's own templates are all distinct)
    act = runs.corrupted_cache["blocks.1.attn.hook_z"]
    plain = torch.stack([act[groups == groups[i]].mean(0) for i in range(len(groups))])
    means = GroupMeans(act, groups)
    assert means.values.shape[0] == len(groups.unique()) < len(groups)
    assert torch.equal(means.full(), plain)
    layers = PerLayerMeans(runs.corrupted_cache, "attn.hook_z", groups, tiny.cfg.n_layers)
    assert len(layers) == tiny.cfg.n_layers and torch.equal(layers[1], plain)
    assert not torch.equal(layers[0], plain)


def test_bases_share_one_copy_of_the_weights(tiny, runs, monkeypatch):
    """The bases' engines share one `StackedWeights`; their keys and values are freed after
    each `metrics` call and rebuilt on the next: the same metrics, bit for bit."""
    from interp import mean_ablation

    weights = []

    class Recording(mean_ablation.BaseRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            weights.append(id(self.w))

    monkeypatch.setattr(mean_ablation, "BaseRun", Recording)
    ev = MeanAblation(tiny, runs)
    bases = [{Head(0, 1): None, Head(1, 0): None}, {Head(0, 2): None, Head(1, 0): None}]
    circuits = bases + [without(c, [Head(1, 0)]) for c in bases]  # resumed from the bases
    got = ev.metrics(circuits)
    assert len(ev.bases) == 3 and len(weights) >= 3 and len(set(weights)) == 1
    assert all(b.engine is None for b in ev.bases)
    assert torch.equal(ev.metrics(circuits[::-1]), got.flip(0))  # engines rebuilt
    for circuit, row in zip(circuits, got, strict=True):
        assert torch.allclose(row, circuit_metric(tiny, runs, circuit), atol=1e-4)
