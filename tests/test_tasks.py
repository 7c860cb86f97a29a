"""Greater-than and induction tasks: prompt invariants and metric signs on hand-built logits."""

import math

import pytest
import torch

from interp import load_model
from interp.tasks.greater_than import GreaterThanTask, YearMassDiff, year_scheme
from interp.tasks.induction import InductionTask
from interp.tasks.registry import get_task, register_task, task_names


def _decode(model, ids) -> list[str]:
    return [model.tokenizer.decode([int(i)]) for i in ids]


def _check_greater_than(model, n=12):
    batch = GreaterThanTask().build(model, n, seed=3)
    scheme = year_scheme(model)
    assert batch.clean_tokens.shape == batch.corrupted_tokens.shape
    assert (batch.read_positions == batch.clean_tokens.shape[1] - 1).all()  # no padding
    for row, rec in enumerate(batch.records):
        clean = _decode(model, batch.clean_tokens[row])
        corrupt = _decode(model, batch.corrupted_tokens[row])
        yy = rec["start_year"][2:]
        at = int(batch.positions["YY"][row])
        # the start year sits at YY; the corrupted prompt differs only there ("01")
        assert clean[at] == (yy if scheme == "two-digit" else yy[0])
        assert corrupt[at] == ("01" if scheme == "two-digit" else "0")
        diff = [i for i, (a, b) in enumerate(zip(clean, corrupt, strict=True)) if a != b]
        assert diff and min(diff) == at and max(diff) <= at + 1
        assert "".join(clean).strip().endswith("to the year 17")
        assert clean[int(batch.positions["NOUN"][row])].strip() == rec["noun"]
    again = GreaterThanTask().build(model, n, seed=3)
    assert torch.equal(again.clean_tokens, batch.clean_tokens)
    return batch, scheme


def _one_hot_logits(model, batch, token_of_row) -> torch.Tensor:
    logits = torch.full((len(batch), model.cfg.d_vocab), -30.0)
    logits[torch.arange(len(batch)), token_of_row] = 30.0
    return logits


def _year_metric_signs(model, batch, scheme):
    metric: YearMassDiff = batch.metric
    threshold = metric.threshold
    above = metric.year_ids[(threshold + 1).clamp(max=len(metric.year_ids) - 1)]
    at = metric.year_ids[threshold]
    ok = threshold + 1 < len(metric.year_ids)
    assert torch.allclose(metric(_one_hot_logits(model, batch, above))[ok], torch.tensor(1.0))
    assert torch.allclose(metric(_one_hot_logits(model, batch, at)), torch.tensor(-1.0))
    # uniform logits: only the year tokens count; leading dims are allowed
    uniform = metric(torch.zeros(3, len(batch), model.cfg.d_vocab))
    n = len(metric.year_ids)
    expected = ((n - 1 - threshold) - (threshold + 1)).float() / model.cfg.d_vocab
    assert torch.allclose(uniform, expected.expand(3, -1), atol=1e-6)


def test_greater_than_two_digit_tokenizer(tiny):
    batch, scheme = _check_greater_than(tiny)
    assert scheme == "two-digit"
    _year_metric_signs(tiny, batch, scheme)


@pytest.mark.offline_model
def test_greater_than_digit_tokenizer_and_smollm2_solves_it():
    from interp.metrics import logits_at

    model = load_model("smollm2-135m")
    batch, scheme = _check_greater_than(model)
    assert scheme == "digit"
    assert all(r["start_year"].endswith("9") for r in batch.records)
    _year_metric_signs(model, batch, scheme)
    with torch.no_grad():
        clean = batch.metric(logits_at(model(batch.clean_tokens), batch.read_positions))
        corrupt = batch.metric(logits_at(model(batch.corrupted_tokens), batch.read_positions))
    assert clean.mean() > 0.3 and corrupt.mean() < clean.mean() - 0.5


def test_induction_prompts(tiny):
    n = 7
    batch = InductionTask(half_length=n).build(tiny, 15, seed=1)
    clean, corrupt = batch.clean_tokens, batch.corrupted_tokens
    assert clean.shape == corrupt.shape == (15, 2 * n)  # GPT-2: no BOS
    assert torch.equal(clean[:, :n], clean[:, n:])  # repeated
    assert torch.equal(corrupt[:, n:], clean[:, n:])  # same second half
    assert (corrupt[:, :n] != clean[:, :n]).float().mean() > 0.9  # different first half
    rows = torch.arange(15)
    read, a1, b1 = batch.read_positions, batch.positions["A1"], batch.positions["B1"]
    assert ((read >= n) & (read < 2 * n - 1)).all()
    assert torch.equal(clean[rows, a1], clean[rows, read])  # A1 holds the current token
    assert torch.equal(batch.metric.target, clean[rows, read + 1])  # the next repeated token
    assert torch.equal(clean[rows, b1], batch.metric.target)  # which B1 holds
    assert sorted(set((read - n).tolist())) == list(range(n - 1))  # cycles the second half
    assert all(len(set(r[:n].tolist())) == n for r in clean)  # no token repeats in a half


def test_induction_metric_on_hand_built_logits(tiny):
    batch = InductionTask(half_length=5).build(tiny, 4, seed=0)
    target = batch.metric.target
    sure = _one_hot_logits(tiny, batch, target)
    assert torch.allclose(batch.metric(sure), torch.zeros(4), atol=1e-6)
    wrong = _one_hot_logits(tiny, batch, (target + 1) % tiny.cfg.d_vocab)
    assert (batch.metric(wrong) < -50).all()
    uniform = batch.metric(torch.zeros(2, 4, tiny.cfg.d_vocab))
    assert torch.allclose(uniform, torch.full((2, 4), -math.log(tiny.cfg.d_vocab)))


def test_registry(tmp_path, tiny):
    assert {"ioi", "greater-than", "induction", "capitals"} <= set(task_names())
    assert get_task("greater-than").name == "greater-than"
    with pytest.raises(ValueError, match="unknown task 'nope'.*greater-than"):
        get_task("nope")
    path = tmp_path / "mytask.py"
    path.write_text("from interp.tasks.induction import InductionTask\n"
                    "class Short(InductionTask):\n    def __init__(self):\n"
                    "        super().__init__(half_length=4, name='short')\n")
    task = get_task(f"{path}:Short")
    assert task.name == "short" and task.build(tiny, 3, 0).clean_tokens.shape == (3, 8)
    with pytest.raises(ValueError, match="defines no 'Long'"):
        get_task(f"{path}:Long")


def test_register_task_makes_it_available(monkeypatch):
    from interp.tasks import registry

    monkeypatch.setattr(registry, "TASKS", dict(registry.TASKS))  # leave the registry as found
    register_task("greater-than-again", lambda: get_task("greater-than"))
    assert "greater-than-again" in task_names()
    assert get_task("greater-than-again").name == "greater-than"
