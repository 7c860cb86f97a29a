"""The task contract: `TaskBatch` refuses malformed input with a message naming field and fix."""

from dataclasses import dataclass, replace

import pytest
import torch
from jaxtyping import TypeCheckError

from interp.errors import UserValueError
from interp.metrics import LogitDiff
from interp.patching import prepare_runs
from interp.tasks.base import Metric, TaskBatch, UnembedMetric
from interp.tasks.registry import get_task


def _parts(n=4, width=6):
    clean = torch.arange(n * width).view(n, width) + 100
    return dict(clean_tokens=clean, corrupted_tokens=clean + 1,
                read_positions=torch.full((n,), width - 1), groups=torch.zeros(n, dtype=torch.long),
                metric=LogitDiff(torch.arange(n), torch.arange(n) + 1))


@dataclass
class NoSubset:
    """A metric as users wrote them before the contract: callable, with from_resid only."""

    answer: torch.Tensor

    def __call__(self, logits):
        return logits[..., torch.arange(len(self.answer)), self.answer]

    def from_resid(self, model, resid):
        return resid.sum(-1)


def _raises(match: str, **changes):
    with pytest.raises(UserValueError, match=match):
        TaskBatch(**{**_parts(), **changes})


def test_valid_batch_passes_and_metric_follows_the_protocol():
    batch = TaskBatch(**_parts())
    assert isinstance(batch.metric, Metric) and len(batch) == 4


def test_metric_without_subset_is_named():
    """It used to fail deep in torch ("expanded size of the tensor (16) must match (20)")."""
    _raises(r"TaskBatch\.metric: NoSubset has no subset.*subset\(index\)",
            metric=NoSubset(torch.arange(4)))


def test_metric_without_from_resid_or_call():
    class OnlySubset:
        def subset(self, index):
            return self

    _raises(r"metric: OnlySubset has no __call__, from_resid", metric=OnlySubset())


def test_shape_and_type_errors_name_the_field():
    parts = _parts()
    _raises(r"corrupted_tokens: shape \(4, 5\) differs",
            corrupted_tokens=parts["clean_tokens"][:, :5])
    _raises(r"clean_tokens: no prompts", clean_tokens=parts["clean_tokens"][:0],
            corrupted_tokens=parts["corrupted_tokens"][:0])
    _raises(r"clean_tokens: expected token ids", clean_tokens=parts["clean_tokens"].float(),
            corrupted_tokens=parts["corrupted_tokens"].float())
    _raises(r"read_positions: expected a \[batch\] = \[4\]", read_positions=torch.tensor([5, 5]))
    _raises(r"groups: expected integers", groups=torch.zeros(4))
    _raises(r"records: 2 records for 4 prompts", records=[{}, {}])


def test_positions_must_lie_inside_each_prompt():
    _raises(r"read_positions: prompt 0 has position 6 outside its 6 tokens",
            read_positions=torch.full((4,), 6))
    _raises(r"positions\['S2'\]: prompt 2 has position -1",
            positions={"S2": torch.tensor([0, 1, -1, 2])})
    # with padding, the limit is the prompt's own length
    _raises(r"read_positions: prompt 1 has position 5 outside its 4 tokens",
            lengths=torch.tensor([6, 4, 6, 4]), groups=torch.tensor([0, 1, 0, 1]))
    _raises(r"lengths: values must lie in 1\.\.6", lengths=torch.tensor([6, 6, 7, 6]))


def test_a_group_shares_its_token_length():
    lengths = torch.tensor([6, 6, 5, 6])
    _raises(r"groups: group 0 mixes token lengths \[5, 6\]", lengths=lengths,
            read_positions=lengths - 1)
    TaskBatch(**{**_parts(), "lengths": lengths, "read_positions": lengths - 1,
                 "groups": torch.tensor([0, 0, 1, 0])})


def test_subset_slices_metric_and_lengths():
    batch = TaskBatch(**{**_parts(), "lengths": torch.tensor([6, 6, 5, 5]),
                         "read_positions": torch.tensor([5, 5, 4, 4]),
                         "groups": torch.tensor([0, 0, 1, 1])})
    sub = batch.subset(torch.tensor([3, 0]))
    assert sub.metric.answer.tolist() == [3, 0] and sub.lengths.tolist() == [5, 6]


def test_model_checks(tiny):
    parts = _parts()
    TaskBatch(**parts).check(tiny)
    big = parts["clean_tokens"].clone()
    big[1, 2] = tiny.cfg.d_vocab
    with pytest.raises(UserValueError, match=rf"clean_tokens: token ids span .*{tiny.cfg.d_vocab}"
                                             r".*tokenise with this model"):
        TaskBatch(**{**parts, "clean_tokens": big}).check(tiny)
    width = tiny.cfg.n_ctx + 1
    long = torch.zeros(1, width, dtype=torch.long)
    with pytest.raises(UserValueError, match=rf"{width} tokens exceed the model's context"):
        TaskBatch(long, long, torch.tensor([0]), torch.tensor([0]),
                  LogitDiff(torch.tensor([0]), torch.tensor([1]))).check(tiny)


@dataclass
class MeanOverPrompts(UnembedMetric):
    """A wrong metric: averages the prompts away (drops the batch dim)."""

    answer: torch.Tensor

    def __call__(self, logits):
        return logits[..., self.answer].mean((-1, -2))

    def subset(self, index):
        return MeanOverPrompts(self.answer[index])


@dataclass
class UnslicedSubset(UnembedMetric):
    """A wrong metric: `subset` returns the full metric, so shapes clash downstream."""

    answer: torch.Tensor

    def __call__(self, logits):
        return logits[..., torch.arange(len(self.answer)), self.answer]

    def subset(self, index):
        return self


@pytest.mark.parametrize(("metric", "message"), [
    (MeanOverPrompts(torch.arange(4)), r"metric\(logits\) returned \(2,\)"),
    (UnslicedSubset(torch.arange(4)), r"metric\.subset\(index\)\(logits\) failed .*IndexError"),
])
def test_metric_output_shape_is_checked_before_the_runs(tiny, metric, message):
    batch = TaskBatch(**{**_parts(), "metric": metric})
    with pytest.raises(UserValueError, match=message):
        prepare_runs(tiny, batch)


def test_custom_task_needs_a_safe_name(tmp_path):
    path = tmp_path / "mytask.py"
    path.write_text("class NoName:\n    def build(self, model, n_prompts, seed):\n        pass\n"
                    "class Escaping(NoName):\n    name = '../../x'\n"
                    "class Good(NoName):\n    name = 'my-task'\n")
    with pytest.raises(UserValueError, match=r"NoName: the task's name is None; give the class"):
        get_task(f"{path}:NoName")
    with pytest.raises(UserValueError, match=r"the task's name is '\.\./\.\./x'"):
        get_task(f"{path}:Escaping")
    assert get_task(f"{path}:Good").name == "my-task"


def test_runs_copies_get_their_own_caches(tiny):
    runs = prepare_runs(tiny, TaskBatch(**_parts()))
    runs.grads, runs.bases["clean"] = {"x": 1}, "a base run"
    zeroed = replace(runs, corrupted_cache={k: torch.zeros_like(v)
                                            for k, v in runs.corrupted_cache.items()})
    assert zeroed.grads is None and zeroed.bases == {}
    assert runs.bases == {"clean": "a base run"}


def test_which_is_clean_or_corrupted(tiny):
    runs = prepare_runs(tiny, TaskBatch(**_parts()))
    assert runs.cache("corrupted") is runs.corrupted_cache
    # UserValueError; under the test suite's shape checks beartype refuses the Literal first
    with pytest.raises((UserValueError, TypeCheckError)) as err:
        runs.cache("corupted")
    assert "'clean', 'corrupted'" in str(err.value) and "'corupted'" in str(err.value)
