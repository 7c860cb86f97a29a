"""Mean ablation of everything outside a circuit, evaluated for many circuits at once.

A circuit keeps some heads (at all positions or at named ones) and, if it lists MLP nodes,
some MLPs; every other head output `hook_z` (and MLP output) is replaced by its mean over the
corrupted prompts of the same group (template), position by position (IOI paper, sec. 4).

Evaluating a circuit normally costs one full forward. Circuits that differ from an already
computed run only from layer L onward (e.g. C minus a class whose heads all sit at layer >= L)
share that run's residual stream up to L, so `MeanAblation.metrics` resumes them there, many
circuits per batch, and unembeds only at the metric's read positions. On models the fast
engine supports (`interp.patching.sparse`), a resumed run computes only the tokens from the
first position where the circuits differ (e.g. END for a head kept at END only) to the read
position; the other tokens keep the base run's keys and values. The full model (every
head kept) is the first such base run; a circuit that differs from all bases already at layer
0 is run from the embeddings and, while fewer than `MAX_BASES` are cached, kept as a new base.

The same code gives the other ablations (`kind`), through the values it averages:
- "zero": zeros (the mean of an all-zero corrupted cache);
- "resample": each prompt gets the activation of one corrupted prompt of its group drawn at
  random (seeded), i.e. the mean over a group of one.

Example:
    >>> ev = MeanAblation(model, runs)  # or MeanAblation(model, runs, kind="resample", seed=0)
    >>> f_c, f_c_minus = ev.metrics([circuit, without(circuit, [Head(9, 9)])]).mean(-1)
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.arch import StackedWeights, slow_reason
from interp.errors import UserValueError
from interp.forward import repeat_kwargs, run_blocks
from interp.metrics import logits_at
from interp.nodes import Head, Mlp, Node
from interp.patching.runs import Runs, chunk_size, metric_from_resid
from interp.patching.sparse import BaseRun, ChangedTokens, forward_changed

Circuit = Mapping[Node, list[str] | None]  # node -> kept positions (None: all)
MAX_BASES = 4  # cached base runs, the clean one included (each keeps every layer's resid_pre)
KINDS = ("mean", "zero", "resample")


def resample_pick(groups: Int[Tensor, " batch"], seed: int) -> Int[Tensor, " batch"]:
    """For each prompt, a prompt of the same group drawn at random (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.arange(len(groups))
    for g in groups.unique():
        rows = (groups == g).nonzero().flatten()
        pick[rows] = rows[torch.randint(len(rows), (len(rows),), generator=gen)]
    return pick


def ablation_runs(runs: Runs, kind: str = "mean", seed: int = 0) -> Runs:
    """`runs` whose corrupted cache makes `MeanAblation`'s mean ablation the `kind` one
    (module docstring); a copy, the given `runs` is unchanged."""
    if kind not in KINDS:
        raise UserValueError(f"ablation kind must be one of {KINDS}, got {kind!r}")
    cache = runs.corrupted_cache
    if kind == "mean":
        return runs
    if kind == "zero":
        return replace(runs, corrupted_cache={k: torch.zeros_like(v) for k, v in cache.items()})
    pick = resample_pick(runs.batch.groups, seed)
    batch = replace(runs.batch, groups=torch.arange(len(pick)))  # a group per prompt
    return replace(runs, batch=batch, corrupted_cache={k: v[pick] for k, v in cache.items()})


@dataclass
class Ablation:
    """What one circuit keeps: True = the clean value stays, False = mean-ablated."""

    heads: Bool[Tensor, "layer batch pos head"]
    mlps: Bool[Tensor, "layer batch pos"] | None  # None: every MLP kept

    def first_difference(self, other: "Ablation") -> int:
        """The first layer at which the two ablations differ (n_layers if they never do)."""
        n_layers = self.heads.shape[0]
        for layer in range(n_layers):
            if not torch.equal(self.heads[layer], other.heads[layer]):
                return layer
            if not torch.equal(self.mlp_keep(layer), other.mlp_keep(layer)):
                return layer
        return n_layers

    def mlp_keep(self, layer: int) -> Bool[Tensor, "batch pos"]:
        """The MLP keep mask of one layer (all True when MLPs are kept)."""
        if self.mlps is None:
            return torch.ones(self.heads.shape[1:3], dtype=torch.bool)
        return self.mlps[layer]


@dataclass
class _Base:
    ablation: Ablation
    resid_pre: list[Tensor]  # per layer, [batch, pos, d_model]
    metric: Tensor  # [batch]
    engine: object = None  # its `BaseRun` (keys/values per layer), made on first sparse use


def keep_mask(batch, positions: list[str] | None, seq: int) -> Bool[Tensor, "batch pos"]:
    """True at the named positions of every prompt (everywhere when `positions` is None)."""
    if positions is None:
        return torch.ones(len(batch), seq, dtype=torch.bool)
    mask = torch.zeros(len(batch), seq, dtype=torch.bool)
    rows = torch.arange(len(batch))
    for name in positions:
        if name not in batch.positions:
            raise ValueError(f"unknown position '{name}'; this task has "
                             f"{sorted(batch.positions)}")
        mask[rows, batch.positions[name]] = True
    return mask


class GroupMeans:
    """The mean of each group's rows of an activation, held once per group ([groups, pos,
    ...]) and expanded to one row per prompt when read: a group's prompts share it, so
    holding it per prompt would copy it (e.g. 100 IOI prompts, 14 templates).

    Example:
        >>> means = GroupMeans(act, groups)  # act [batch, pos, ...], groups [batch]
        >>> torch.equal(means.full(), group_means(act, groups))
        True
    """

    def __init__(self, act: Float[Tensor, "batch pos ..."], groups: Int[Tensor, " batch"]):
        ids, self.row_group = groups.unique(return_inverse=True)
        self.values = torch.stack([act[groups == g].mean(0) for g in ids])

    def full(self) -> Float[Tensor, "batch pos ..."]:
        """Each prompt's row: its group's mean (a fresh tensor)."""
        return self.values[self.row_group.to(self.values.device)]


class PerLayerMeans:
    """`GroupMeans` of one hook of every layer, read as a list of per-prompt tensors:
    `means[layer]` is `group_means` of `cache[f"blocks.{layer}.{hook}"]`, built from the
    per-group values on each read (only those are held)."""

    def __init__(self, cache: Mapping[str, Tensor], hook: str, groups, n_layers: int):
        self.layers = [GroupMeans(cache[f"blocks.{la}.{hook}"], groups) for la in range(n_layers)]

    def __getitem__(self, layer: int) -> Tensor:
        return self.layers[layer].full()

    def __len__(self) -> int:
        return len(self.layers)


def group_means(act: Float[Tensor, "batch pos ..."], groups) -> Tensor:
    """Each prompt's row replaced by the mean of its group's rows (same template)."""
    return GroupMeans(act, groups).full()


class MeanAblation:
    """Mean-ablated runs of circuits on one `Runs` (clean prompts; means from corrupted).

    `kind` "zero" or "resample" (with `seed`) ablates that way instead (module docstring).
    """

    def __init__(self, model, runs: Runs, kind: str = "mean", seed: int = 0):
        runs = ablation_runs(runs, kind, seed)
        self.model, self.runs, self.batch, self.kind = model, runs, runs.batch, kind
        self.seq = self.batch.clean_tokens.shape[1]
        cfg, cache = model.cfg, runs.corrupted_cache
        groups = self.batch.groups
        self.z_means = PerLayerMeans(cache, "attn.hook_z", groups, cfg.n_layers)
        self._mlp_means: PerLayerMeans | None = None
        self._weights: StackedWeights | None = None  # the bases' engines share them
        self.empty: Tensor | None = None  # F(0) per prompt, once computed (`all_heads_ablated`)
        full = Ablation(torch.ones(cfg.n_layers, len(self.batch), self.seq, cfg.n_heads,
                                   dtype=torch.bool), None)
        clean = runs.clean_cache
        self.bases = [_Base(full, [clean[f"blocks.{la}.hook_resid_pre"]
                                   for la in range(cfg.n_layers)], runs.clean_metric)]

    def mlp_means(self) -> PerLayerMeans:
        if self._mlp_means is None:
            self._mlp_means = PerLayerMeans(self.runs.corrupted_cache, "hook_mlp_out",
                                            self.batch.groups, self.model.cfg.n_layers)
        return self._mlp_means

    def ablation(self, circuit: Circuit) -> Ablation:
        """The keep masks of a circuit (see the module docstring)."""
        cfg, n, seq = self.model.cfg, len(self.batch), self.seq
        heads = torch.zeros(cfg.n_layers, n, seq, cfg.n_heads, dtype=torch.bool)
        for node, positions in circuit.items():
            if isinstance(node, Head):
                heads[node.layer, :, :, node.head] |= keep_mask(self.batch, positions, seq)
        mlps = None
        if any(isinstance(node, Mlp) for node in circuit):
            mlps = torch.stack([keep_mask(self.batch, circuit[Mlp(la)], seq)
                                if Mlp(la) in circuit else torch.zeros(n, seq, dtype=torch.bool)
                                for la in range(cfg.n_layers)])
        return Ablation(heads, mlps)

    def hooks(self, ablations: Sequence[Ablation], start: int = 0) -> list:
        """Forward hooks for layers >= `start` on a batch of len(ablations) x prompts rows."""
        k = len(ablations)
        hooks = []
        for layer in range(start, self.model.cfg.n_layers):
            keep = torch.cat([a.heads[layer] for a in ablations])[..., None]
            hooks.append(_replace(f"blocks.{layer}.attn.hook_z", keep,
                                  partial(_repeated, self.z_means, layer, k)))
            if any(a.mlps is not None for a in ablations):
                keep = torch.cat([a.mlp_keep(layer) for a in ablations])[..., None]
                hooks.append(_replace(f"blocks.{layer}.hook_mlp_out", keep,
                                      partial(_repeated, self.mlp_means(), layer, k)))
        return hooks

    def _best_base(self, ablation: Ablation) -> tuple[_Base, int]:
        starts = [ablation.first_difference(b.ablation) for b in self.bases]
        best = max(range(len(starts)), key=lambda i: starts[i])
        return self.bases[best], starts[best]

    def _run_base(self, ablation: Ablation) -> _Base:
        """A full ablated run from the embeddings, keeping resid_pre of every layer.

        On the fast engine (heads-only ablations) it computes only the tokens up to each
        prompt's read position: later ones (padding) can change neither the metric nor a
        run resumed from this base (attention is causal), so there they keep the clean
        run's values."""
        if slow_reason(self.model) is None and ablation.mlps is None:
            return self._run_base_sparse(ablation)
        model, runs = self.model, self.runs
        x = runs.clean_cache["blocks.0.hook_resid_pre"]
        resid = []
        with model.hooks(fwd_hooks=self.hooks([ablation])):
            for layer in range(model.cfg.n_layers):
                resid.append(x)
                x = run_blocks(model, x, layer, runs.clean_kwargs, stop=layer + 1)
        final = logits_at(x, self.batch.read_positions)  # [batch, d_model] at the reads
        base = _Base(ablation, resid, metric_from_resid(model, self.batch, final))
        self.bases.append(base)
        return base

    def _run_base_sparse(self, ablation: Ablation) -> _Base:
        """`_run_base` on the tokens 0..read of every prompt (`interp.patching.sparse`)."""
        clean, reads = self.bases[0], self.batch.read_positions
        tokens = ChangedTokens.span(torch.zeros_like(reads), reads, 1)
        resid = [x.clone() for x in clean.resid_pre]
        final = forward_changed(self.model, self._engine(clean),
                                clean.resid_pre[0][tokens.rows, tokens.pos], tokens, 0, [],
                                self._edit_z([ablation]), _WriteInto(resid, tokens))
        base = _Base(ablation, resid, metric_from_resid(self.model, self.batch, final))
        self.bases.append(base)
        return base

    def _edit_z(self, ablations: list[Ablation]):
        """`forward_changed`'s `edit_z` for rows item-major over `ablations`: the kept heads'
        z where each ablation keeps them, their means elsewhere."""
        n, keep = len(self.batch), {}

        def edit_z(layer, z, rows, pos):
            if layer not in keep:
                keep[layer] = torch.cat([a.heads[layer] for a in ablations])
            mean = self.z_means[layer][rows % n, pos].to(z.device)
            return torch.where(keep[layer][rows, pos][..., None].to(z.device), z, mean)
        return edit_z

    def _run_resumed(self, items: list[tuple[Ablation, _Base]], start: int) -> Tensor:
        model, n = self.model, len(self.batch)
        x = torch.cat([base.resid_pre[start] for _, base in items])
        kw = repeat_kwargs(self.runs.clean_kwargs, n, len(items))
        with model.hooks(fwd_hooks=self.hooks([a for a, _ in items], start)):
            x = run_blocks(model, x, start, kw)
        final = logits_at(x, self.batch.read_positions.repeat(len(items)))
        final = final.view(len(items), n, -1)
        return metric_from_resid(model, self.batch, final)

    def _first_changed(self, items: list[tuple[Ablation, _Base]],
                       start: int) -> Int[Tensor, " rows"]:
        """Per row (item-major): the first position whose kept heads differ from the base's
        at a layer >= start (later positions only change after it; capped at the read)."""
        at = torch.arange(self.seq)
        firsts = []
        for ablation, base in items:
            differs = (ablation.heads[start:] != base.ablation.heads[start:]).any(0).any(-1)
            firsts.append(torch.where(differs, at, self.seq).amin(-1))
        reads = self.batch.read_positions.repeat(len(items))
        return torch.minimum(torch.cat(firsts), reads)

    def _engine(self, base: _Base) -> BaseRun:
        if base.engine is None:
            cache = {f"blocks.{la}.hook_resid_pre": r for la, r in enumerate(base.resid_pre)}
            if self._weights is None:  # one copy for every base (each holds all layers')
                self._weights = StackedWeights(self.model)
            base.engine = BaseRun(self.model, self.runs, "clean", cache, self._weights)
        return base.engine

    def _run_sparse(self, items: list[tuple[Ablation, _Base]], start: int) -> Tensor:
        """`_run_resumed` on the tokens that can change only (`interp.patching.sparse`):
        from each row's first differing position to its read position, on one base."""
        n, base = len(self.batch), items[0][1]
        reads = self.batch.read_positions.repeat(len(items))
        tokens = ChangedTokens.span(self._first_changed(items, start), reads, 1)
        x = base.resid_pre[start][tokens.rows % n, tokens.pos]
        final = forward_changed(self.model, self._engine(base), x, tokens, start, [],
                                self._edit_z([a for a, _ in items]))
        return metric_from_resid(self.model, self.batch, final.view(len(items), n, -1))

    @torch.inference_mode()
    def metrics(self, circuits: Sequence[Circuit],
                progress: bool = False) -> Float[Tensor, "n_circuits batch"]:
        """Per-prompt metric of each circuit's mean-ablated run on the clean prompts."""
        n_layers = self.model.cfg.n_layers
        if not circuits:
            return torch.empty(0, len(self.batch))
        ablations = [self.ablation(c) for c in circuits]
        for ablation in ablations:  # a run that shares no layer with a base becomes one,
            if self._best_base(ablation)[1] == 0 and len(self.bases) < MAX_BASES:
                self._run_base(ablation)  # while there is room (later ones start at layer 0)
        placed = [self._best_base(a) for a in ablations]
        out = [base.metric if start == n_layers else None for base, start in placed]
        sparse = slow_reason(self.model) is None
        index = {id(b): k for k, b in enumerate(self.bases)}
        pending = sorted((index[id(base)] if sparse else 0, start, i)
                         for i, (base, start) in enumerate(placed) if start < n_layers)
        step = chunk_size(self.model, len(self.batch), self.seq, None)
        chunks = [c for key in sorted({p[0] for p in pending})
                  for same in [[p for p in pending if p[0] == key]]
                  for c in (same[lo:lo + step] for lo in range(0, len(same), step))]
        for k, chunk in enumerate(tqdm(chunks, desc="ablated runs", disable=not progress)):
            items = [(ablations[i], placed[i][0]) for _, _, i in chunk]
            run = self._run_sparse if sparse and all(
                a.mlps is None and b.ablation.mlps is None for a, b in items) else self._run_resumed
            for (_, _, i), value in zip(chunk, run(items, chunk[0][1]), strict=True):
                out[i] = value
            if k + 1 == len(chunks) or chunks[k + 1][0][0] != chunk[0][0]:
                self._drop_engines()  # this base's last chunk: its keys and values go
        self._drop_engines()
        return torch.stack(out)

    def _drop_engines(self) -> None:
        """Free the bases' sparse-engine keys and values (every layer's, ~0.1 GB each on
        SmolLM2-135M): `metrics` runs one base's chunks after another, so one base's are
        alive at a time; a base's next use rebuilds them (the same values, one projection
        per layer). The residual streams stay."""
        for base in self.bases:
            base.engine = None


class _WriteInto(dict):
    """`forward_changed`'s `record` that writes each layer's changed tokens into that
    layer's full residual stream as the forward runs (`resid[layer][rows, pos] = x`),
    instead of holding every layer's tokens until it ends."""

    def __init__(self, resid: list[Tensor], tokens: ChangedTokens):
        super().__init__()
        self.resid, self.tokens = resid, tokens

    def __setitem__(self, layer: int, x: Tensor) -> None:
        target = self.resid[layer]
        target[self.tokens.rows, self.tokens.pos] = x.to(target.dtype)


def _repeated(means: PerLayerMeans, layer: int, k: int) -> Tensor:
    """One layer's per-prompt means for k items (item-major rows)."""
    mean = means[layer]
    return mean.repeat(k, *[1] * (mean.dim() - 1))


def _replace(name: str, keep: Tensor, mean):
    """A hook keeping `act` where `keep`, else `mean()`: built when the hook runs, so a
    forward holds one layer's per-prompt means at a time."""
    def hook(act, hook=None):
        return torch.where(keep.to(act.device), act, mean().to(act.device))
    return (name, hook)
