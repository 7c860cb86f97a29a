"""Activation patching of single heads, exact and near the FLOP floor.

For head h in layer L, the patched run equals the base run up to layer L's attention output,
plus the change of h's output (z_src - z_base)_h @ W_O[L, h]. So each sweep item starts there
from the cached residual stream, finishes block L (`Family.head_step`: MLP L on a sequential
block, nothing on a parallel one) and runs blocks L+1.. only on the tokens the patch
can change (from the patched position to the read position; `interp.patching.sparse`), with
the last block only at the read position, and unembeds only the columns the metric reads.
All heads of one layer run in one batch (heads x prompts), split to fit the memory budget;
on CPU these chunks run side by side, one per torch thread (`interp.patching.workers`).
Models outside `interp.arch.FAMILIES` take the general path: one hooked forward of
the bridge per head, batched over prompts (`interp.patching.naive`), with a one-line notice.
"""

from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from interp.arch import family_of, notify_slow
from interp.attribution import METHODS as ATTRIBUTION_METHODS
from interp.attribution import head_attribution
from interp.errors import UserValueError
from interp.patching.runs import Runs, chunk_size, head_out, metric_from_resid
from interp.patching.sparse import (
    BaseRun,
    ChangedTokens,
    base_run,
    first_differing_token,
    forward_changed,
)
from interp.patching.workers import run_items

METHODS = ("exact", *ATTRIBUTION_METHODS)
DIRECTIONS = {"noise": ("clean", "corrupted"), "denoise": ("corrupted", "clean")}


def _base_source(direction: str) -> tuple[str, str]:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'noise' (corrupted into clean) or 'denoise' "
                         f"(clean into corrupted), got '{direction}'")
    return DIRECTIONS[direction]


def _chunk_effects(model, runs: Runs, engine: BaseRun, layer: int, heads: Tensor,
                   direction: str, positions: str | None) -> Float[Tensor, " heads"]:
    """Mean metric change of patching each of `heads` (of one layer), one batch for all."""
    base, source = _base_source(direction)
    batch = runs.batch
    z_base = runs.cache(base)[f"blocks.{layer}.attn.hook_z"]
    diff = runs.cache(source)[f"blocks.{layer}.attn.hook_z"] - z_base  # [batch, pos, h, d]
    first = first_differing_token(batch)  # earlier tokens: the same in both runs
    if positions is not None:
        first = batch.positions[positions]
        mask = torch.zeros(diff.shape[:2], dtype=diff.dtype, device=diff.device)
        mask[torch.arange(diff.shape[0]), first.to(diff.device)] = 1.0
        diff = diff * mask[:, :, None, None]
    cache = runs.cache(base)
    base_metric = runs.clean_metric if base == "clean" else runs.corrupted_metric
    n_batch = len(batch)
    tokens = ChangedTokens.span(first, batch.read_positions, len(heads))
    rows, pos = tokens.rows % n_batch, tokens.pos

    def at(name: str):
        return cache[name][rows, pos]

    delta = head_out(engine.w["W_O"][layer], diff, heads.to(diff.device)).flatten(0, 1)
    x = engine.family.head_step(model, layer, at, delta[tokens.rows, tokens.pos])
    final = forward_changed(model, engine, x, tokens, layer + 1)
    resid = final.view(len(heads), n_batch, -1)
    return (metric_from_resid(model, batch, resid) - base_metric).mean(-1)


def act_patch_heads(model, runs: Runs, direction: str = "noise", positions: str | None = None,
                    *, method: str = "exact", steps: int = 5, budget_gb: float | None = None,
                    progress: bool = True) -> Float[Tensor, "layer head"]:
    """Mean change of the metric when one head's output is patched, for every head.

    Args:
        runs: from `prepare_runs`.
        direction: "noise" patches the corrupted head output into the clean run (the IOI
            paper's convention); "denoise" patches the clean output into the corrupted run
            (TransformerLens' `get_act_patch_attn_head_out_all_pos`).
        positions: None for all positions, or a name in `batch.positions` (e.g. "END").
        method: "exact" (one patched run per head, batched, near the FLOP floor),
            "attribution" (EAP: one forward per run and one backward for all heads) or
            "attribution-ig" (EAP-IG with `steps` interpolation points); see
            `interp.attribution.head_attribution`.
        budget_gb: activation memory budget per batched forward (None: the device default);
            items are split to fit. On CPU, `torch.get_num_threads()` chunks run at once.
    """
    if method not in METHODS:
        raise UserValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "exact":
        return head_attribution(model, runs.batch, method, steps, direction,
                                positions=positions)
    if family_of(model) is None:
        from interp.patching.naive import act_patch_heads_naive

        _base_source(direction)
        notify_slow(model, "activation patching")
        return act_patch_heads_naive(model, runs, direction, positions)
    return _exact(model, runs, direction, positions, budget_gb, progress)


@torch.inference_mode()
def _exact(model, runs: Runs, direction: str, positions: str | None, budget_gb: float | None,
           progress: bool) -> Float[Tensor, "layer head"]:
    engine = base_run(model, runs, _base_source(direction)[0])
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for layer in range(1, n_layers):  # shared by the items: filled before they run
        engine.kv(layer)
    step = chunk_size(model, len(runs.batch), runs.batch.clean_tokens.shape[1], budget_gb)
    chunks = [torch.arange(start, min(start + step, n_heads)) for start in range(0, n_heads, step)]
    # layer by layer: the earliest layers, whose patches run the most blocks, go first
    items = [partial(_chunk_effects, model, runs, engine, layer, heads, direction, positions)
             for layer in range(n_layers) for heads in chunks]
    effects = run_items(items, model.cfg.device, progress, desc="activation patching")
    return torch.cat(effects).view(n_layers, n_heads)
