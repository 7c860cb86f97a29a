"""The clean and corrupted runs every patching sweep starts from, and shared pieces.

Example:
    >>> runs = prepare_runs(model, batch)
    >>> runs.clean_metric.shape  # [batch]
"""

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.arch import family_of
from interp.errors import UserValueError
from interp.forward import at_least_float32, block_kwargs, linear_logits, unembed
from interp.metrics import logits_at
from interp.tasks.base import TaskBatch

CACHED_HOOKS = ("attn.hook_z", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
                "hook_attn_out",
                "hook_mlp_out", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern",
                "ln1_post.hook_scale")


def _keeper(model):
    family = family_of(model)
    hooks = CACHED_HOOKS + (family.cached_hooks() if family is not None else ())

    def keep(name: str) -> bool:
        return name.endswith(hooks) or name.startswith(("ln_final", "hook_embed",
                                                        "hook_pos_embed"))
    return keep


def lean_clean_hooks(model) -> tuple[str, ...] | None:
    """Hook-name endings of the clean run that the fast engine's sweeps and IOI's scores
    read: every cached hook, but `hook_resid_post` of the first and last layers only on
    sequential blocks (only parallel blocks' head step reads the others), and no
    `hook_resid_mid` where `DerivedCache` rebuilds it. None off the fast engine (keep
    everything).
    """
    family = family_of(model)
    if family is None:
        return None
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"  # edge ablation's final resid
    resid_post = (("hook_resid_post",) if family.parallel
                  else ("blocks.0.hook_resid_post", last))
    derived = ("hook_resid_mid",) if mid_is_pre_plus_attn(family) else ()
    kept = tuple(h for h in CACHED_HOOKS if h not in ("hook_resid_post", *derived))
    return kept + family.cached_hooks() + resid_post + (
        "ln_final.hook_scale", "ln_final.hook_normalized", "hook_embed", "hook_pos_embed")


# read by path patching only, at the receivers' and the metric's positions: with
# `prepare_runs(..., positions_only=POSITION_READS)` they are cached there alone
POSITION_READS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "hook_attn_out",
                  "attn.hook_out")


def mid_is_pre_plus_attn(family) -> bool:
    """Whether `hook_resid_mid` is `hook_resid_pre + hook_attn_out` (the block's own add):
    a sequential block without a norm after attention."""
    return not family.parallel and not family.post_norms


class DerivedCache(dict):
    """A run's cache that rebuilds `blocks.L.hook_resid_mid` it does not hold as
    `hook_resid_pre + hook_attn_out`: the block's own addition, so the same bits, without
    keeping [batch, pos, d_model] per layer (see `lean_clean_hooks`).

    Example:
        >>> cache = DerivedCache({"blocks.0.hook_resid_pre": x, "blocks.0.hook_attn_out": a})
        >>> torch.equal(cache["blocks.0.hook_resid_mid"], x + a)
        True
    """

    def __missing__(self, name: str):
        if name.endswith("hook_resid_mid"):
            block = name[:-len("hook_resid_mid")]
            pre, attn = block + "hook_resid_pre", block + "hook_attn_out"
            if pre in self and attn in self:
                if isinstance(self[attn], AtPositions):  # read at its positions only
                    return _SumAt(self[pre], self[attn])
                return self[pre] + self[attn]
        raise KeyError(name)


class AtPositions:
    """A cached activation kept at a few positions of each prompt only, read as the full
    tensor would be there: `act[rows, pos, ...]` with `rows` and `pos` (broadcastable)
    index tensors. Reading a position it does not hold raises KeyError.

    Example:
        >>> at = AtPositions(act, torch.tensor([[2, 5], [3, 4]]))  # act [2, seq, d]
        >>> torch.equal(at[torch.arange(2), torch.tensor([5, 3])], act[[0, 1], [5, 3]])
        True
    """

    def __init__(self, act: Float[Tensor, "batch pos ..."], positions: Int[Tensor, "batch k"]):
        rows = torch.arange(act.shape[0], device=act.device)[:, None]
        # [batch, k, ...], a copy: `act` can be freed
        self._hold(act[rows, positions.to(act.device)], positions, act.shape[1])

    @classmethod
    def of_values(cls, values: Float[Tensor, "batch k ..."], positions: Int[Tensor, "batch k"],
                  seq: int) -> "AtPositions":
        """The `AtPositions` of an activation with `seq` positions from its values already
        taken at `positions` (`values[b, j] = act[b, positions[b, j]]`)."""
        at = cls.__new__(cls)
        at._hold(values, positions, seq)
        return at

    def _hold(self, values: Tensor, positions: Tensor, seq: int) -> None:
        device = values.device
        positions = positions.to(device)
        rows = torch.arange(values.shape[0], device=device)[:, None]
        self.slot = torch.full((values.shape[0], seq), -1, dtype=torch.long, device=device)
        self.slot[rows, positions] = torch.arange(positions.shape[1], device=device)
        self.values = values
        self.shape = torch.Size((values.shape[0], seq, *values.shape[2:]))
        self.dtype, self.device = values.dtype, device

    def __getitem__(self, key):
        rows, pos, *rest = key
        slot = self.slot[rows, pos]
        if bool((slot < 0).any()):
            raise KeyError("a position this cache does not hold was read (it keeps the "
                           "task's named and read positions only)")
        return self.values[(rows, slot, *rest)]


@dataclass
class _SumAt:
    """`a + b` read at positions (`DerivedCache`'s `hook_resid_mid` when `hook_attn_out` is
    an `AtPositions`): the same sums, element by element."""

    a: object
    b: object

    def __getitem__(self, key):
        return self.a[key] + self.b[key]


def named_positions(batch: TaskBatch) -> Int[Tensor, "batch k"]:
    """Each prompt's named positions and its read position: what `AtPositions` caches."""
    return torch.stack([*batch.positions.values(), batch.read_positions], -1)


Which = Literal["clean", "corrupted"]
WHICH = ("clean", "corrupted")


@dataclass
class Runs:
    """Cached clean and corrupted forward passes of one `TaskBatch`.

    `grads` and `bases` are caches derived from the runs: they are never copied, so
    `dataclasses.replace(runs, corrupted_cache=...)` starts with empty ones.
    """

    batch: TaskBatch
    clean_cache: dict
    corrupted_cache: MutableMapping  # a dict, or one built when read (`ioi.means.PromptMeans`)
    clean_metric: Float[Tensor, " batch"]
    corrupted_metric: Float[Tensor, " batch"]
    clean_kwargs: dict
    corrupted_kwargs: dict
    # filled by `interp.patching.gradients.clean_gradients`
    grads: dict | None = field(default=None, init=False)
    # `interp.patching.sparse.base_run`, by run
    bases: dict = field(default_factory=dict, init=False)

    def cache(self, which: Which) -> MutableMapping:
        return self.clean_cache if _which(which) == "clean" else self.corrupted_cache

    def kwargs(self, which: Which) -> dict:
        return self.clean_kwargs if _which(which) == "clean" else self.corrupted_kwargs


def _which(which: str) -> str:
    if which not in WHICH:
        raise UserValueError(f"which must be one of {WHICH}, got {which!r}")
    return which


def _only(endings: tuple[str, ...]):
    return lambda name: name.endswith(endings)


def _cached_run(model, tokens: Int[Tensor, "batch pos"], batch: TaskBatch, keep,
                positions_only: tuple[str, ...] = ()):
    """The run's cache and metric. Only the read positions are unembedded (the unembedding
    is a row-wise linear map: the same logits there, without [batch, pos, vocab] of them).
    Kept hooks whose names end with one of `positions_only` are stored as `AtPositions`
    (at `named_positions`), sliced as the forward runs: the full tensors are never held."""
    read = batch.read_positions.to(tokens.device)
    rows = torch.arange(len(read), device=tokens.device)
    named = named_positions(batch)
    sliced: dict[str, AtPositions] = {}

    def at_read(resid, hook=None):
        return resid[rows, read][:, None]

    def slicer(name: str):
        def store(act, hook=None):
            sliced[name] = AtPositions(act.detach(), named)
        return store

    hooks = [(name, slicer(name)) for name in model.hook_dict
             if positions_only and name.endswith(positions_only) and keep(name)]
    sliced_names = {name for name, _ in hooks}
    read_only = "unembed.hook_in" in model.hook_dict
    if read_only:
        hooks.append(("unembed.hook_in", at_read))
    with model.hooks(fwd_hooks=hooks):
        logits, cache = model.run_with_cache(
            tokens, names_filter=lambda name: keep(name) and name not in sliced_names)
    at = logits[:, 0] if read_only else logits_at(logits, batch.read_positions)
    metric = at_least_float32(batch.metric(at))
    return DerivedCache([*cache.items(), *sliced.items()]), metric


@torch.inference_mode()
def prepare_runs(model, batch: TaskBatch, clean_hooks: tuple[str, ...] | None = None,
                 corrupted_hooks: tuple[str, ...] | None = None,
                 positions_only: tuple[str, ...] = ()) -> Runs:
    """Run clean and corrupted prompts once, caching what the sweeps need.

    `clean_hooks` / `corrupted_hooks`: cache only the hooks whose names end with one of
    these (e.g. ("attn.hook_z",)) when the caller knows what its stages read; None: every
    hook any sweep reads. `positions_only`: cached hooks whose names end with one of these
    are kept at the batch's named and read positions only (`AtPositions`), for callers
    whose stages read them nowhere else (e.g. `POSITION_READS`).
    """
    batch.check(model)
    device = model.cfg.device
    clean_tokens = batch.clean_tokens.to(device)
    corrupted_tokens = batch.corrupted_tokens.to(device)
    every = _keeper(model)
    clean_cache, clean_metric = _cached_run(
        model, clean_tokens, batch, every if clean_hooks is None else _only(clean_hooks),
        positions_only)
    corrupted_cache, corrupted_metric = _cached_run(
        model, corrupted_tokens, batch,
        every if corrupted_hooks is None else _only(corrupted_hooks), positions_only)
    for which, values in (("clean", clean_metric), ("corrupted", corrupted_metric)):
        if not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).sum())
            raise UserValueError(
                f"the task's metric is not finite on {bad} of {len(values)} {which} prompts "
                "(stage: prepare_runs, the cached clean/corrupted runs); check the metric and "
                "the model's weights (`interp models --verify`)")
    return Runs(batch, clean_cache, corrupted_cache, clean_metric, corrupted_metric,
                block_kwargs(model, clean_tokens), block_kwargs(model, corrupted_tokens))


def release(runs: Runs, keep: tuple[str, ...],
            corrupted_keep: tuple[str, ...] | None = None) -> None:
    """Free what later stages do not read: clean-cache hooks whose names end with none of
    `keep`, the corrupted cache's likewise (with `corrupted_keep` when given: () frees it
    all), the gradients and the sparse engine's bases."""
    for cache, ends in ((runs.clean_cache, keep), (runs.corrupted_cache,
                                                  keep if corrupted_keep is None
                                                  else corrupted_keep)):
        for name in [n for n in cache if not n.endswith(ends)]:
            del cache[name]
    runs.grads = None
    runs.bases.clear()


def head_out(w_o: Float[Tensor, "n_heads d_head d_model"], z: Float[Tensor, "... n_heads d_head"],
             heads: Int[Tensor, " k"]) -> Float[Tensor, "k ... d_model"]:
    """Each selected head's contribution to the residual stream, z_h @ W_O[h], from one
    layer's `W_O` (read once: `interp.arch.StackedWeights`)."""
    w_o = w_o[heads]  # [k, d_head, d_model]
    z_sel = z[..., heads, :].movedim(-2, 0)  # [k, ..., d_head]
    return torch.einsum("k...d,kdm->k...m", z_sel, w_o)


def metric_from_resid(model, batch: TaskBatch, resid_at_read: Float[Tensor, "*n batch d_model"]
                      ) -> Float[Tensor, "*n batch"]:
    """Metric values `[*n, batch]` from residual vectors at the metric's read positions.

    `Metric.from_resid` (e.g. LogitDiff) unembeds only the vocabulary columns it reads;
    models whose logits go through a transform (Gemma 2's soft-capping, applied by
    `interp.forward.unembed`) get the full logits. The metric is returned in float32 or
    better, whatever the model's dtype.
    """
    if linear_logits(model):
        out = batch.metric.from_resid(model, resid_at_read)
    else:
        out = batch.metric(unembed(model, resid_at_read))
    return at_least_float32(out)


CPU_BUDGET_GB = 0.125  # on CPU, chunks this small keep elementwise ops in cache (~25% faster)
GPU_BUDGET_GB = 2.0


def chunk_size(model, n_rows_per_item: int, seq_len: int, budget_gb: float | None) -> int:
    """How many sweep items (each `n_rows_per_item` batch rows) fit in the memory budget.

    `budget_gb=None` picks the device default (`GPU_BUDGET_GB` on CUDA; the smaller
    `CPU_BUDGET_GB` on CPU, where larger batches only spill out of cache). A rough upper
    bound on live activation bytes per batch row of a full block: residual, MLP hidden,
    q/k/v/z and the attention scores and pattern.
    """
    if budget_gb is None:
        budget_gb = GPU_BUDGET_GB if str(model.cfg.device).startswith("cuda") else CPU_BUDGET_GB
    cfg = model.cfg
    d_mlp = getattr(cfg, "d_mlp", 4 * cfg.d_model) or 4 * cfg.d_model
    per_row = 4 * seq_len * (12 * cfg.d_model + 3 * d_mlp + 3 * cfg.n_heads * seq_len)
    return max(1, int(budget_gb * 2**30 // (per_row * n_rows_per_item)))

