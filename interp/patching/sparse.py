"""A forward pass over only the tokens a patch can change, on top of a cached clean run.

A patch at position p of a prompt changes the residual stream only at positions >= p
(attention is causal), and a metric read at position r needs nothing after r. So a patched
run resumed at layer L only has to compute the tokens p..r of each prompt: queries, MLPs and
projections run on those tokens alone, and their attention reads keys/values that are the
clean run's (cached per layer) everywhere else. In the last layer only the read positions
are queries. For IOI this makes a patch at END cost one token per layer instead of ~20.

Blocks are driven from their weights (`W_Q`.. `W_O`, the bridge's own norms and MLPs, the
HF attention scale and rotary tables) and the family's details from `interp.arch`,
so this is exact, not an approximation; tests compare it with the bridge's hooked forwards
on every family in `interp.arch.FAMILIES`.

Rows are items x prompts, item-major (row = item * n_prompts + prompt).

Example:
    >>> base = base_run(model, runs)
    >>> tokens = ChangedTokens.span(first, runs.batch.read_positions, n_items=12)
    >>> final = forward_changed(model, base, x, tokens, start=5)  # [rows, d_model] at reads
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.arch import StackedWeights, family_of, slow_reason
from interp.patching import counter
from interp.patching.runs import Runs


@dataclass
class ChangedTokens:
    """The (row, position) tokens a batch of patched runs must compute, row-major sorted."""

    rows: Int[Tensor, " n"]
    pos: Int[Tensor, " n"]
    first: Int[Tensor, " rows"]  # index (into the n tokens) of each row's first token
    read: Int[Tensor, " rows"]  # index of each row's read token (its last)
    n_rows: int

    @classmethod
    def span(cls, first: Int[Tensor, " prompts"], read_positions: Int[Tensor, " prompts"],
             n_items: int) -> "ChangedTokens":
        """Tokens first[p]..read[p] of every prompt p, for n_items copies of the batch."""
        first, last = first.repeat(n_items), read_positions.repeat(n_items)
        if (first > last).any():
            raise ValueError("a patch after the read position cannot change the metric")
        counts = last - first + 1
        rows = torch.repeat_interleave(torch.arange(len(first)), counts)
        starts = torch.cumsum(counts, 0) - counts
        pos = first[rows] + torch.arange(len(rows)) - starts[rows]
        return cls(rows, pos, starts, starts + counts - 1, len(first))

    def index_of(self, positions: Int[Tensor, " rows"]) -> Int[Tensor, " rows"]:
        """For each row, the index of its token at `positions[row]` (which must be changed)."""
        if (positions < self.pos[self.first]).any() or (positions > self.pos[self.read]).any():
            raise ValueError("position outside the changed tokens")
        return self.first + positions - self.pos[self.first]


def first_differing_token(batch) -> Int[Tensor, " prompts"]:
    """Per prompt, the first position whose clean and corrupted tokens differ (its read
    position when none before it does). Every activation before it is the same in both runs
    (attention is causal), so a patch of one run's activations into the other changes
    nothing there.

    Example:
        >>> first_differing_token(batch)  # e.g. tensor([3, 3, 2, ...]) for IOI: the first name
    """
    differs = batch.clean_tokens != batch.corrupted_tokens
    at = torch.arange(differs.shape[1])
    first = torch.where(differs, at, differs.shape[1]).amin(-1)
    return torch.minimum(first, batch.read_positions)


def check_supported(model) -> None:
    """Refuse a model the fast engine does not reproduce (`interp.arch`)."""
    reason = slow_reason(model)
    if reason is not None:
        raise NotImplementedError(f"the fast exact sweeps cannot run this model: {reason}; "
                                  "the sweeps take the general path (interp.patching.naive)")


class BaseRun:
    """A cached run's residual stream and keys/values per layer (computed on first use).

    `which` is "clean" or "corrupted": the run the patches are applied to (its tokens give
    the rotary tables). `cache` replaces that run's cache by another run of the same tokens
    holding `blocks.L.hook_resid_pre` (e.g. a mean-ablated run, `interp.mean_ablation`).
    """

    def __init__(self, model, runs: Runs, which: str = "clean", cache: dict | None = None,
                 weights: StackedWeights | None = None):
        self._setup(model, runs.cache(which) if cache is None else cache, len(runs.batch),
                    runs.kwargs(which), weights)

    @classmethod
    def of_cache(cls, model, cache: dict, kwargs: dict, n_prompts: int) -> "BaseRun":
        """A base run on a residual cache alone (`blocks.L.hook_resid_pre`), with the block
        kwargs (rotary tables) of its tokens: for runs that are not a `Runs` pair."""
        run = cls.__new__(cls)
        run._setup(model, cache, n_prompts, kwargs)
        return run

    def _setup(self, model, cache: dict, n_prompts: int, kwargs: dict,
               weights: StackedWeights | None = None) -> None:
        check_supported(model)
        self.family = family_of(model)
        self.model, self.cache, self.n_prompts = model, cache, n_prompts
        self._kv: dict[int, tuple[Tensor, Tensor]] = {}
        # `weights`: the stacked weights of another base run of the same computation, shared
        # (each copy holds every layer's attention weights, ~106 MB on SmolLM2-135M)
        self.w = StackedWeights(model) if weights is None else weights
        self.cos, self.sin = self.family.rotary_tables(kwargs)

    def resid_pre(self, layer: int) -> Float[Tensor, "prompts pos d_model"]:
        return self.cache[f"blocks.{layer}.hook_resid_pre"]

    def project(self, layer: int, kind: str, h: Float[Tensor, "... d_model"],
                slot: int | None = None) -> Tensor:
        """h @ W_kind[layer] + b_kind[layer] (kind in q, k, v): [..., heads, d_head], or
        [..., d_head] for one head `slot` (a query head for q, a key/value head for k, v)."""
        w, bias = self.w[f"W_{kind.upper()}"][layer], self.w[f"b_{kind.upper()}"]
        bias = None if bias is None else bias[layer]
        if slot is not None:
            w, bias = w[slot], None if bias is None else bias[slot]
            out = h @ w
        else:
            out = torch.einsum("...d,hde->...he", h, w)
        return out if bias is None else out + bias

    def project_many(self, layer: int, kinds: tuple[str, ...],
                     h: Float[Tensor, "n d_model"]) -> dict[str, Tensor]:
        """`project` of every kind in `kinds` as one matmul (kind -> [n, heads, d_head]): one
        pass over h, one bias add, one output allocation instead of one each per kind."""
        weights = [self.w[f"W_{kind.upper()}"][layer] for kind in kinds]  # [heads, d, e]
        w = torch.cat([x.permute(1, 0, 2).flatten(1) for x in weights], 1)
        sizes = [x.shape[0] * x.shape[2] for x in weights]
        biases = [self.w[f"b_{kind.upper()}"] for kind in kinds]
        if all(b is None for b in biases):
            out = h @ w
        else:
            bias = torch.cat([h.new_zeros(size) if b is None else b[layer].flatten()
                              for b, size in zip(biases, sizes, strict=True)])
            out = torch.addmm(bias, h, w)
        return {kind: part.unflatten(-1, (x.shape[0], x.shape[2]))
                for kind, part, x in zip(kinds, out.split(sizes, -1), weights, strict=True)}

    def rotate(self, layer: int, kind: str, x: Tensor, prompt: Tensor, pos: Tensor) -> Tensor:
        """q or k [n, heads, d_head] (pre-norm, pre-rotary, as in hook_q/hook_k) as the
        attention scores use them: the family's q/k norm, then its rotary at `pos`."""
        x = self.family.normed(self.model, layer, kind, x)
        if self.cos is None:
            return x
        row = prompt if self.cos.shape[0] > 1 else torch.zeros_like(prompt)
        cos, sin = self.cos[row, pos][:, None], self.sin[row, pos][:, None]
        return self.family.rotate(x, cos.to(x.dtype), sin.to(x.dtype))

    def kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """Keys (rotated) and values of every token: [prompts, pos, kv_heads, d_head]."""
        if layer not in self._kv:
            resid = self.resid_pre(layer)
            b, s, d = resid.shape
            h = self.family.attn_input(self.model, layer, resid).reshape(b * s, d)
            prompt = torch.arange(b).repeat_interleave(s)
            pos = torch.arange(s).repeat(b)
            kv = self.project_many(layer, ("k", "v"), h)
            k, v = self.rotate(layer, "k", kv["k"], prompt, pos), kv["v"]
            self._kv[layer] = (k.view(b, s, *k.shape[1:]), v.view(b, s, *v.shape[1:]))
        return self._kv[layer]


def base_run(model, runs: Runs, which: str = "clean") -> BaseRun:
    """The `BaseRun` of `runs`' clean or corrupted run, cached on `runs`."""
    if which not in runs.bases:
        runs.bases[which] = BaseRun(model, runs, which)
    return runs.bases[which]


@dataclass
class Override:
    """Replace one head's q, k or v input (pre-norm, pre-rotary) at one position per row.

    `head` is a query head for every kind: a k or v override is seen by that query head
    only, even when it shares its key/value head with others (GQA; the other query heads of
    the group keep the base run's keys and values).
    """

    layer: int
    kind: str  # "q", "k" or "v"
    head: int  # the query head that sees the replaced input
    positions: Int[Tensor, " rows"]
    values: Float[Tensor, "rows d_head"]


def _per_query_head(x: Tensor, n_heads: int) -> Tensor:
    """[..., kv_heads, d] -> [..., n_heads, d]: query head h reads KV head h // group."""
    return x if x.shape[-2] == n_heads else x.repeat_interleave(n_heads // x.shape[-2], -2)


def _attend(model, base: BaseRun, layer: int, h: Tensor, tokens: ChangedTokens,
            queries: Tensor, overrides: list[Override],
            edit_z=None) -> Float[Tensor, "n_queries d_model"]:
    """Attention output at the query tokens (indices into `tokens`) of one layer."""
    prompt = tokens.rows % base.n_prompts
    if len(queries) == len(h):  # every token is a query
        qkv = base.project_many(layer, ("q", "k", "v"), h)
    else:
        qkv = {"q": base.project(layer, "q", h[queries]),
               **base.project_many(layer, ("k", "v"), h)}
    k_clean, v_clean = base.kv(layer)
    n_heads = qkv["q"].shape[-2]
    if any(ov.kind != "q" for ov in overrides):  # receiver-only k/v: one copy per query head
        qkv["k"], qkv["v"] = _per_query_head(qkv["k"], n_heads), _per_query_head(qkv["v"],
                                                                                  n_heads)
        k_clean, v_clean = _per_query_head(k_clean, n_heads), _per_query_head(v_clean, n_heads)
    for ov in overrides:
        index = tokens.index_of(ov.positions)
        if ov.kind == "q":  # queries are a sorted subset of the tokens
            index = torch.searchsorted(queries, index)
            if not torch.equal(queries[index.clamp(max=len(queries) - 1)],
                               tokens.index_of(ov.positions)):
                raise ValueError("a q override must sit at a query token (in the last "
                                 "layer: the read position)")
        qkv[ov.kind][index, ov.head] = ov.values.to(h.dtype)
    q = base.rotate(layer, "q", qkv["q"], prompt[queries], tokens.pos[queries])
    k_new = base.rotate(layer, "k", qkv["k"], prompt, tokens.pos)
    n_items = tokens.n_rows // base.n_prompts
    k_all = k_clean.repeat(n_items, 1, 1, 1)
    v_all = v_clean.repeat(n_items, 1, 1, 1)
    k_all[tokens.rows, tokens.pos] = k_new
    v_all[tokens.rows, tokens.pos] = qkv["v"]
    rows, pos = tokens.rows[queries], tokens.pos[queries]
    rule = _Scores(base.family.scale(model, layer), base.family.softcap(model, layer),
                   base.family.window(model, layer))
    if len(queries) <= tokens.n_rows:  # about one query per row: attend per query
        z = _attend_queries(q, k_all[rows], v_all[rows], pos, rule)
    else:  # many queries per row: dense causal attention, read at the queries
        q_all = q.new_zeros(tokens.n_rows, k_all.shape[1], q.shape[1], q.shape[2])
        q_all[rows, pos] = q
        z = _attend_dense(q_all, k_all, v_all, rule)[rows, pos]  # [n_q, heads, d_head]
    if edit_z is not None:
        z = edit_z(layer, z, rows, pos)
    out = torch.einsum("nhe,hed->nd", z, base.w["W_O"][layer])
    return out if base.w["b_O"] is None else out + base.w["b_O"][layer]


@dataclass
class _Scores:
    """How one layer turns q.k into attention logits: scale, soft-cap, sliding window."""

    scale: float
    softcap: float | None = None
    window: int | None = None

    def mask(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """True where key position k_pos is hidden from query position q_pos."""
        hidden = k_pos > q_pos
        if self.window is not None:
            hidden = hidden | (q_pos - k_pos >= self.window)
        return hidden

    def logits(self, scores: Tensor) -> Tensor:
        scores = scores * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return scores


def _attend_dense(q: Float[Tensor, "rows pos heads d"], k: Float[Tensor, "rows pos kv d"],
                  v: Float[Tensor, "rows pos kv d"], rule: _Scores) -> Tensor:
    """Attention of every position of every row: [rows, pos, heads, d]."""
    if rule.softcap is None and rule.window is None:
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True, scale=rule.scale,
                                           enable_gqa=q.shape[2] != k.shape[2])
        return z.transpose(1, 2)
    k, v = _per_query_head(k, q.shape[2]), _per_query_head(v, q.shape[2])
    scores = rule.logits(torch.einsum("bqhd,bkhd->bhqk", q, k))
    at = torch.arange(q.shape[1], device=q.device)
    scores = scores.masked_fill(rule.mask(at[:, None], at[None, :]), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def _attend_queries(q: Float[Tensor, "n heads d"], k: Float[Tensor, "n pos kv d"],
                    v: Float[Tensor, "n pos kv d"], pos: Int[Tensor, " n"],
                    rule: _Scores) -> Float[Tensor, "n heads d"]:
    """Causal attention of single query tokens (at `pos`) over their own row's keys."""
    k = _per_query_head(k, q.shape[1])  # GQA: kv head h // group
    v = _per_query_head(v, q.shape[1])
    scores = rule.logits(torch.einsum("nhd,nshd->nhs", q, k))
    hidden = rule.mask(pos[:, None], torch.arange(k.shape[1], device=pos.device)[None, :])
    scores = scores.masked_fill(hidden[:, None, :].to(scores.device), float("-inf"))
    return torch.einsum("nhs,nshd->nhd", scores.softmax(-1), v)


@dataclass
class MlpOut:
    """MLP outputs of one layer replaced at some changed tokens: where `put [n]` is True the
    MLP's output is `value [n, d]` (None: zeros; its rows elsewhere are unused), as a
    `hook_mlp_out` hook would set it. The MLP runs on the other tokens only; `skipped`
    counts the tokens it did not run on (for work accounting)."""

    put: Bool[Tensor, " n"]
    value: Float[Tensor, "n d_model"] | None = None
    skipped: int = 0

    def mlp(self, block_mlp, rows: Tensor):
        """A stand-in for `block_mlp` on the tokens `rows` (indices into the n tokens)."""
        put = self.put[rows]
        value = None if self.value is None else self.value[rows]
        self.skipped += int(put.sum())

        def run(h: Tensor) -> Tensor:
            # the MLP maps d_model to d_model: zeros shaped like its input
            out = torch.zeros_like(h) if value is None else value.to(h.dtype).clone()
            keep = ~put
            if bool(keep.any()):
                out[keep] = block_mlp(h[keep])
            return out
        return run


def forward_changed(model, base: BaseRun, x: Float[Tensor, "n d_model"],
                    tokens: ChangedTokens, start: int,
                    overrides: list[Override] = (), edit_z=None,
                    record: dict | None = None,
                    mlp_out: dict[int, MlpOut] | None = None) -> Float[Tensor, "rows d_model"]:
    """Run layers start.. on the changed tokens; the final residual at each row's read token.

    Args:
        x: resid_pre[start] at every changed token.
        overrides: q/k/v replacements (e.g. path patching's receivers).
        edit_z: optional `edit_z(layer, z, rows, pos) -> z`, applied to each layer's head
            outputs `z [n, heads, d_head]` at tokens (rows, pos) before W_O, as a `hook_z`
            forward hook would (e.g. mean ablation).
        record: when given, `record[layer]` receives resid_pre[layer] at every changed token
            (`[n, d_model]`) for each layer run.
        mlp_out: layer -> `MlpOut`: MLP outputs replaced at some changed tokens (e.g. an
            ablation); the MLP is not run there.
    """
    if start >= model.cfg.n_layers:
        return x[tokens.read]
    every = torch.arange(len(tokens.rows))
    for layer in range(start, model.cfg.n_layers):
        counter.add(len(tokens.rows))
        if record is not None:
            record[layer] = x
        queries = tokens.read if layer == model.cfg.n_layers - 1 else every
        mine = [ov for ov in overrides if ov.layer == layer]
        attn = _attend(model, base, layer, base.family.attn_input(model, layer, x), tokens,
                       queries, mine, edit_z)
        edit = (mlp_out or {}).get(layer)
        mlp = None if edit is None else edit.mlp(base.family.mlp(model, layer), queries)
        x = base.family.block_step(model, layer, x if queries is every else x[queries], attn,
                                   mlp)
    return x
