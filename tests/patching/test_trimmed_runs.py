"""Runs that cache only what a stage reads give the same results as the full caches."""

import pytest
import torch

from interp.circuit import evaluate
from interp.ioi.dataset import build_ioi
from interp.nodes import Head, all_heads
from interp.patching import Receiver, act_patch_heads, path_patch, prepare_runs
from interp.patching.runs import release


def test_corrupted_head_outputs_suffice_for_the_sweeps(tiny):
    batch = build_ioi(tiny, 8, seed=3).batch
    full = prepare_runs(tiny, batch)
    trimmed = prepare_runs(tiny, batch, corrupted_hooks=("attn.hook_z",))
    assert set(trimmed.corrupted_cache) == {f"blocks.{la}.attn.hook_z"
                                            for la in range(tiny.cfg.n_layers)}
    senders = all_heads(tiny.cfg.n_layers, tiny.cfg.n_heads)
    receivers = [Receiver(Head(1, 0), "q", "END")]
    torch.testing.assert_close(act_patch_heads(tiny, full, progress=False),
                               act_patch_heads(tiny, trimmed, progress=False))
    torch.testing.assert_close(path_patch(tiny, full, senders, progress=False),
                               path_patch(tiny, trimmed, senders, progress=False))
    torch.testing.assert_close(path_patch(tiny, full, senders, receivers, progress=False),
                               path_patch(tiny, trimmed, senders, receivers, progress=False))


def test_circuit_evaluation_reads_resid_pre_and_head_outputs_only(tiny):
    batch = build_ioi(tiny, 8, seed=4).batch
    circuit = {Head(0, 1): None, Head(1, 2): ["END"]}
    groups = {"a": [Head(0, 1)], "b": [Head(1, 2)]}
    want = evaluate(tiny, prepare_runs(tiny, batch), circuit, groups)
    runs = prepare_runs(tiny, batch)
    release(runs, ("hook_resid_pre", "attn.hook_z"))
    assert runs.grads is None and not runs.bases
    assert all(n.endswith(("hook_resid_pre", "attn.hook_z")) for n in runs.clean_cache)
    assert evaluate(tiny, runs, circuit, groups) == want


def test_lean_clean_cache_gives_the_same_ioi_run(tiny):
    """The IOI stages on the lean clean cache (as `interp ioi` caches it: q/k/v and the
    attention output at the named positions only) equal those on every cached hook."""
    from interp.patching.runs import POSITION_READS, lean_clean_hooks

    batch = build_ioi(tiny, 8, seed=5).batch
    lean = prepare_runs(tiny, batch, lean_clean_hooks(tiny), ("attn.hook_z",),
                        positions_only=POSITION_READS)
    full = prepare_runs(tiny, batch)
    last = tiny.cfg.n_layers - 1  # the first layer's (head step) and the last's (edge engine)
    assert {n for n in lean.clean_cache if n.endswith("hook_resid_post")} == {
        "blocks.0.hook_resid_post", f"blocks.{last}.hook_resid_post"}
    assert set(lean.clean_cache) < set(full.clean_cache)
    from interp.ioi.classify import Classifier, Thresholds
    from interp.ioi.scores import attention_scores

    def classify(runs):
        clf = Classifier(tiny, runs, attention_scores(tiny, runs.clean_cache, batch),
                         Thresholds(name_mover=0, negative=0), progress=False)
        return clf.run(), clf.step_effects, clf.backup_effects

    assert classify(lean) == classify(full)


def test_metrics_from_the_read_positions_equal_full_logits():
    """prepare_runs unembeds only the read positions: its metrics equal those of plain
    forwards' full logits (GPT-2, a GQA Llama and Gemma 2's soft-capped logits)."""
    import interp
    from interp.metrics import logits_at
    from tests.tiny_families import tiny_model

    for model in (interp.load_model("random:tiny", device="cpu"), tiny_model("llama"),
                  tiny_model("gemma2")):
        batch = build_ioi(model, 8, seed=6).batch
        runs = prepare_runs(model, batch, ("hook_resid_pre",), ("attn.hook_z",))
        with torch.inference_mode():
            for tokens, got in ((batch.clean_tokens, runs.clean_metric),
                                (batch.corrupted_tokens, runs.corrupted_metric)):
                want = batch.metric(logits_at(model(tokens), batch.read_positions))
                torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-6)


def test_release_can_free_the_whole_corrupted_cache(tiny):
    runs = prepare_runs(tiny, build_ioi(tiny, 4, seed=7).batch)
    release(runs, ("hook_resid_pre",), corrupted_keep=())
    assert not runs.corrupted_cache
    assert runs.clean_cache and all(n.endswith("hook_resid_pre") for n in runs.clean_cache)


def test_lean_cache_rebuilds_resid_mid_bit_for_bit():
    """Where the lean clean cache drops `hook_resid_mid`, it rebuilds the hooked values
    exactly (GPT-2, a GQA Llama); Gemma 2 (a norm after attention) keeps it cached."""
    import interp
    from interp.patching.runs import lean_clean_hooks
    from tests.tiny_families import tiny_model

    for model, derived in ((interp.load_model("random:tiny", device="cpu"), True),
                           (tiny_model("llama"), True), (tiny_model("gemma2"), False)):
        batch = build_ioi(model, 8, seed=7).batch
        lean = prepare_runs(model, batch, lean_clean_hooks(model), ("attn.hook_z",))
        full = prepare_runs(model, batch)
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.hook_resid_mid"
            assert (name not in lean.clean_cache) == derived
            assert torch.equal(lean.clean_cache[name], full.clean_cache[name])
    with pytest.raises(KeyError):
        release(lean, ("hook_resid_pre",))
        lean.clean_cache["blocks.0.hook_resid_mid"]  # attn_out released: nothing to rebuild


def test_positions_only_cache_equals_the_full_cache_there(tiny):
    """Hooks cached at the named and read positions only (`AtPositions`) read as the full
    cache does there and refuse other positions (GPT-2, a GQA Llama); `hook_resid_mid` is
    rebuilt there from them bit for bit."""
    from interp.patching.runs import POSITION_READS, AtPositions, lean_clean_hooks
    from tests.tiny_families import tiny_model

    for model in (tiny, tiny_model("llama")):
        batch = build_ioi(model, 8, seed=5).batch
        slim = prepare_runs(model, batch, lean_clean_hooks(model), ("attn.hook_z",),
                            positions_only=POSITION_READS)
        full = prepare_runs(model, batch)
        rows = torch.arange(len(batch))
        sliced = [n for n, v in slim.clean_cache.items() if isinstance(v, AtPositions)]
        assert {n.split(".", 2)[-1] for n in sliced} >= {"attn.hook_q", "attn.hook_k",
                                                         "attn.hook_v"}
        for name in sliced:
            for pos in [*batch.positions.values(), batch.read_positions]:
                assert torch.equal(slim.clean_cache[name][rows, pos],
                                   full.clean_cache[name][rows, pos])
            with pytest.raises(KeyError):
                slim.clean_cache[name][rows, torch.zeros_like(pos)]  # never a named position
        mid = "blocks.1.hook_resid_mid"
        s2 = rows[:, None], batch.positions["S2"][:, None]
        assert torch.equal(slim.clean_cache[mid][s2], full.clean_cache[mid][s2])


def test_gradients_cut_to_positions_equal_the_full_gradients_there(tiny):
    """`clean_gradients(..., positions_only=...)` keeps q/k/v gradients at the named and
    read positions only, cut chunk by chunk: the full gradients' values there, bit for bit
    (chunks of 3 prompts over 8: the last chunk is short); other positions are refused."""
    from interp.patching.gradients import clean_gradients
    from interp.patching.runs import AtPositions

    batch = build_ioi(tiny, 8, seed=6).batch
    full, cut = prepare_runs(tiny, batch), prepare_runs(tiny, batch)
    plain = clean_gradients(tiny, full, chunk=3)
    kept = clean_gradients(tiny, cut, chunk=3, positions_only=("attn.hook_q", "attn.hook_v"))
    rows = torch.arange(len(batch))
    for name, grad in plain.items():
        if name.endswith(("hook_q", "hook_v")):
            assert isinstance(kept[name], AtPositions) and kept[name].shape == grad.shape
            for pos in [*batch.positions.values(), batch.read_positions]:
                assert torch.equal(kept[name][rows, pos], grad[rows, pos])
            with pytest.raises(KeyError):
                kept[name][rows, torch.zeros_like(pos)]
        else:
            assert torch.equal(kept[name], grad)
    assert plain["blocks.1.attn.hook_q"].abs().sum() > 0
