"""Metrics read from logits at one position per prompt.

A metric maps logits `[..., batch, d_vocab]` (already taken at the position it reads) to
per-prompt values `[..., batch]`; the leading dims let sweeps evaluate many patched runs
(e.g. senders x prompts) in one call.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


def gather_last(logits: Float[Tensor, "... batch vocab"],
                ids: Int[Tensor, " batch"]) -> Float[Tensor, "... batch"]:
    """`logits[..., b, ids[b]]` for every b."""
    index = ids.to(logits.device).expand(*logits.shape[:-1]).unsqueeze(-1)
    return logits.gather(-1, index).squeeze(-1)


@dataclass
class LogitDiff:
    """logit(answer) - logit(wrong) per prompt, e.g. IOI's logit(IO) - logit(S)."""

    answer: Int[Tensor, " batch"]
    wrong: Int[Tensor, " batch"]

    def __call__(self, logits: Float[Tensor, "... batch vocab"]) -> Float[Tensor, "... batch"]:
        return gather_last(logits, self.answer) - gather_last(logits, self.wrong)

    def subset(self, index: Int[Tensor, " n"]) -> "LogitDiff":
        return LogitDiff(self.answer[index], self.wrong[index])

    def from_resid(self, model, resid: Float[Tensor, "... batch d_model"]) -> Float[
            Tensor, "... batch"]:
        """The same values from final residual vectors, unembedding only the two columns
        each prompt needs instead of the whole vocabulary."""
        w_u = model.W_U
        direction = (w_u[:, self.answer] - w_u[:, self.wrong]).T  # [batch, d_model]
        out = (model.ln_final(resid) * direction).sum(-1)
        b_u = getattr(model, "b_U", None)
        return out + (b_u[self.answer] - b_u[self.wrong]) if b_u is not None else out


def logits_at(logits: Float[Tensor, "batch pos vocab"],
              positions: Int[Tensor, " batch"]) -> Float[Tensor, "batch vocab"]:
    """Each prompt's logits at its own position (works for any [batch, pos, ...] tensor)."""
    return logits[torch.arange(logits.shape[0], device=logits.device), positions.to(logits.device)]
