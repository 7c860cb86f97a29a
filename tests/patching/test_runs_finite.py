"""prepare_runs refuses a task whose metric is not finite (issue 17: NaN was written)."""

import pytest
import torch

from interp.errors import UserError
from interp.ioi.dataset import build_ioi
from interp.patching.runs import prepare_runs


class NanOnSomeRows:
    """Wraps a metric; returns NaN for the first prompt, as a broken custom metric would."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, logits):
        out = self.inner(logits).clone()
        out[..., 0] = float("nan")
        return out

    def subset(self, index):
        return NanOnSomeRows(self.inner.subset(index))

    def from_resid(self, model, resid):
        return self(resid @ model.W_U)


def test_non_finite_metric_is_refused_naming_the_stage(tiny):
    batch = build_ioi(tiny, 4, 0).batch
    assert torch.isfinite(prepare_runs(tiny, batch).clean_metric).all()  # the plain task is fine
    batch.metric = NanOnSomeRows(batch.metric)
    with pytest.raises(UserError, match="not finite on 1 of 4 clean prompts.*prepare_runs"):
        prepare_runs(tiny, batch)
