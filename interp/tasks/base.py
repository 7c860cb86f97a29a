"""The task contract: what a circuit analysis needs from a behaviour.

A `Task` has a `name` and builds a `TaskBatch` for a model: clean and corrupted prompts of
equal token length (row by row), the position each prompt's metric reads, named positions,
a group id per prompt and a `Metric`. Prompts in one group share their token length, so a
position means the same thing in every prompt of the group (e.g. one IOI template): mean
ablation is taken per group and position, as in the IOI paper.

`TaskBatch` checks everything it can on its own when it is built (`__post_init__`) and the
rest, which needs the model, in `TaskBatch.check(model)`, called where a batch first meets
the model (`prepare_runs`, `discover`). Every error names the field and the fix.

Example:
    >>> batch = TaskBatch(clean, corrupted, read_positions=torch.tensor([4, 4]),
    ...                   groups=torch.tensor([0, 0]), metric=LogitDiff(answer, wrong))
    >>> batch.check(model)
"""

import re
from dataclasses import dataclass, field
from typing import Protocol, no_type_check, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import UserValueError
from interp.tokens import NO_BOS, Bos

METRIC_METHODS = ("__call__", "subset", "from_resid")
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@runtime_checkable
class Metric(Protocol):
    """What every analysis calls on a task's metric.

    - `metric(logits)`: logits `[..., batch, vocab]` already taken at each prompt's read
      position -> one value per prompt `[..., batch]` (leading dims: many patched runs).
    - `metric.subset(index)`: the metric of the prompts at `index` (slice every per-prompt
      tensor, e.g. the answer ids), used when a batch is split or subsampled.
    - `metric.from_resid(model, resid)`: the same values from final residual vectors
      `[..., batch, d_model]`; the fast patching engines call it. Subclass `UnembedMetric`
      for the plain version (final norm + full unembedding, then `metric(logits)`).
    """

    def __call__(self, logits: Float[Tensor, "... batch vocab"]) -> Float[Tensor, "... batch"]:
        ...

    def subset(self, index: Int[Tensor, " n"]) -> "Metric":
        ...

    def from_resid(self, model, resid: Float[Tensor, "... batch d_model"]
                   ) -> Float[Tensor, "... batch"]:
        ...


class UnembedMetric:
    """Mixin giving a metric `from_resid` by unembedding the whole vocabulary."""

    def from_resid(self, model, resid: Float[Tensor, "... batch d_model"]
                   ) -> Float[Tensor, "... batch"]:
        from interp.forward import unembed

        return self(unembed(model, resid))


def missing_metric_methods(metric) -> list[str]:
    """The `Metric` methods `metric` lacks (empty when it follows the protocol)."""
    return [m for m in METRIC_METHODS if not callable(getattr(metric, m, None))]


def _fail(field_name: str, problem: str, fix: str):
    raise UserValueError(f"TaskBatch.{field_name}: {problem}; {fix}")


def _check_vector(name: str, value, n: int) -> None:
    if not isinstance(value, Tensor) or value.dim() != 1 or len(value) != n:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        _fail(name, f"expected a [batch] = [{n}] tensor, got {shape}",
              "give one integer per prompt")
    if value.is_floating_point() or value.is_complex():
        _fail(name, f"expected integers, got dtype {value.dtype}", "use torch.long")


@no_type_check  # validates its own fields, with messages for users (the test hook skips it)
@dataclass
class TaskBatch:
    """One task's prompts, tokenised for one model.

    Attributes:
        clean_tokens: right-padded `[batch, pos]`, at least one prompt.
        corrupted_tokens: same shape; row i has the same length as clean row i.
        read_positions: `[batch]`, where the metric reads (e.g. IOI's END); < the length.
        groups: `[batch]` group id (template); prompts in a group share their token length.
        metric: a `Metric` (logits `[..., batch, vocab]` at `read_positions` -> `[..., batch]`).
        positions: named positions `[batch]` each, e.g. {"IO": ..., "S2": ..., "END": ...}.
        bos: the BOS token prepended to every prompt (`NO_BOS` for none).
        records: one JSON-able dict per prompt (strings, ids) for dataset files.
        lengths: `[batch]` token count of each prompt before padding (None: no padding).
    """

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    read_positions: Int[Tensor, " batch"]
    groups: Int[Tensor, " batch"]
    metric: Metric
    positions: dict[str, Int[Tensor, " batch"]] = field(default_factory=dict)
    bos: Bos = NO_BOS
    records: list[dict] = field(default_factory=list)
    lengths: Int[Tensor, " batch"] | None = None

    @property
    def prepend_bos(self) -> bool:
        return self.bos.id is not None

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    def __post_init__(self):
        self._check_tokens()
        n, width = self.clean_tokens.shape
        for name in ("read_positions", "groups"):
            _check_vector(name, getattr(self, name), n)
        for key, value in self.positions.items():
            _check_vector(f"positions[{key!r}]", value, n)
        if self.lengths is not None:
            _check_vector("lengths", self.lengths, n)
            if (self.lengths < 1).any() or (self.lengths > width).any():
                _fail("lengths", f"values must lie in 1..{width} (the token width)",
                      "give each prompt's token count before padding")
        self._check_positions()
        self._check_groups()
        missing = missing_metric_methods(self.metric)
        if missing:
            _fail("metric", f"{type(self.metric).__name__} has no {', '.join(missing)}",
                  "a metric needs __call__(logits), subset(index) and from_resid(model, resid)"
                  " (see interp.tasks.base.Metric; subclass UnembedMetric for from_resid)")
        if len(self.records) not in (0, n):
            _fail("records", f"{len(self.records)} records for {n} prompts",
                  "give one record per prompt, or none")

    def _check_tokens(self) -> None:
        for name in ("clean_tokens", "corrupted_tokens"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.dim() != 2:
                _fail(name, "expected a [batch, pos] tensor of token ids",
                      "stack the tokenised prompts (right-padded)")
            if value.is_floating_point():
                _fail(name, f"expected token ids, got dtype {value.dtype}", "use torch.long")
        if self.clean_tokens.shape != self.corrupted_tokens.shape:
            _fail("corrupted_tokens", f"shape {tuple(self.corrupted_tokens.shape)} differs "
                  f"from clean_tokens {tuple(self.clean_tokens.shape)}",
                  "every corrupted prompt must have the same token length as its clean prompt")
        n, width = self.clean_tokens.shape
        if n == 0 or width == 0:
            _fail("clean_tokens", f"no prompts (shape {(n, width)})",
                  "build at least one prompt of at least one token")

    def _row_lengths(self) -> Int[Tensor, " batch"]:
        if self.lengths is not None:
            return self.lengths
        return torch.full((len(self),), self.clean_tokens.shape[1])

    def _check_positions(self) -> None:
        lengths = self._row_lengths()
        named = {"read_positions": self.read_positions,
                 **{f"positions[{k!r}]": v for k, v in self.positions.items()}}
        for name, value in named.items():
            bad = ((value < 0) | (value >= lengths.to(value.device))).nonzero().flatten()
            if len(bad):
                row = int(bad[0])
                _fail(name, f"prompt {row} has position {int(value[row])} outside its "
                      f"{int(lengths[row])} tokens", "positions count from 0 and must be < the "
                      "prompt's token length")

    def _check_groups(self) -> None:
        lengths = self._row_lengths()
        for group in self.groups.unique().tolist():
            found = lengths[self.groups == group].unique()
            if len(found) > 1:
                _fail("groups", f"group {group} mixes token lengths {found.tolist()}",
                      "put prompts of different lengths in different groups (mean ablation "
                      "averages each position over a group)")

    def check(self, model) -> "TaskBatch":
        """The checks that need the model: token ids < d_vocab, length <= n_ctx, and the
        metric's output shapes (on zero logits and residuals). Returns `self`."""
        cfg = model.cfg
        for name in ("clean_tokens", "corrupted_tokens"):
            tokens = getattr(self, name)
            if tokens.min() < 0 or tokens.max() >= cfg.d_vocab:
                _fail(name, f"token ids span {int(tokens.min())}..{int(tokens.max())}, "
                      f"outside the model's vocabulary 0..{cfg.d_vocab - 1}",
                      "tokenise with this model's tokenizer")
        width = self.clean_tokens.shape[1]
        if width > cfg.n_ctx:
            _fail("clean_tokens", f"{width} tokens exceed the model's context of {cfg.n_ctx}",
                  "use shorter prompts")
        self._check_metric_shapes(model)
        return self

    @torch.inference_mode()
    def _check_metric_shapes(self, model) -> None:
        n, cfg = len(self), model.cfg
        device = cfg.device
        checks = {
            "metric(logits)": lambda: self.metric(torch.zeros(2, n, cfg.d_vocab, device=device)),
            "metric.from_resid(model, resid)": lambda: self.metric.from_resid(
                model, torch.zeros(2, n, cfg.d_model, device=device)),
        }
        expected = {k: (2, n) for k in checks}
        one = torch.zeros(1, dtype=torch.long)
        checks["metric.subset(index)(logits)"] = lambda: self.metric.subset(one)(
            torch.zeros(1, cfg.d_vocab, device=device))
        expected["metric.subset(index)(logits)"] = (1,)
        for name, call in checks.items():
            try:
                out = call()
            except (RuntimeError, IndexError, ValueError, TypeError) as err:
                raise UserValueError(
                    f"TaskBatch.metric: {name} failed on zero input shaped like this batch "
                    f"({type(err).__name__}: {str(err).splitlines()[0]}); a metric reads "
                    "[..., batch, vocab] logits, and subset must slice every per-prompt tensor"
                ) from err
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            if shape != expected[name]:
                _fail("metric", f"{name} returned {shape} for {expected[name]} prompts-shaped "
                      "input", "return one value per prompt, keeping leading dims; subset "
                      "must slice every per-prompt tensor")

    def subset(self, index: Int[Tensor, " n"]) -> "TaskBatch":
        """The prompts at `index` (the metric's per-prompt tensors are sliced too)."""
        return TaskBatch(
            self.clean_tokens[index], self.corrupted_tokens[index], self.read_positions[index],
            self.groups[index], self.metric.subset(index),
            {k: v[index] for k, v in self.positions.items()},
            self.bos, [self.records[i] for i in index.tolist()] if self.records else [],
            None if self.lengths is None else self.lengths[index],
        )


class Task(Protocol):
    """A behaviour to explain: a `name` (letters, digits, `_.-`; it names the output folder)
    and a `build` that is deterministic given the seed."""

    name: str

    def build(self, model, n_prompts: int, seed: int) -> TaskBatch: ...


def check_task(task, where: str) -> None:
    """UserValueError unless `task` has a valid `name` and a `build` method."""
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise UserValueError(
            f"{where}: the task's name is {name!r}; give the class a `name` attribute of "
            "letters, digits and _.- (it names the output folder), e.g. name = 'my-task'")
    if not callable(getattr(task, "build", None)):
        raise UserValueError(f"{where} is not a Task: it needs build(model, n_prompts, seed)")


def group_ids(keys: list) -> Int[Tensor, " batch"]:
    """Integer ids for hashable group keys, in order of first appearance."""
    table: dict = {}
    return torch.tensor([table.setdefault(k, len(table)) for k in keys])
