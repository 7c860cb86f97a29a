"""Induction on repeated random tokens: [BOS] r1..rn r1..rn, predict the second copy.

Metric: log-probability of the repeated token. `TaskBatch.metric` reads ONE position per
prompt, so each prompt reads one second-half position, and the read positions cycle through
the second half across prompts (prompt i reads repeat index 1 + i mod (n - 1)). The batch
mean of the metric is therefore the mean log-prob of the repeated tokens over the second
half (each position equally often when n_prompts is a multiple of n - 1). The first
repeated token is never read: nothing before it announces the repetition. Every prompt has
the full length 2n (+BOS); tokens after a read position cannot affect it (causal model), so
all prompts form one group with shared positions for mean ablation.

Corruption: the first half is a different random sequence (s1..sn r1..rn), so the second half
repeats nothing; same length.

Named positions per prompt: END (the read position, a second occurrence A2 of a token A),
A1 (A's first occurrence) and B1 (the token after A1, which induction heads attend to and
copy).

Example:
    >>> batch = InductionTask(half_length=20).build(model, n_prompts=38, seed=0)
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.tasks.base import TaskBatch, UnembedMetric
from interp.tokens import model_bos


@dataclass
class TokenLogProb(UnembedMetric):
    """log p(target) per prompt from logits at its read position."""

    target: Int[Tensor, " batch"]

    def __call__(self, logits: Float[Tensor, "... batch vocab"]) -> Float[Tensor, "... batch"]:
        logp = logits.float().log_softmax(-1)
        index = self.target.to(logits.device).expand(*logits.shape[:-1]).unsqueeze(-1)
        return logp.gather(-1, index).squeeze(-1)

    def subset(self, index: Int[Tensor, " n"]) -> "TokenLogProb":
        return TokenLogProb(self.target[index])


def _token_range(model) -> tuple[int, int]:
    """Ordinary token ids to sample from: skip the first 100 (bytes, specials) and the tail."""
    vocab = model.cfg.d_vocab
    high = min(vocab, len(model.tokenizer)) - 100
    if high <= 1000:
        raise ValueError(f"induction: vocabulary of {vocab} is too small to sample from.")
    return 100, high


@dataclass
class InductionTask:
    """Repeated random tokens; `half_length` tokens per half."""

    half_length: int = 20
    name: str = "induction"

    def build(self, model, n_prompts: int, seed: int) -> TaskBatch:
        n = self.half_length
        if n < 3:
            raise ValueError(f"induction: half_length must be >= 3, got {n}")
        gen = torch.Generator().manual_seed(seed)
        low, high = _token_range(model)
        special = set(model.tokenizer.all_special_ids)

        def sample() -> Int[Tensor, "n_prompts n"]:
            rows = [torch.randperm(high - low, generator=gen)[: n + len(special)] + low
                    for _ in range(n_prompts)]
            return torch.stack([r[~torch.isin(r, torch.tensor(sorted(special)))][:n]
                                for r in rows])

        first, other = sample(), sample()
        bos = [] if model_bos(model).id is None else [model_bos(model).id]
        prefix = torch.tensor(bos, dtype=torch.long).expand(n_prompts, len(bos))
        clean = torch.cat([prefix, first, first], 1)
        corrupted = torch.cat([prefix, other, first], 1)
        offset = len(bos)
        repeat_idx = 1 + torch.arange(n_prompts) % (n - 1)  # which repeated token is read
        read = offset + n + repeat_idx - 1  # position whose logits predict repeat repeat_idx
        target = first[torch.arange(n_prompts), repeat_idx]
        positions = {"END": read, "A1": read - n, "B1": read - n + 1}
        records = [{"clean_tokens": c.tolist(), "corrupted_tokens": k.tolist(),
                    "read_position": int(r), "target": int(t)}
                   for c, k, r, t in zip(clean, corrupted, read, target, strict=True)]
        return TaskBatch(clean, corrupted, read, torch.zeros(n_prompts, dtype=torch.long),
                         TokenLogProb(target), positions, model_bos(model), records)
