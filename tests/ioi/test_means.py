"""The mean sample's per-prompt means are built when read (`PromptMeans`): the same tensors
and the same mean-ablated metrics as a cache holding them all."""

import dataclasses

import pytest
import torch

from interp.circuit import full_circuit, without
from interp.ioi.dataset import build_ioi
from interp.ioi.means import MeanSample, PromptMeans
from interp.ioi.sources import dataset_source
from interp.mean_ablation import MeanAblation
from interp.nodes import Head, Mlp
from interp.patching import prepare_runs


@pytest.fixture(scope="module")
def sample(tiny):
    ds = build_ioi(tiny, 12, seed=2)
    runs = prepare_runs(tiny, ds.batch)
    means = MeanSample.build(tiny, dataset_source("paper"), 2, seed=2, n_resamples=2)
    return ds, runs, means


def _plain(means: MeanSample, ds, runs, draw: int) -> dict:
    """Every prompt's template mean, held: the cache `runs_for` stands for."""
    template = torch.tensor([r["template_index"] for r in ds.records])
    seq = runs.batch.clean_tokens.shape[1]
    out = {}
    for name, mean in means.means.items():
        act = mean[draw][template]
        if act.shape[1] >= seq:
            act = act[:, :seq]
        else:
            pad = torch.zeros(act.shape[0], seq - act.shape[1], *act.shape[2:])
            act = torch.cat([act, pad], 1)
        out[name] = act
    return out


def test_prompt_means_equal_held_means(sample):
    ds, runs, means = sample
    for draw in (0, 2):
        lazy = means.runs_for(runs, ds.records, draw).corrupted_cache
        plain = _plain(means, ds, runs, draw)
        assert isinstance(lazy, PromptMeans) and set(lazy) == set(plain)
        for name, act in plain.items():
            assert torch.equal(lazy[name], act), name
    lazy = means.runs_for(runs, ds.records, 0, ("attn.hook_z",)).corrupted_cache
    assert set(lazy) == {n for n in plain if n.endswith("attn.hook_z")}


def test_mean_ablation_on_prompt_means_equals_held_means(tiny, sample):
    ds, runs, means = sample
    lazy = means.runs_for(runs, ds.records)
    held = dataclasses.replace(runs, corrupted_cache=_plain(means, ds, runs, 0))
    circuit = {Head(0, 1): None, Head(1, 2): ["END"]}
    circuits = [circuit, without(full_circuit(tiny), [Head(1, 0)]), {**circuit, Mlp(0): None}]
    got = MeanAblation(tiny, lazy).metrics(circuits)
    assert torch.equal(got, MeanAblation(tiny, held).metrics(circuits))
    assert not torch.equal(got, MeanAblation(tiny, runs).metrics(circuits))  # other means


def test_dropped_resamples_keep_draw_zero(tiny):
    means = MeanSample.build(tiny, dataset_source("paper"), 2, seed=3, n_resamples=2)
    before = {name: mean.clone() for name, mean in means.means.items()}
    means.drop_resamples(("attn.hook_z",))
    for name, mean in means.means.items():
        kept = before[name] if name.endswith("attn.hook_z") else before[name][:1]
        assert torch.equal(mean, kept)
    assert means.means["blocks.0.hook_mlp_out"].shape[0] == 1
