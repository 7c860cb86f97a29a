"""The `Task` interface: what a circuit analysis needs from a behaviour.

A task builds a `TaskBatch` for a model: clean and corrupted prompts of equal token length
(row by row), the position each prompt's metric reads, named positions, a group id per
prompt (prompts in one group share a template, hence token length and positions; mean
ablation is taken per group and position, as in the IOI paper), and the metric.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.tokens import NO_BOS, Bos

Metric = Callable[[Float[Tensor, "... batch vocab"]], Float[Tensor, "... batch"]]


@dataclass
class TaskBatch:
    """One task's prompts, tokenised for one model.

    Attributes:
        clean_tokens: right-padded `[batch, pos]`.
        corrupted_tokens: same shape; row i has the same length as clean row i.
        read_positions: `[batch]`, where the metric reads (e.g. IOI's END).
        groups: `[batch]` group id (template); mean ablations are per group and position.
        metric: logits `[..., batch, vocab]` at `read_positions` -> `[..., batch]`.
        positions: named positions `[batch]` each, e.g. {"IO": ..., "S2": ..., "END": ...}.
        bos: the BOS token prepended to every prompt (`NO_BOS` for none).
        records: one JSON-able dict per prompt (strings, ids) for dataset files.
    """

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    read_positions: Int[Tensor, " batch"]
    groups: Int[Tensor, " batch"]
    metric: Metric
    positions: dict[str, Int[Tensor, " batch"]] = field(default_factory=dict)
    bos: Bos = NO_BOS
    records: list[dict] = field(default_factory=list)

    @property
    def prepend_bos(self) -> bool:
        return self.bos.id is not None

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    def __post_init__(self):
        if self.clean_tokens.shape != self.corrupted_tokens.shape:
            raise ValueError(
                f"clean tokens {tuple(self.clean_tokens.shape)} and corrupted tokens "
                f"{tuple(self.corrupted_tokens.shape)} differ in shape; every corrupted prompt "
                "must have the same token length as its clean prompt.")

    def subset(self, index: Int[Tensor, " n"]) -> "TaskBatch":
        """The prompts at `index` (metric tensors are sliced too when they have .subset)."""
        metric = self.metric.subset(index) if hasattr(self.metric, "subset") else self.metric
        return TaskBatch(
            self.clean_tokens[index], self.corrupted_tokens[index], self.read_positions[index],
            self.groups[index], metric, {k: v[index] for k, v in self.positions.items()},
            self.bos, [self.records[i] for i in index.tolist()] if self.records else [],
        )


def normalise(value: Tensor, clean: float, corrupted: float) -> Tensor:
    """Map a metric to 1 = clean behaviour, 0 = corrupted behaviour."""
    return (value - corrupted) / (clean - corrupted)


class Task(Protocol):
    """A behaviour to explain. `build` must be deterministic given the seed."""

    name: str

    def build(self, model, n_prompts: int, seed: int) -> TaskBatch: ...


def group_ids(keys: list) -> Int[Tensor, " batch"]:
    """Integer ids for hashable group keys, in order of first appearance."""
    table: dict = {}
    return torch.tensor([table.setdefault(k, len(table)) for k in keys])
