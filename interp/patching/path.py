"""Path patching (Wang et al. 2022, Algorithm 1), exact and near the FLOP floor.

For a sender head s, the paper's patched run gives s its corrupted output, freezes every other
head to its clean output, and recomputes MLPs and norms. With all attention frozen, s's
change reaches later layers only through MLPs, and MLPs act per position. So we propagate,
at the positions the receivers read, `resid_mid[L] + delta_s` through MLP L, then
(frozen clean attention output + recomputed MLP) per later layer; no attention is recomputed.

- receivers = "logits": the final residual at the metric's read position gives the metric.
- receivers = q/k/v inputs of heads at named positions: the propagated residual at each
  receiver's layer gives its new q/k/v (LN1 then W_Q/W_K/W_V); a final clean run, resumed at
  the first receiver layer, with those inputs patched, gives the metric. It runs only the
  tokens from the earliest receiver position on (`interp.patching.sparse`).

Senders of one layer share one propagation (senders x prompts); the final runs of senders
that reach the same receivers are batched together, whatever their layer, under a memory
budget. A screen (attribution for every sender, then exact for the strongest) computes the
receivers' patched inputs once for both (`ScreenedPaths`); the logits sweep can record, on
the way, the attribution estimate of every path to a later query at the read position
(`QueryScreen`), so a screen of query receivers there needs no propagation of its own. The
naive reference (one full forward per sender and step) is `interp.patching.naive`.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.arch import family_of, notify_slow
from interp.attribution import metric_gradients
from interp.forward import at_least_float32
from interp.nodes import Head
from interp.patching import counter
from interp.patching.gradients import clean_gradients
from interp.patching.runs import Runs, chunk_size, head_out, metric_from_resid
from interp.patching.sparse import ChangedTokens, Override, base_run, forward_changed

INPUTS = ("q", "k", "v")


@dataclass(frozen=True)
class Receiver:
    """The q, k or v input of a head, read at a named position (e.g. "END", "S2")."""

    head: Head
    input: str
    position: str

    def __post_init__(self):
        if self.input not in INPUTS:
            raise ValueError(f"receiver input must be one of {INPUTS}, got '{self.input}'")

    def hook_name(self) -> str:
        return f"blocks.{self.head.layer}.attn.hook_{self.input}"

    def slot(self, model) -> int:
        """Index in hook_q/k/v: the query head for q; for k/v the key/value head that the
        receiver's query head reads (on GQA models it is shared by a group of query heads,
        but only the receiver sees the patched value: see `path_patch`)."""
        if self.input == "q":
            return self.head.head
        n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
        return self.head.head // (model.cfg.n_heads // n_kv)


def _project(model, runs: Runs, receiver: Receiver, resid_pre: Float[Tensor, "... d_model"]):
    """The receiver's q/k/v vector computed from a residual stream (LN1, then W, then b)."""
    layer = receiver.head.layer
    h = family_of(model).attn_input(model, layer, resid_pre)
    return base_run(model, runs).project(layer, receiver.input, h, receiver.slot(model))


def _position_table(runs: Runs, pos_names: list[str]) -> Tensor:
    """[batch, n_pos] token positions; "_read" is the metric's read position."""
    table = {**runs.batch.positions, "_read": runs.batch.read_positions}
    return torch.stack([table[p] for p in pos_names], -1)


def _propagate(model, runs: Runs, layer: int, delta, pos_names: list[str], stop: int):
    """Residual vectors at `pos_names`, from layer `layer`'s attention output + delta up to
    resid_pre[stop].

    Returns {l: [k, batch, n_pos, d]} for every resid_pre layer l in (layer, stop], where
    attention is frozen to its clean output and MLPs (and norms) are recomputed.
    """
    cache, batch, family = runs.clean_cache, runs.batch, family_of(model)
    rows = torch.arange(len(batch))[:, None]
    pos = _position_table(runs, pos_names)  # [batch, n_pos]

    def at(name: str):
        return cache[name][rows, pos]  # [batch, n_pos, d]

    x = family.head_step(model, layer, at, delta)
    share = counter.mlp_share(model.cfg) * x.shape[:-1].numel()
    counter.add(share)
    pre = {layer + 1: x}
    for cur in range(layer + 1, stop):
        x = family.block_step(model, cur, x, at(family.attn_out_hook(cur)))
        counter.add(share)
        pre[cur + 1] = x
    return pre


def _sender_delta(model, runs: Runs, layer: int, heads, pos_names: list[str]):
    rows = torch.arange(len(runs.batch))[:, None]
    pos = _position_table(runs, pos_names)
    name = f"blocks.{layer}.attn.hook_z"
    diff = runs.corrupted_cache[name][rows, pos] - runs.clean_cache[name][rows, pos]
    return head_out(base_run(model, runs).w["W_O"][layer], diff, heads)  # [k, batch, n_pos, d]


def _to_logits(model, runs: Runs, layer: int, heads,
               queries: "QueryScreen | None" = None, index=None) -> Float[Tensor, " k"]:
    delta = _sender_delta(model, runs, layer, heads, ["_read"])
    final = _propagate(model, runs, layer, delta, ["_read"], model.cfg.n_layers)
    if queries is not None:
        queries.add(index, layer, final)
    resid = final[model.cfg.n_layers][:, :, 0]  # [k, batch, d]
    return (metric_from_resid(model, runs.batch, resid) - runs.clean_metric).mean(-1)


def _receiver_values(model, runs: Runs, layer: int, heads, receivers: list[Receiver]):
    """Each receiver's q/k/v under each sender's patched path: {receiver: [k, batch, d_head]}."""
    pos_names = sorted({r.position for r in receivers})
    top = max(r.head.layer for r in receivers)
    delta = _sender_delta(model, runs, layer, heads, pos_names)
    pre = _propagate(model, runs, layer, delta, pos_names, top)
    return {r: _project(model, runs, r, pre[r.head.layer][:, :, pos_names.index(r.position)])
            for r in receivers}


def _all_receiver_values(model, runs: Runs, senders: list[Head], receivers: list[Receiver],
                         progress: bool) -> dict:
    """{receiver: [n_senders, batch, d_head]}: each receiver's input under each sender's
    patched path; the clean input where the sender cannot reach the receiver (its layer is
    not earlier). Senders of one layer share one propagation."""
    n = len(senders)
    out = {r: _clean_value(model, runs, r).expand(n, -1, -1).clone() for r in receivers}
    for layer, idx in tqdm(_by_layer(senders), desc="path patching", disable=not progress):
        reachable = [r for r in receivers if r.head.layer > layer]
        if reachable:
            heads = torch.tensor([senders[i].head for i in idx])
            for r, v in _receiver_values(model, runs, layer, heads, reachable).items():
                out[r][idx] = v.to(out[r].dtype)
    return out


def _estimates(model, runs: Runs, values: dict, grads: dict) -> Float[Tensor, " n_senders"]:
    """First-order estimate per sender: sum over receivers of (input change . gradient)."""
    return sum((at_least_float32(v - _clean_value(model, runs, r))
                * at_least_float32(grads[r])).sum((-1, -2)) for r, v in values.items()).cpu()


def _exact_from_values(model, runs: Runs, senders: list[Head], receivers: list[Receiver],
                       values: dict, budget: float | None) -> Float[Tensor, " n_senders"]:
    """The paper's final runs for every sender, from its receivers' patched inputs.

    Senders that reach the same receivers (those in later layers) share one start layer, so
    their final runs are batched together whatever their own layer."""
    result = torch.zeros(len(senders), dtype=runs.clean_metric.dtype)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(senders):
        later = [r.head.layer for r in receivers if r.head.layer > s.layer]
        if later:
            groups.setdefault(min(later), []).append(i)
    for start, idx in sorted(groups.items()):
        reached = {r: values[r][idx] for r in receivers if r.head.layer >= start}
        result[idx] = _final_run(model, runs, start, reached, len(idx), budget).cpu()
    return result


def _clean_value(model, runs: Runs, r: Receiver) -> Float[Tensor, "batch d_head"]:
    rows = torch.arange(len(runs.batch))
    return runs.clean_cache[r.hook_name()][rows, runs.batch.positions[r.position], r.slot(model)]


def receiver_gradients(model, runs: Runs, receivers: list[Receiver],
                       steps: int | None = None) -> dict:
    """d(mean metric)/d(receiver input): {receiver: [batch, d_head]}.

    `steps=None`: on the clean run, from the shared clean-run gradients (one forward and one
    backward pass per `Runs`). `steps=m`: EAP-IG, averaged over m points of the input path
    from the clean to the corrupted prompts (`interp.attribution.metric_gradients`).
    """
    if steps is None:
        grads = clean_gradients(model, runs)
    else:
        grads = metric_gradients(model, runs.batch, sorted({r.hook_name() for r in receivers}),
                                 steps)
    rows = torch.arange(len(runs.batch))
    return {r: grads[r.hook_name()][rows, runs.batch.positions[r.position], r.slot(model)]
            for r in receivers}


def _final_run(model, runs: Runs, start: int, values: dict, k: int,
               budget: float | None) -> Float[Tensor, " k"]:
    """The paper's final clean run with the receivers' inputs patched, for k senders.

    Only the tokens from the earliest receiver position on can change; they alone are run.
    """
    batch, n = runs.batch, len(runs.batch)
    engine = base_run(model, runs, "clean")
    first = torch.stack([batch.positions[r.position] for r in values]).amin(0)
    resid = runs.clean_cache[f"blocks.{start}.hook_resid_pre"]
    step = chunk_size(model, n, resid.shape[1], budget)
    out = []
    for lo in range(0, k, step):
        hi = min(lo + step, k)
        tokens = ChangedTokens.span(first, batch.read_positions, hi - lo)
        overrides = [Override(r.head.layer, r.input, r.head.head,
                              batch.positions[r.position].repeat(hi - lo), v[lo:hi].flatten(0, 1))
                     for r, v in values.items()]
        x = resid.repeat(hi - lo, 1, 1)[tokens.rows, tokens.pos]
        final = forward_changed(model, engine, x, tokens, start, overrides).view(hi - lo, n, -1)
        out.append((metric_from_resid(model, batch, final) - runs.clean_metric).mean(-1))
    return torch.cat(out)


METHODS = ("exact", "attribution", "attribution-ig", "screen")


def screened(estimate: Float[Tensor, " n"], top_k: int,
             at_least: float = float("inf")) -> list[int]:
    """Indices to patch exactly after screening: the `top_k` largest |estimate|, and every
    one whose |estimate| reaches `at_least`; ascending."""
    order = estimate.abs().argsort(descending=True).tolist()
    return sorted(set(order[:top_k]) | {i for i in order if estimate[i].abs() >= at_least})


class ScreenedPaths:
    """Attribution estimates of every sender's path to q/k/v receivers, then exact patching of
    the senders the caller picks, sharing the receivers' patched inputs between both.

    The estimate needs each receiver's input under each sender's patched path (the costly
    part); the exact figure needs the same inputs plus the paper's final run. They are
    computed once. `estimate` may be given instead (e.g. `QueryScreen.estimate`): then
    only the picked senders' inputs are computed, in `exact`.

    Example:
        >>> paths = ScreenedPaths(model, runs, senders, receivers)
        >>> chosen = screened(paths.estimate, top_k=10)
        >>> exact = paths.exact(chosen)  # [len(chosen)], raw units
    """

    def __init__(self, model, runs: Runs, senders: list[Head], receivers: list[Receiver],
                 steps: int | None = None, budget_gb: float | None = None,
                 progress: bool = True, estimate: Tensor | None = None):
        self.model, self.runs, self.senders, self.receivers = model, runs, senders, receivers
        self.budget, self.progress = budget_gb, progress
        self.fast = family_of(model) is not None
        self.values: dict | None = None
        if estimate is not None:
            self.estimate = estimate
            return
        grads = receiver_gradients(model, runs, receivers, steps)
        if not self.fast:
            self.estimate = _general_estimate(model, runs, senders, receivers, grads)
            return
        with torch.inference_mode():
            self.values = _all_receiver_values(model, runs, senders, receivers, progress)
            self.estimate = _estimates(model, runs, self.values, grads)

    def exact(self, chosen: list[int]) -> Float[Tensor, " n_chosen"]:
        """Exact path patching of the senders at indices `chosen` (raw metric units)."""
        senders = [self.senders[i] for i in chosen]
        if not self.fast:
            return _general_exact(self.model, self.runs, senders, self.receivers)
        with torch.inference_mode():
            if self.values is None:
                values = _all_receiver_values(self.model, self.runs, senders, self.receivers,
                                              self.progress)
            else:
                values = {r: v[chosen] for r, v in self.values.items()}
            return _exact_from_values(self.model, self.runs, senders, self.receivers, values,
                                      self.budget)


class QueryScreen:
    """Attribution estimates of every sender's path to the query, at the read position, of
    every later head, read off the propagation that path patching to the logits runs anyway.

    For sender s and receiver head h of layer L (query at the read position) the estimate is
    `path_patch(method="attribution")`'s: (q_h under s's patched path - clean q_h) . dM/dq_h,
    summed over prompts; computed as (LN1(x_s) - LN1(x)) . (W_Q[h] dM/dq_h), with x_s the
    residual the logits propagation reaches layer L with and x the clean one. Pass it to
    `path_patch(..., "logits", queries=...)`; `estimate` then replaces a screen's first pass.

    Example:
        >>> queries = QueryScreen(model, runs, senders)
        >>> to_logits = path_patch(model, runs, senders, queries=queries)
        >>> est = queries.estimate(senders, [Receiver(Head(9, 9), "q", "END")])
    """

    def __init__(self, model, runs: Runs, senders: list[Head]):
        self.model, self.runs = model, runs
        self.row = {s: i for i, s in enumerate(senders)}
        cfg = model.cfg
        self.grid = torch.zeros(len(senders), cfg.n_layers, cfg.n_heads,
                                dtype=runs.clean_metric.dtype)
        self._grads = clean_gradients(model, runs)
        self._directions: dict[int, tuple[Tensor, Tensor]] = {}

    def _direction(self, layer: int) -> tuple[Tensor, Tensor]:
        """(LN1 input of the clean run [batch, d_model], W_Q[h] dM/dq_h as [batch x d_model,
        heads]) at the read position."""
        if layer not in self._directions:
            runs, model = self.runs, self.model
            rows, read = torch.arange(len(runs.batch)), runs.batch.read_positions
            resid = runs.clean_cache[f"blocks.{layer}.hook_resid_pre"][rows, read]
            clean = family_of(model).attn_input(model, layer, resid)
            grad = self._grads[f"blocks.{layer}.attn.hook_q"][rows, read]  # [batch, heads, e]
            direction = torch.einsum("bhe,hde->bdh", at_least_float32(grad),
                                     at_least_float32(base_run(model, runs).w["W_Q"][layer]))
            self._directions[layer] = (clean, direction.reshape(-1, direction.shape[-1]))
        return self._directions[layer]

    def add(self, index: list[int], layer: int, pre: dict) -> None:
        """Record the estimates of senders `index` (of layer `layer`) from their propagated
        residuals `pre` ({L: [k, batch, 1, d_model]} at the read position)."""
        for later in range(layer + 1, self.model.cfg.n_layers):
            clean, direction = self._direction(later)
            change = family_of(self.model).attn_input(self.model, later, pre[later][:, :, 0])
            change = at_least_float32(change - clean).reshape(len(index), -1)  # [k, b x d]
            self.grid[index, later] = (change @ direction).cpu().to(self.grid.dtype)

    def release(self) -> None:
        """Drop the per-layer gradient directions (the estimates stay)."""
        self._directions.clear()

    def covers(self, runs: Runs, receivers: list[Receiver]) -> bool:
        """True when every receiver is a query read at the metric's read position."""
        table = runs.batch.positions
        return all(r.input == "q" and torch.equal(table[r.position], runs.batch.read_positions)
                   for r in receivers)

    def estimate(self, senders: list[Head], receivers: list[Receiver]) -> Float[Tensor, " n"]:
        """Each sender's estimate summed over the receivers in later layers (raw units)."""
        if not self.covers(self.runs, receivers):
            raise ValueError("QueryScreen only estimates paths to queries read at the metric's "
                             "read position")
        out = torch.zeros(len(senders), dtype=self.grid.dtype)
        for i, s in enumerate(senders):
            for r in receivers:
                if r.head.layer > s.layer:
                    out[i] += self.grid[self.row[s], r.head.layer, r.head.head]
        return out


def path_patch(model, runs: Runs, senders: list[Head], receivers="logits",
               method: str = "exact", top_k: int = 20, steps: int = 5,
               budget_gb: float | None = None, progress: bool = True,
               queries: QueryScreen | None = None) -> Float[Tensor, " n_senders"]:
    """Mean change of the metric when each sender's path to the receivers is patched.

    Args:
        runs: from `prepare_runs` (clean = the run being explained, corrupted = p_ABC).
        senders: heads whose corrupted output is patched in, one at a time.
        receivers: "logits" or a list of `Receiver` (q/k/v inputs of heads at positions).
        method: for q/k/v receivers, "exact"; "attribution" (each receiver input's exact
            change under the sender's path, times the metric's gradient w.r.t. that input:
            one backward pass replaces the final runs); "attribution-ig" (the same with the
            gradient averaged over `steps` EAP-IG points); or "screen" (attribution for all,
            then exact for the `top_k` senders with the largest |estimate|, `ScreenedPaths`).
            Paths to the logits are always exact (they are cheap).
        budget_gb: activation memory budget of one batched forward (None: device default).
        queries: with receivers="logits" on the fast engine, a `QueryScreen` of these
            senders to fill on the way (attribution estimates of paths to later queries).

    Receivers are the paper's: only the receiving head sees the patched input. On GQA models
    (e.g. SmolLM2: 3 query heads per key/value head) a k or v receiver's patched key/value is
    seen by that query head alone; the other query heads of its KV group keep their clean
    keys/values (the fast engine gives the receiver its own copy of the KV head; the naive
    reference replaces the receiver's output with that of a run where the shared KV head is
    patched). With method="attribution"/"screen" the gradient is taken at the shared KV
    head's input, so the estimate (not the exact figure) includes the group's other heads.

    Models outside `interp.arch.FAMILIES` take the general path (two hooked bridge
    forwards per sender, `interp.patching.naive`), announced once in one line; the
    attribution methods work on every model.

    Returns:
        [n_senders] mean over prompts of metric(patched) - metric(clean), raw units.

    Example:
        >>> recv = [Receiver(Head(9, 9), "q", "END")]
        >>> effects = path_patch(model, runs, all_heads(9, 12), recv)  # [n_senders]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    fast = family_of(model) is not None
    if not fast:
        notify_slow(model, "path patching")
    if receivers == "logits":
        if not fast:
            return _general_exact(model, runs, senders, receivers)
        return _logits_sweep(model, runs, senders, queries, progress)
    if method == "exact":
        if not fast:
            return _general_exact(model, runs, senders, receivers)
        with torch.inference_mode():
            values = _all_receiver_values(model, runs, senders, receivers, progress)
            return _exact_from_values(model, runs, senders, receivers, values, budget_gb)
    paths = ScreenedPaths(model, runs, senders, receivers,
                          steps if method == "attribution-ig" else None, budget_gb, progress)
    if method != "screen":
        return paths.estimate
    chosen = screened(paths.estimate, top_k)
    result = paths.estimate.clone()
    result[chosen] = paths.exact(chosen)
    return result


def _general_exact(model, runs: Runs, senders: list[Head],
                   receivers) -> Float[Tensor, " n_senders"]:
    """The general path: the paper's two hooked forwards per sender (`naive`)."""
    from interp.patching.naive import path_patch_naive

    return path_patch_naive(model, runs, senders, receivers)


def _general_estimate(model, runs: Runs, senders: list[Head], receivers: list[Receiver],
                      grads: dict) -> Float[Tensor, " n_senders"]:
    """The general path's attribution estimate: each receiver input's exact change under
    the sender's frozen-attention run (one hooked forward per sender), times the gradient."""
    from interp.patching.naive import receiver_values_naive

    out = torch.zeros(len(senders), dtype=runs.clean_metric.dtype)
    for i, sender in enumerate(senders):
        values = receiver_values_naive(model, runs, sender, receivers)
        for r in receivers:
            if r.head.layer > sender.layer:
                change = at_least_float32(values[r] - _clean_value(model, runs, r))
                out[i] += (change * at_least_float32(grads[r])).sum().cpu()
    return out


def _by_layer(senders: list[Head]) -> list[tuple[int, list[int]]]:
    """[(layer, indices of the senders in it)], layers ascending."""
    out: dict[int, list[int]] = {}
    for i, s in enumerate(senders):
        out.setdefault(s.layer, []).append(i)
    return sorted(out.items())


@torch.inference_mode()
def _logits_sweep(model, runs: Runs, senders: list[Head], queries: QueryScreen | None,
                  progress: bool) -> Float[Tensor, " n_senders"]:
    result = torch.zeros(len(senders), dtype=runs.clean_metric.dtype)
    for layer, idx in tqdm(_by_layer(senders), desc="path patching", disable=not progress):
        heads = torch.tensor([senders[i].head for i in idx])
        rows = None if queries is None else [queries.row[senders[i]] for i in idx]
        result[idx] = _to_logits(model, runs, layer, heads, queries, rows).cpu()
    if queries is not None:
        queries.release()
    return result
