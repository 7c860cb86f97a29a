"""Classification rules on a hand-built GPT-2-architecture model (2 layers x 4 heads).

Weights are set so each head's behaviour is known by construction, on one BABA template
(fixed token positions): names live in residual dims 0-15 (random vectors, unembedding tied
to the embedding), positions are one-hot in dims 16-47, MLPs and biases are zero.
- L0H0 name mover: END attends IO, OV copies the name.
- L0H1 same layer, strong positive direct effect: END attends IO, writes IO's dim 15 only.
- L1H0 backup: END attends IO by position, but its query reads the name movers' output and
  avoids the name it finds; with the name movers ablated it attends IO and copies it.
- L1H1 S-suppression: END attends S2, OV = -2 x copy.
- L1H2 S copier: END attends S1 (~0.4) and IO (~0.3), OV copies (the old rule's negative
  name mover).
MLP 1's bias writes a constant into dim 63, read only by the final norm.
"""

import json

import pytest
import torch

from interp.circuit import ablation_hooks, full_circuit, without
from interp.errors import UserValueError
from interp.ioi.classify import Classifier, Thresholds, _ablated_run, unclassified_label
from interp.ioi.dataset import build_ioi
from interp.ioi.means import MeanSample
from interp.ioi.pipeline import IOIConfig, run_ioi
from interp.ioi.scores import attention_scores
from interp.ioi.sources import IOISource, dataset_source
from interp.ioi.templates import BABA_TEMPLATES
from interp.models import load_model
from interp.nodes import Head
from interp.patching import prepare_runs
from interp.patching.runs import AtPositions

D_HEAD, NAME_DIMS, POS0 = 16, 16, 16


def one_template_source() -> IOISource:
    paper = dataset_source("paper")
    return IOISource("one-template", (BABA_TEMPLATES[0],), paper.names[:40], paper.places,
                     paper.objects)


def _attend(attn, head: int, query: int, keys: dict[int, float], q: float = 1.0) -> None:
    """END (position `query`) -> key positions with the given attention scores (approx.,
    when the residual at END is mostly its position; `q` scales them)."""
    w = attn.c_attn.weight
    w[POS0 + query, head * D_HEAD] = q
    for pos, score in keys.items():
        w[POS0 + pos, 64 + head * D_HEAD] = score / 13.0  # LN'd one-hots ~8 and ~6.6


def _copy(attn, head: int, scale: float, dims=range(NAME_DIMS)) -> None:
    for unit, dim in enumerate(dims):
        attn.c_attn.weight[dim, 128 + head * D_HEAD + unit] = 1.0
        attn.c_proj.weight[head * D_HEAD + unit, dim] = scale


def hand_built(name_ids: list[int], pos: dict[str, int], s_suppression: float = -2.0):
    model = load_model("random:tiny", device="cpu")
    hf = model.original_model
    tr = hf.transformer
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for ln in [tr.ln_f, *[b.ln_1 for b in tr.h], *[b.ln_2 for b in tr.h]]:
            ln.weight.fill_(1.0)
        tr.wte.weight[name_ids, :NAME_DIMS] = torch.randn(len(name_ids), NAME_DIMS,
                                                          generator=gen)
        for p in range(32):
            tr.wpe.weight[p, POS0 + p] = 6.0
        end, io, s1, s2 = pos["END"], pos["IO"], pos["S1"], pos["S2"]
        a0, a1 = tr.h[0].attn, tr.h[1].attn
        _attend(a0, 0, end, {io: 20})  # L0H0 name mover
        _copy(a0, 0, 3.0)
        _attend(a0, 1, end, {io: 20})  # L0H1 same-layer strong head, dim 15 only
        _copy(a0, 1, 12.0, dims=[15])
        _attend(a1, 0, end, {io: 12})  # L1H0 backup
        w = a1.c_attn.weight
        for i in range(15):  # query reads the name movers' output, avoids that name
            w[i, 1 + i] = -2.0
            w[i, 64 + 1 + i] = 2.0
        _copy(a1, 0, 1.0)
        _attend(a1, 1, end, {s2: 20})  # L1H1 S-suppression
        _copy(a1, 1, s_suppression)
        _attend(a1, 2, end, {s1: 9.0, io: 7.0}, q=5.0)  # L1H2 attends S1, copies S
        _copy(a1, 2, 1.0)
        tr.h[1].mlp.c_proj.bias[63] = 20.0  # a constant only the final norm sees: it keeps
    return model  # the final scale from being dominated by the heads' outputs


@pytest.fixture(scope="module")
def built():
    probe = load_model("random:tiny", device="cpu")
    source = one_template_source()
    ds = build_ioi(probe, 24, 0, source=source)
    names = [probe.tokenizer.encode(" " + n, add_special_tokens=False) for n in ds.vocab.names]
    model = hand_built([ids[0] for ids in names], ds.records[0]["positions"])
    ds = build_ioi(model, 24, 0, source=source)
    runs = prepare_runs(model, ds.batch)
    means = MeanSample.build(model, source, 20, 0, n_resamples=2)
    att = attention_scores(model, runs.clean_cache, ds.batch)
    clf = Classifier(model, runs, att, Thresholds(), progress=False,
                     mean_runs=means.runs_for(runs, ds.records))
    return model, runs, clf, clf.run()


def test_construction_does_the_task(built):
    _, runs, clf, _ = built
    assert clf.clean > 1 and (runs.clean_metric > 0).float().mean() > 0.9
    assert clf._att("end_to_io", Head(0, 0)) > 0.9
    assert clf._att("end_to_s2", Head(1, 1)) > 0.7


def test_name_mover_found(built):
    *_, classes = built
    assert classes["name_movers"] == [Head(0, 0)]


def test_same_layer_head_is_not_a_backup(built):
    """L0H1 grows only through the final-norm scale: unfrozen growth passes the threshold,
    frozen growth is exactly 0, and it is not labelled a backup."""
    _, _, clf, classes = built
    grow = clf.backup_effects
    assert grow["increase_unfrozen_scale"][0][1] >= clf.t.backup  # the old rule's artefact
    assert abs(grow["increase_frozen_scale"][0][1]) < 1e-5
    assert Head(0, 1) not in classes["backup_name_movers"]


def test_later_head_copying_io_once_movers_ablated_is_a_backup(built):
    _, _, clf, classes = built
    assert classes["backup_name_movers"] == [Head(1, 0)]
    assert clf._att("end_to_io", Head(1, 0)) < 0.2  # it does not move IO in the clean run
    assert clf.scores["backup_name_movers"]["L1H0"]["attn_end_to_io_ablated"] > 0.3


def test_s1_attending_s_copier_is_not_a_negative_name_mover(built):
    _, _, clf, classes = built
    effect = clf.step_effects["logits"][Head(1, 2)]
    assert effect >= clf.t.negative  # large positive effect: the old rule took it
    assert clf._att("end_to_io", Head(1, 2)) > max(clf.t.min_attention,
                                                   clf._att("end_to_s2", Head(1, 2)))
    assert Head(1, 2) not in classes["negative_name_movers"]


def test_s_suppression_head_is_unclassified(built):
    _, _, clf, classes = built
    assert all(Head(1, 1) not in heads for heads in classes.values())
    sig = clf.unclassified["L1H1"]
    assert sig["label"] == "S-suppression: attends S2, negative copying"
    assert sig["negative_copying"] >= 0.9 and sig["path_to_logits_relative"] < -0.1
    assert list(clf.unclassified)[0] == "L1H1"  # strongest first


def test_backup_run_resumed_equals_the_full_ablated_forward(built):
    """The backup step's ablated run resumes at the first ablated layer from the clean run:
    it must equal one full hooked forward with everything outside the circuit ablated."""
    model, runs, clf, _ = built
    circuit = without(full_circuit(model), [Head(1, 0)])  # layer 0 kept whole
    resumed = _ablated_run(model, runs, clf.mean_runs, circuit, start=1)
    with model.hooks(fwd_hooks=ablation_hooks(model, clf.mean_runs, circuit)):
        _, full = model.run_with_cache(runs.batch.clean_tokens)
    reads = {f"blocks.{la}.{h}" for la in range(2) for h in ("attn.hook_z", "attn.hook_pattern",
                                                             "hook_mlp_out")}
    assert reads | {"hook_embed", "ln_final.hook_scale"} <= set(resumed)
    rows, read = torch.arange(len(runs.batch)), runs.batch.read_positions
    for name, value in resumed.items():  # the layers it ran: outputs at the read only
        got, want = ((value[rows, read], full[name][rows, read])
                     if isinstance(value, AtPositions) else (value, full[name]))
        assert torch.allclose(got, want, atol=1e-5), name
    assert isinstance(resumed["blocks.1.hook_mlp_out"], AtPositions)
    z = resumed["blocks.1.attn.hook_z"][rows, read]
    clean = runs.clean_cache["blocks.1.attn.hook_z"][rows, read]
    assert (z[:, 0] - clean[:, 0]).abs().max() > 1e-3  # the ablation did act


def test_label_rules_on_hand_signatures():
    t = Thresholds()
    sig = {"attn_end_to_io": 0.7, "attn_end_to_s1": 0.1, "attn_end_to_s2": 0.1,
           "copying": 0.9, "negative_copying": 0.0}
    assert unclassified_label(sig, t) == "IO-mover: attends IO, copying"
    sig |= {"attn_end_to_io": 0.01, "attn_end_to_s1": 0.02, "attn_end_to_s2": 0.03}
    assert unclassified_label(sig, t) == "other: attends no name, copying"


def test_mean_sample_equals_plain_template_means(built):
    model, runs, _, _ = built
    source = one_template_source()
    means = MeanSample.build(model, source, 5, 3, n_resamples=1)
    ds = build_ioi(model, 5, 3 + 1_000_003, source=source)
    _, cache = model.run_with_cache(ds.batch.corrupted_tokens)
    for name in ("blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out"):  # the first and last
        assert torch.allclose(means.means[name][0, 0], cache[name].mean(0), atol=1e-5)
    ref = cache["blocks.1.attn.hook_z"].mean(0)
    assert torch.allclose(means.means["blocks.1.attn.hook_z"][0, 0], ref, atol=1e-5)
    assert not torch.allclose(means.means["blocks.1.attn.hook_z"][1, 0], ref, atol=1e-5)


def test_model_preferring_s_labels_nothing(tmp_path, built):
    """Clean logit diff <= 0 (the S-suppression head made an S copier): no labels, and
    the summary says why; the patching maps are still written."""
    model = load_model("random:tiny", device="cpu")
    with torch.no_grad():  # untie the unembedding and flip it: every logit diff flips sign
        lm_head = model.original_model.lm_head
        lm_head.weight = torch.nn.Parameter(-lm_head.weight.detach().clone())
    ds = build_ioi(model, 8, 0)
    clean = prepare_runs(model, ds.batch).clean_metric.mean().item()
    assert clean < 0
    run = run_ioi(model, IOIConfig(n_prompts=8, n_mean_prompts=2, n_resamples=1), tmp_path,
                  progress=False)
    s = json.loads((run.folder / "summary.json").read_text())
    assert "<= 0" in s["classification_skipped"]
    assert not any(s["head_classes"].values()) and s["unclassified"] == {}
    assert len(s["path_patching_to_logits"]) == 2 and s["circuit_file"] is None


def test_zero_logit_difference_is_refused(tmp_path):
    model = load_model("random:tiny", device="cpu")
    with torch.no_grad():
        lm_head = model.original_model.lm_head
        lm_head.weight = torch.nn.Parameter(torch.zeros_like(lm_head.weight))
    with pytest.raises(UserValueError, match="about 0"):
        run_ioi(model, IOIConfig(n_prompts=4, n_mean_prompts=1, n_resamples=1), tmp_path,
                progress=False)


def test_lean_classifier_frees_the_path_inputs_with_the_same_result(built):
    """`lean=True` frees the corrupted cache and the gradients after the path-patching
    steps: the same classes and scores as the plain classifier (the fixture's), on fresh
    runs of the same prompts."""
    model, runs, clf, classes = built
    fresh = prepare_runs(model, runs.batch)
    lean = Classifier(model, fresh, clf.att, Thresholds(), progress=False, lean=True,
                      mean_runs=clf.mean_runs)
    assert lean.run() == classes and lean.scores == clf.scores
    assert lean.backup_effects == clf.backup_effects
    assert not fresh.corrupted_cache and fresh.grads is None and not fresh.bases
    assert runs.corrupted_cache  # the plain classifier keeps them
