"""Massive activations: MLP outputs at the first position (the attention sink) that dwarf the
rest (Sun et al. 2024, "Massive activations in large language models").

A model may write a huge vector into the first position (BOS) at one MLP; later heads attend
there as a no-op. Zero-ablating that MLP at every position then breaks the sink, not the
computation at the answer, so an "all positions" ablation must be read beside a "no-first"
one. Per layer we compare the MLP output norm at position 0 with the median norm over every
other real (non-padding) position.

Example:
    >>> report = massive_activations(clean)  # a CleanRun built with keep_mlp=True
    >>> report["massive_layers"]
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor

MASSIVE_RATIO = 100.0


def first_and_other_norms(mlp_out: Float[Tensor, "layer batch pos d"],
                          lengths: Int[Tensor, " batch"]
                          ) -> tuple[Float[Tensor, "layer batch"], Float[Tensor, "layer n"]]:
    """Per layer: the norm at position 0 of each prompt, and the norms at every other real
    (non-padding) position of every prompt."""
    norms = mlp_out.float().norm(dim=-1)  # [L, b, pos]
    pos = torch.arange(norms.shape[-1])
    real = (pos[None, :] < lengths[:, None]) & (pos[None, :] > 0)  # [b, pos]
    return norms[:, :, 0], norms[:, real]


def massive_activations(clean, ratio: float = MASSIVE_RATIO) -> dict:
    """Per layer MLP output norm at position 0 (mean over prompts) vs the median norm at all
    other positions, and the layers whose ratio is at least `ratio` (a "massive activation");
    also the residual norm at position 0 after each block.

    Args:
        clean: a `CleanRun` built with `keep_mlp=True`.
    """
    first, other, resid0 = [], [], []
    for batch in clean.batches:
        f, o = first_and_other_norms(batch.mlp_out.cpu(), clean.lengths[batch.rows].cpu())
        first.append(f)
        other.append(o)
        resid0.append(torch.stack([r[:, 0].float().norm(dim=-1).cpu() for r in batch.resid[1:]]))
    others = torch.cat(other, 1)
    if others.shape[1] == 0:
        raise ValueError("massive-activation check needs prompts of at least two tokens")
    first_norm, other_norm = torch.cat(first, 1).mean(1), others.median(1).values
    ratios = first_norm / other_norm.clamp(min=1e-12)
    return {"mlp_out_norm_first_position": [round(float(x), 3) for x in first_norm],
            "mlp_out_norm_median_other_positions": [round(float(x), 3) for x in other_norm],
            "ratio": [round(float(x), 2) for x in ratios],
            "resid_post_norm_first_position": [round(float(x), 2)
                                               for x in torch.cat(resid0, 1).mean(1)],
            "threshold_ratio": ratio,
            "massive_layers": [la for la, r in enumerate(ratios.tolist()) if r >= ratio]}
