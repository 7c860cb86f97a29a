"""Direct logit attribution adds up exactly on every family (frozen final/post-norm scales)."""

import pytest
import torch
from tiny_families import FAMILIES, tiny_model

from interp.dla import direct_logit_attribution
from interp.ioi.dataset import build_ioi
from interp.metrics import logits_at
from interp.patching import prepare_runs


@pytest.mark.parametrize("family", FAMILIES)
def test_components_add_up_to_the_logit_difference(family):
    model = tiny_model(family)
    runs = prepare_runs(model, build_ioi(model, n_prompts=4, seed=0).batch)
    batch = runs.batch
    dla = direct_logit_attribution(model, runs.clean_cache, batch)
    total = (dla["heads"].sum((0, 1)) + dla["mlps"].sum(0) + dla["attn_bias"].sum(0)
             + dla["embed"] + dla["constant"])
    final = logits_at(runs.clean_cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"],
                      batch.read_positions)
    logits = model.unembed(model.ln_final(final))  # before any soft-capping (Gemma 2)
    rows = torch.arange(len(batch))
    expected = logits[rows, batch.metric.answer] - logits[rows, batch.metric.wrong]
    assert expected.abs().max() > 0.1
    assert torch.allclose(total, expected, atol=1e-4)
