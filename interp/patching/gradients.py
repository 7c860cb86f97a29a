"""Gradients of the metric on the clean run, computed once and shared by every estimate.

One forward and one backward pass on the clean prompts give d(mean metric)/d(activation) for
every layer's `hook_z`, `hook_q`, `hook_k` and `hook_v`. From them:

- `act_patch_attribution`: EAP (Syed et al. 2023) estimates of activation patching, corrupted
  into clean, for every head at once: sum over positions of (z_corr - z_clean) . dM/dz;
- `interp.patching.path` screens path-patching senders with the gradient at the receivers'
  q/k/v inputs.

The result is cached on the `Runs`, so `interp ioi` pays for the backward pass once.

Example:
    >>> est = act_patch_attribution(model, runs)           # [n_layers, n_heads]
    >>> est_end = act_patch_attribution(model, runs, "END")
"""

import torch
from jaxtyping import Float
from torch import Tensor

from interp.attribution import head_scores, metric_gradients
from interp.patching.runs import AtPositions, Runs, named_positions

HOOKS = ("z", "q", "k", "v")


def gradient_names(model) -> list[str]:
    return [f"blocks.{layer}.attn.hook_{x}" for layer in range(model.cfg.n_layers)
            for x in HOOKS]


def clean_gradients(model, runs: Runs, chunk: int = 8,
                    positions_only: tuple[str, ...] = ()) -> dict:
    """d(mean metric over the batch)/d(activation) on the clean run, per hook name.

    Prompts go through in chunks of `chunk` (memory only: the sum does not depend on it).
    The backward keeps every activation of a chunk alive: 8 prompts keep that near the
    size of the gradients themselves (32 tripled it) at no cost in time on a CPU.
    `positions_only`: the gradients of names ending with one of these are kept at the
    batch's named and read positions only (`AtPositions`), cut chunk by chunk as the
    backward passes run, for callers that read them nowhere else (e.g. the path-patching
    screens' q/k/v). A caller may also cut some later.
    """
    if runs.grads is None:
        names, batch = gradient_names(model), runs.batch
        at = named_positions(batch)
        cut = {n: at for n in names if positions_only and n.endswith(positions_only)}
        grads = metric_gradients(model, batch, names, chunk_size=chunk, positions=cut)
        seq = batch.clean_tokens.shape[1]
        runs.grads = {n: AtPositions.of_values(g, at, seq) if n in cut else g
                      for n, g in grads.items()}
    return runs.grads


def act_patch_attribution(model, runs: Runs,
                          positions: str | None = None) -> Float[Tensor, "layer head"]:
    """EAP estimate of `act_patch_heads(model, runs, "noise", positions)` for every head.

    Args:
        positions: None for all positions, or a name in `batch.positions` (e.g. "END").
    """
    grads = clean_gradients(model, runs)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    return torch.stack([head_scores(runs.corrupted_cache[n] - runs.clean_cache[n], grads[n],
                                    runs.batch, positions) for n in names]).cpu()
