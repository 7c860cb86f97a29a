"""FFN-study runs on the sparse engine: only the tokens an edit can change are computed.

An ablation or steering run that first differs from the clean run in block `start`, and at
positions >= `first` of each prompt, leaves every earlier position as in the clean run
(attention is causal). From block `start` on, only positions `first..read` of each prompt are
computed; their queries attend to the clean run's keys and values at the other positions, and
the last block computes the read positions only (`interp.patching.sparse.forward_changed`).
No padding is computed either: tokens are packed.

- Adding a vector at the read position, or replacing MLP outputs there (o-vector transfer,
  specificity, "last"-position windows), costs one token per block instead of the prompt.
- Ablating MLPs at every position but the first (`no-first`) skips the first position; at
  every position, it computes the real tokens only.

A `SparseEdit` is one such run: `start`, the first changed position of each prompt (`first`),
an optional vector added to the residual entering block `start` at the read positions, and MLP
outputs replaced at chosen positions (layer -> `MlpEdit`). Edits with the same start run
stacked in one pass. Models the sparse engine does not reproduce (`interp.arch.slow_reason`)
take the hooked path of `interp.ffn.evaluate`.

Example:
    >>> edit = SparseEdit(start=16, first=batch.read, add=o_vector)  # after block 15
    >>> logits = run_edits(model, batch, [edit])  # [1, b, vocab] at the read positions
"""

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.arch import slow_reason
from interp.forward import unembed
from interp.patching.sparse import BaseRun, ChangedTokens, MlpOut, forward_changed


@dataclass
class MlpEdit:
    """MLP outputs replaced at the positions where `where [b, width]` is True, by `value`
    (`[b, width, d]`; None: zeros)."""

    where: Bool[Tensor, "b width"]
    value: Float[Tensor, "b width d"] | None = None


@dataclass
class SparseEdit:
    """One run that differs from the clean run from block `start`, at positions >= `first`
    (module doc). `add` (`[d]` or `[b, d]`) is added at the read positions."""

    start: int
    first: Int[Tensor, " b"]
    add: Float[Tensor, "*b d"] | None = None
    mlp: dict[int, MlpEdit] = field(default_factory=dict)


def supported(model) -> bool:
    """True when the sparse engine reproduces this model's blocks exactly."""
    return slow_reason(model) is None


def base_of(model, batch):
    """The sparse engine's base run of one clean batch (`interp.ffn_clean.CleanBatch`: its
    resid_pre per layer, its block kwargs), made once per batch."""
    if batch.engine is None:
        cache = {f"blocks.{la}.hook_resid_pre": r for la, r in enumerate(batch.resid[:-1])}
        batch.engine = BaseRun.of_cache(model, cache, batch.kwargs, len(batch.rows))
    return batch.engine


def _mlp_outs(edits: list[SparseEdit], tokens, b: int, d: int, device) -> dict[int, MlpOut]:
    """The MLP outputs the edits replace, per layer, at the changed tokens (`MlpOut`: the
    engine skips the MLP there)."""
    outs = {}
    item, prompt, pos = tokens.rows // b, tokens.rows % b, tokens.pos
    for layer in sorted({la for e in edits for la in e.mlp}):
        put = torch.zeros(len(pos), dtype=torch.bool)
        valued = any(e.mlp[layer].value is not None for e in edits if layer in e.mlp)
        value = torch.zeros(len(pos), d) if valued else None  # None: zeros
        for i, edit in enumerate(edits):
            if layer not in edit.mlp:
                continue
            mine = item == i
            mlp = edit.mlp[layer]
            put[mine] = mlp.where[prompt[mine], pos[mine]]
            if mlp.value is not None:
                value[mine] = mlp.value[prompt[mine], pos[mine]].float()
        outs[layer] = MlpOut(put.to(device), None if value is None else value.to(device))
    return outs


def mlps_skipped(outs: dict[int, MlpOut]) -> int:
    """Token-MLPs the engine skipped in a run with these replacements (`MlpOut.skipped`)."""
    return sum(out.skipped for out in outs.values())


def common_prefix(tokens: Int[Tensor, "b width"], read: Int[Tensor, " b"]) -> int:
    """Leading positions where every prompt has the same token (at most the first read
    position, so that every prompt keeps its read token to compute)."""
    same = (tokens == tokens[:1]).all(0).tolist() + [False]
    return min(same.index(False), int(read.min()))


def _shares_prefix(edit: SparseEdit, prefix: int) -> bool:
    """True when the edit changes the first `prefix` positions, and in the same way for every
    prompt: its run there is one run, computed once for the batch."""
    if prefix == 0 or int(edit.first.min()) >= prefix:
        return False
    for mlp in edit.mlp.values():
        where = mlp.where[:, :prefix]
        if not bool((where == where[:1]).all()):
            return False
        if mlp.value is not None and not bool((mlp.value[:, :prefix] == mlp.value[:1, :prefix])
                                              .all()):
            return False
    return True


class _CacheBase(BaseRun):
    """A base run on another residual cache (`n_prompts` rows), with the weights and the
    rotary tables of the clean batch's base run (positions are the same in every row)."""

    def __init__(self, clean: BaseRun, cache: dict, n_prompts: int):
        self.__dict__.update(clean.__dict__)
        self.cache, self.n_prompts, self._kv = cache, n_prompts, {}
        if self.cos is not None:
            self.cos, self.sin = self.cos[:1], self.sin[:1]


class _StackedBase(_CacheBase):
    """The base run of stacked edits (item-major rows): the clean run's keys and values,
    except at the shared prefix of the edits whose prefix run was computed once
    (`prefix_kv[layer]`: item index -> keys, values of its prefix)."""

    def __init__(self, clean: BaseRun, n_items: int, prefix_kv: dict, prefix: int):
        super().__init__(clean, {}, clean.n_prompts * n_items)
        self.clean, self.n_items, self.prefix_kv, self.prefix = clean, n_items, prefix_kv, prefix

    def kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """Built anew on each call and not kept: a stacked run reads each layer once, so
        every layer's copies (n_items x the clean run's) need not be alive together."""
        b = self.clean.n_prompts
        k, v = (t.repeat(self.n_items, 1, 1, 1) for t in self.clean.kv(layer))
        for item, (pk, pv) in self.prefix_kv.get(layer, {}).items():
            k[item * b: (item + 1) * b, : self.prefix] = pk
            v[item * b: (item + 1) * b, : self.prefix] = pv
        return k, v


def _prefix_runs(model, batch, edits: list[SparseEdit], start: int, prefix: int
                 ) -> tuple[dict, int]:
    """Run the shared prefix of each edit once (one row per edit, from its first changed
    position): ({layer: {edit index: (keys, values) [prefix, kv_heads, d_head]}}, the
    token-MLPs skipped)."""
    clean = base_of(model, batch)
    n, n_layers = len(edits), model.cfg.n_layers
    firsts = torch.tensor([int(e.first.min()) for e in edits])
    tokens = ChangedTokens.span(firsts, torch.full((n,), prefix - 1), 1)
    dev = batch.read.device
    x = batch.resid[start][0, tokens.pos.to(dev)]
    kept: dict[int, Tensor] = {}
    row0 = _CacheBase(clean, {f"blocks.{la}.hook_resid_pre": batch.resid[la][:1, :prefix]
                              for la in range(start, n_layers)}, 1)  # the clean prefix
    outs = _mlp_outs(edits, tokens, 1, x.shape[-1], dev)
    forward_changed(model, row0, x, tokens, start, record=kept, mlp_out=outs)
    skipped = mlps_skipped(outs)
    resid = {}
    for layer in range(start, n_layers):  # resid_pre of each edit's prefix run
        r = batch.resid[layer][:1, :prefix].repeat(n, 1, 1)
        r[tokens.rows.to(dev), tokens.pos.to(dev)] = kept[layer]
        resid[f"blocks.{layer}.hook_resid_pre"] = r
    base = _CacheBase(clean, resid, n)
    return {la: {i: tuple(t[i] for t in base.kv(la)) for i in range(n)}
            for la in range(start, n_layers)}, skipped


def _run_group(model, batch, edits: list[SparseEdit], start: int
               ) -> tuple[Float[Tensor, "n b vocab"], int, int]:
    """Logits of stacked edits with the same start, the tokens computed per block and the
    token-MLPs skipped (`mlps_skipped`)."""
    b, read, dev = len(batch.rows), batch.read.cpu(), batch.read.device
    prefix = common_prefix(batch.tokens.cpu(), read)
    shared = [i for i, e in enumerate(edits) if _shares_prefix(e, prefix)]
    base, prefix_kv, done, skipped = base_of(model, batch), {}, 0, 0
    if shared:
        runs, skipped = _prefix_runs(model, batch, [edits[i] for i in shared], start, prefix)
        prefix_kv = {la: {shared[j]: kv for j, kv in per.items()} for la, per in runs.items()}
        base = _StackedBase(base, len(edits), prefix_kv, prefix)
        done = sum(prefix - int(edits[i].first.min()) for i in shared)
    first = torch.cat([e.first.cpu().clamp(min=prefix) if i in shared else e.first.cpu()
                       for i, e in enumerate(edits)])
    tokens = ChangedTokens.span(first, read.repeat(len(edits)), 1)
    x = batch.resid[start][(tokens.rows % b).to(dev), tokens.pos.to(dev)]
    for i, edit in enumerate(edits):
        if edit.add is not None:
            x[tokens.read[i * b: (i + 1) * b].to(dev)] += edit.add.to(dev, x.dtype)
    outs = _mlp_outs(edits, tokens, b, x.shape[-1], dev)
    final = forward_changed(model, base, x, tokens, start, mlp_out=outs)
    skipped += mlps_skipped(outs)
    return (unembed(model, final).reshape(len(edits), b, -1), done + len(tokens.rows),
            skipped)


def run_edits(model, batch, edits: list[SparseEdit], ledger=None) -> Float[Tensor, "n b vocab"]:
    """Logits at the read positions of one clean batch under each edit; edits with the same
    start run stacked in one pass. `ledger` counts the tokens computed (`Ledger`)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, edit in enumerate(edits):
        groups[edit.start].append(i)
    out: list[Tensor | None] = [None] * len(edits)
    with torch.inference_mode():
        for start, idx in groups.items():
            logits, n_tokens, skipped = _run_group(model, batch, [edits[i] for i in idx],
                                                   start)
            for i, lg in zip(idx, logits, strict=True):
                out[i] = lg
            if ledger is not None:
                ledger.add_packed(n_tokens, model.cfg.n_layers - start, skipped)
    return torch.stack(out)


def read_resids(model, tokens: Int[Tensor, "b width"], read: Int[Tensor, " b"]
                ) -> tuple[Float[Tensor, "layer b d"], int]:
    """The clean residual stream after every block at each prompt's read position, from one
    sparse forward in which the prompts' shared prefix runs once; also the prefix length.

    Needs `supported(model)`. Right-padded `tokens`; `read` = each prompt's last position.
    """
    from interp.ffn_clean import block_activations
    from interp.forward import block_kwargs

    n, dev = model.cfg.n_layers, next(model.parameters()).device
    read = read.cpu()
    prefix = common_prefix(tokens, read)
    width = int(read.max()) + 1
    tokens = tokens[:, :width].to(dev)
    names = [f"blocks.{la}.hook_resid_pre" for la in range(n)]
    with torch.inference_mode():
        kwargs = block_kwargs(model, tokens[:1])
        pre = (block_activations(model, tokens[:1, :prefix], names) if prefix
               else {name: torch.zeros(1, 0, model.cfg.d_model, device=dev) for name in names})
        cache = {name: torch.nn.functional.pad(r, (0, 0, 0, width - prefix))
                 for name, r in pre.items()}
        base = BaseRun.of_cache(model, cache, kwargs, 1)
        embedded = block_activations(model, tokens, names[:1], stop_at=names[0])[names[0]]
        changed = ChangedTokens.span(torch.full_like(read, prefix), read, 1)
        x = embedded[changed.rows.to(dev), changed.pos.to(dev)]
        kept: dict[int, Tensor] = {}
        final = forward_changed(model, base, x, changed, 0, record=kept)
    at_read = changed.read.to(dev)
    return torch.stack([kept[la][at_read] for la in range(1, n)] + [final]), prefix
