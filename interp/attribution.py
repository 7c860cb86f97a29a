"""Attribution patching: gradient estimates of patching effects for every head and edge at once.

EAP (Syed et al. 2023): the effect of patching an activation `a` from run A into run B is
estimated to first order as `(a_A - a_B) . dM/da`, the gradient taken in run B. One forward of
each run and one backward give the estimate for every node (and, through the residual stream,
for every sender -> receiver edge).

EAP-IG (Hanna et al. 2024): the gradient is averaged over `steps` points on the straight line
between the two runs' INPUT EMBEDDINGS (`blocks.0.hook_resid_pre`: token + position embedding
on GPT-2, token embedding on Llama), at the midpoints `alpha = (k + 0.5) / steps` -- the
"inputs" variant of EAP-IG, not the per-activation one. It costs `steps` forward+backward passes.

Cost: EAP is one forward of the source run plus one forward+backward of the run patched into
(about 4 forward-equivalents); EAP-IG adds one forward and `steps` forward+backward passes.

Direction (`direction=`) fixes which run is patched into which, and so the sign:

- "noise" (default): patch the corrupted activation into the clean run; estimate of
  `mean_i M(clean run, node <- corrupted) - M(clean run)`; delta = a_corr - a_clean, gradient
  at the clean run (IG: path clean -> corrupted). This is the IOI paper's "corrupted -> clean"
  activation patching.
- "denoise": patch the clean activation into the corrupted run; estimate of
  `mean_i M(corrupted run, node <- clean) - M(corrupted run)`; delta = a_clean - a_corr,
  gradient at the corrupted run (IG: the same path reversed, so IG gives exactly minus "noise").

The metric `M` is the batch mean of `batch.metric` at each prompt's `read_positions`.

Example:
    >>> scores = head_attribution(model, batch)                  # [n_layers, n_heads]
    >>> edges = edge_attribution(model, batch, method="attribution-ig", steps=5)
    >>> edges.top(10)                                             # [(sender, receiver, score)]
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.arch import StackedWeights, attn_norm, mlp_input
from interp.forward import at_least_float32
from interp.metrics import logits_at
from interp.tasks.base import TaskBatch

METHODS = ("attribution", "attribution-ig")
DIRECTIONS = ("noise", "denoise")
RECEIVER_KINDS = ("q", "k", "v", "mlp", "logits")
INPUT = "blocks.0.hook_resid_pre"


def _check(method: str, direction: str, steps: int) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'noise' or 'denoise', got '{direction}'")
    if method == "attribution-ig" and steps < 1:
        raise ValueError(f"EAP-IG needs steps >= 1, got {steps}")


FINAL = "ln_final.hook_in"  # the final residual stream, before the final norm


class _Final(Exception):
    """Stops a forward at the final norm: the metric needs only its read positions."""


def _run(model, tokens, names: list[str], resid0: Tensor | None = None, grad: bool = False):
    """Forward `tokens`; return the output and the activations at `names` (in the graph if
    grad). The output is {"resid": final residual [batch, pos, d_model]}: the forward stops
    at the final norm, since the metric unembeds only the columns it reads at the read
    positions (`_metric_sum`); {"logits": ...} on a model without that hook.

    `resid0` replaces the input embedding (block 0's residual input); with `grad` it becomes a
    leaf that requires grad, so gradients reach every activation without parameter grads.
    """
    store: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}

    def set_input(act, hook):
        x = (act if resid0 is None else resid0.to(act.dtype)).detach()
        store[INPUT] = x.requires_grad_(grad)
        return store[INPUT]

    def saver(name):
        def save(act, hook):
            store[name] = act
            return act  # returning it keeps this tensor (not a pre-conversion view) in the graph
        return save

    def stop(act, hook):
        out["resid"] = act
        raise _Final

    hooks = [(INPUT, set_input)] + [(n, saver(n)) for n in names if n != INPUT]
    if FINAL in model.hook_dict:
        hooks.append((FINAL, stop))  # after the savers: ln_final.hook_in may be one of them
    try:
        with torch.set_grad_enabled(grad), model.hooks(fwd_hooks=hooks):
            out["logits"] = model(tokens.to(model.cfg.device))
    except _Final:
        pass
    return out, store


def _metric_sum(model, batch: TaskBatch, out: dict) -> Tensor:
    """Sum over prompts of the metric, from `_run`'s output."""
    from interp.patching.runs import metric_from_resid  # (interp.patching imports this module)

    if "resid" in out:
        return metric_from_resid(model, batch, logits_at(out["resid"],
                                                         batch.read_positions)).sum()
    return batch.metric(logits_at(out["logits"], batch.read_positions)).sum()


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield torch.arange(start, min(n, start + size))


def _grads_at(model, batch: TaskBatch, tokens, resid0, names, n_total, wrt=None):
    """Gradients of sum(metric)/n_total w.r.t. the activations `wrt` (default: `names`), and
    the activations `names`, on `tokens` (input embedding replaced by `resid0` unless None)."""
    wrt = names if wrt is None else wrt
    out, store = _run(model, tokens, names, resid0=resid0, grad=True)
    metric = _metric_sum(model, batch, out) / n_total
    grads = torch.autograd.grad(metric, [store[n] for n in wrt], allow_unused=True)
    acts = {n: store[n].detach() for n in names}
    grads = [torch.zeros_like(acts[n]) if g is None else g
             for n, g in zip(wrt, grads, strict=True)]
    return dict(zip(wrt, grads, strict=True)), acts


def _passes(model, batch: TaskBatch, direction: str, method: str, steps: int, names,
            n_total: int, cached=None, wrt=None):
    """Yield (start acts, end acts, grads, acts at the gradient point) per gradient point.

    The start run is the one patched INTO (clean for "noise"), the end run the source. EAP:
    one no-grad forward of the end run and one forward+backward of the start run, whose
    activations double as the start activations. EAP-IG: both endpoint forwards, then one
    forward+backward per midpoint alpha = (k + 0.5) / steps of the input-embedding path.
    `cached(which)`, when given, returns a run's endpoint activations ("clean" or
    "corrupted") from a cache, or None to compute them with a forward. `wrt`: the names
    whose gradients are needed (default: all `names`).
    """
    noise = direction == "noise"
    start_tokens = batch.clean_tokens if noise else batch.corrupted_tokens
    end_tokens = batch.corrupted_tokens if noise else batch.clean_tokens
    end, start = (None, None) if cached is None else (
        cached("corrupted" if noise else "clean"), cached("clean" if noise else "corrupted"))
    end = end or _run(model, end_tokens, names)[1]
    if method == "attribution":
        grads, acts = _grads_at(model, batch, start_tokens, None, names, n_total, wrt)
        yield acts, end, grads, acts
        return
    start = start or _run(model, start_tokens, names)[1]
    for k in range(steps):
        resid0 = start[INPUT] + (k + 0.5) / steps * (end[INPUT] - start[INPUT])
        grads, acts = _grads_at(model, batch, start_tokens, resid0, names, n_total, wrt)
        yield start, end, grads, acts


def metric_gradients(model, batch: TaskBatch, names: list[str], steps: int | None = None,
                     chunk_size: int = 16, positions: dict[str, Tensor] | None = None
                     ) -> dict[str, Tensor]:
    """d(mean metric)/d(activation) at `names`, prompt by prompt: `[batch, ...]` per name.

    `steps=None`: on the clean run (one forward+backward per chunk). `steps=m`: EAP-IG,
    averaged over m midpoints of the input-embedding path from the clean run to the
    corrupted one ("noise" direction). Callers may sit inside inference mode.
    `positions`: name -> `[batch, k]` positions; those names' gradients are kept there
    only, `[batch, k, ...]` (`grad[rows, positions]`), chunk by chunk as they are computed.
    """
    positions = positions or {}
    if steps is not None:
        _check("attribution-ig", "noise", steps)
    out: dict[str, Tensor] = {}  # filled chunk by chunk: no per-chunk copies to concatenate
    with torch.inference_mode(False):
        for index in _chunks(len(batch), chunk_size):
            sub = batch.subset(index)
            if steps is None:
                grads = _grads_at(model, sub, sub.clean_tokens, None, names, len(batch))[0]
            else:
                grads = _ig_grads(model, sub, names, steps, len(batch))
            for n in names:
                g = grads.pop(n).detach()
                if n in positions:
                    g = g[torch.arange(len(index))[:, None], positions[n][index].to(g.device)]
                if n not in out:
                    out[n] = g.new_empty((len(batch), *g.shape[1:]))
                out[n][index[0]:index[-1] + 1] = g
    return out


def _ig_grads(model, sub: TaskBatch, names: list[str], steps: int, n_total: int
              ) -> dict[str, Tensor]:
    """EAP-IG gradients at `names` on the prompts of `sub`: the mean over `steps` midpoints."""
    total: dict[str, Tensor] = {}
    for _, _, grads, _ in _passes(model, sub, "noise", "attribution-ig", steps,
                                  [INPUT, *names], n_total):
        for n in names:
            total[n] = total.get(n, 0) + grads[n].detach() / steps
    return total


def head_attribution(
    model, batch: TaskBatch, method: str = "attribution", steps: int = 5,
    direction: str = "noise", chunk_size: int = 16, positions: str | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """Estimated change of the mean metric when one head's output (`hook_z`, all positions)
    is patched, for every head at once.

    Args:
        model: a TransformerBridge.
        batch: the task's prompts; the metric is averaged over them.
        method: "attribution" (EAP, 1 forward per run + 1 backward) or "attribution-ig"
            (EAP-IG, `steps` forward+backward passes on interpolated input embeddings).
        steps: EAP-IG interpolation steps.
        direction: "noise" (corrupted into clean; the IOI paper's activation patching) or
            "denoise" (clean into corrupted). See the module docstring.
        chunk_size: prompts per forward (memory only; the result does not depend on it).
        positions: None for the head's output at all positions, or a name in
            `batch.positions` (e.g. "END") to patch it at that position only.

    Returns:
        `[n_layers, n_heads]`, raw metric units; compare with exact activation patching.

    Example:
        >>> est = head_attribution(model, batch, direction="noise")
        >>> est[9, 9]   # ~ M(clean with L9H9 <- corrupted) - M(clean)
    """
    _check(method, direction, steps)
    n_layers = model.cfg.n_layers
    names = [INPUT] + [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    out = torch.zeros(n_layers, model.cfg.n_heads)
    n_points = 1 if method == "attribution" else steps
    for index in _chunks(len(batch), chunk_size):
        sub = batch.subset(index)
        for start, end, grads, _ in _passes(model, sub, direction, method, steps, names,
                                            len(batch)):
            for layer in range(n_layers):
                name = f"blocks.{layer}.attn.hook_z"
                score = head_scores(end[name] - start[name], grads[name], sub, positions)
                out[layer] += score.detach().cpu() / n_points
    return out


def head_scores(delta: Float[Tensor, "batch pos n_heads d_head"],
                grad: Float[Tensor, "batch pos n_heads d_head"], batch: TaskBatch,
                positions: str | None = None) -> Float[Tensor, " n_heads"]:
    """EAP score of each head of one layer: delta . gradient, summed over prompts and over
    all positions (None) or at one named position of each prompt."""
    term = at_least_float32(delta) * at_least_float32(grad)
    if positions is not None:
        term = term[torch.arange(len(batch)), batch.positions[positions]][:, None]
    return term.sum((0, 1, 3))


@dataclass
class EdgeScores:
    """Scores of every sender -> receiver edge.

    Attributes:
        senders: "INPUT" (embeddings), "L{l}H{h}" (a head's output), "MLP{l}".
        receivers: "L{l}H{h}.q"; "L{l}H{h}.k"/".v" (MHA) or "L{l}KV{g}.k"/".v" (GQA: one
            key/value input per KV head, shared by its query heads); "MLP{l}"; "LOGITS".
        scores: `[n_senders, n_receivers]` (0 where no edge exists, see `valid`).
        valid: where the sender is upstream of the receiver.
        kv_groups: query heads per KV head (1 on MHA).
        heads: every head's node score from the same passes (`head_attribution`'s result).
    """

    senders: list[str]
    receivers: list[str]
    scores: Float[Tensor, "senders receivers"]
    valid: Bool[Tensor, "senders receivers"]
    kv_groups: int = 1
    heads: Float[Tensor, "n_layers n_heads"] | None = None

    def edges(self) -> list[tuple[str, str, float]]:
        """Every valid edge as (sender, receiver, score), by |score| descending (ties in
        (sender, receiver) order)."""
        (senders, receivers), values = self.ranked()
        return [(self.senders[s], self.receivers[r], v)
                for s, r, v in zip(senders.tolist(), receivers.tolist(), values.tolist(),
                                   strict=True)]

    def ranked(self) -> tuple[tuple[Tensor, Tensor], Float[Tensor, " edges"]]:
        """((sender, receiver) indices, score in float64) of every valid edge, by |score|
        descending (ties in (sender, receiver) order)."""
        senders, receivers = self.valid.nonzero().unbind(1)
        values = self.scores[senders, receivers].double()
        order = torch.argsort(-values.abs(), stable=True)
        return (senders[order], receivers[order]), values[order]

    def top(self, k: int) -> list[tuple[str, str, float]]:
        return self.edges()[:k]

    def __len__(self) -> int:
        return int(self.valid.sum())


def _graph(cfg, kinds, parallel: bool = False
           ) -> tuple[list[str], list[tuple[str, str, int, int]], list[int]]:
    """Sender names, receivers as (name, kind, layer, index), and each receiver's sender count.

    In a parallel block (GPT-J, GPT-NeoX) the MLP reads the block's input, so the heads of
    its own layer are not upstream of it."""
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    senders = ["INPUT"]
    receivers: list[tuple[str, str, int, int]] = []
    upstream: list[int] = []
    for layer in range(n_layers):
        for kind in ("q", "k", "v"):
            if kind not in kinds:
                continue
            count = n_heads if kind == "q" else n_kv
            for i in range(count):
                name = f"L{layer}H{i}" if kind == "q" or n_kv == n_heads else f"L{layer}KV{i}"
                receivers.append((f"{name}.{kind}", kind, layer, i))
                upstream.append(len(senders))
        if "mlp" in kinds:
            receivers.append((f"MLP{layer}", "mlp", layer, 0))
            upstream.append(len(senders) + (0 if parallel else n_heads))
        senders += [f"L{layer}H{h}" for h in range(n_heads)]
        senders.append(f"MLP{layer}")
    if "logits" in kinds:
        receivers.append(("LOGITS", "logits", n_layers, 0))
        upstream.append(len(senders))
    return senders, receivers, upstream


def _edge_names(model) -> tuple[list[str], list[str]]:
    """The activations edge scoring reads, and those whose gradients it reads."""
    names, wrt = [INPUT, FINAL], [FINAL]
    for layer in range(model.cfg.n_layers):
        block = f"blocks.{layer}."
        grads = [block + n for n in ("attn.hook_z", "attn.hook_q", "attn.hook_k",
                                     "attn.hook_v", "mlp.hook_in")]
        names += grads + [block + "hook_resid_pre", block + "hook_mlp_out",
                          mlp_input(model, layer)[1]]
        wrt += grads
    return list(dict.fromkeys(names)), wrt


def _sender_deltas(model, end, start, w: StackedWeights
                   ) -> Float[Tensor, "senders batch pos d_model"]:
    """Each sender's change of write into the residual stream, end run minus start run:
    embeddings, (z_end - z_start)_h W_O^h for each head, MLP out; in float32 or better."""
    z = end["blocks.0.attn.hook_z"]
    n_heads = z.shape[2]
    out = torch.empty(1 + (n_heads + 1) * model.cfg.n_layers, *end[INPUT].shape,
                      dtype=at_least_float32(z[:1, :1, :1, :1]).dtype, device=z.device)
    out[0] = end[INPUT] - start[INPUT]
    for layer in range(model.cfg.n_layers):
        name, row = f"blocks.{layer}.attn.hook_z", 1 + (n_heads + 1) * layer
        dz = at_least_float32(end[name] - start[name])
        out[row:row + n_heads] = torch.einsum("bphe,hed->hbpd", dz,
                                              w["W_O"][layer].to(dz.dtype))
        name = f"blocks.{layer}.hook_mlp_out"
        out[row + n_heads] = end[name] - start[name]
    return out


def _norm_vjp(norm, resid: Tensor, cotangents: Tensor) -> Tensor:
    """cotangents [r, b, pos, d] at the norm's output -> at its (pre-norm) residual input:
    one forward of the norm, and its backward batched over the r cotangents."""
    x = resid.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = norm(x)
        (g,) = torch.autograd.grad(y, x, cotangents, is_grads_batched=True)
    return g


def _receiver_grads(model, kinds: list[str], layer: int, grads, acts, w: StackedWeights
                    ) -> Tensor:
    """dM/d(residual input) of every receiver of `kinds` at `layer`, in receiver order:
    [r, b, pos, d_model]. The q/k/v inputs share one norm VJP (they read the same norm)."""
    if kinds == ["logits"]:
        return grads["ln_final.hook_in"].unsqueeze(0)
    out = []
    attn = [k for k in kinds if k in ("q", "k", "v")]
    if attn:
        cot = []
        for kind in attn:
            weight = w[f"W_{kind.upper()}"][layer]  # [h, d, e]
            g = grads[f"blocks.{layer}.attn.hook_{kind}"]  # [b, pos, h, e] (pre-rotary q/k)
            cot.append(torch.einsum("bphe,hde->hbpd", g, weight.to(g.dtype)))
        resid = acts[f"blocks.{layer}.hook_resid_pre"]
        out.append(_norm_vjp(attn_norm(model, layer), resid, torch.cat(cot)))
    if "mlp" in kinds:
        norm, point = mlp_input(model, layer)
        out.append(_norm_vjp(norm, acts[point],
                             grads[f"blocks.{layer}.mlp.hook_in"].unsqueeze(0)))
    return torch.cat(out)


def _edge_scores_at(model, receivers, upstream, grads, acts, delta, w: StackedWeights
                    ) -> Tensor:
    """Scores [senders, receivers] = sum over batch, pos, d of delta_u * g_v: one product per
    layer's receivers (the rows of senders not upstream of a receiver are zeroed)."""
    out = torch.zeros(delta.shape[0], len(receivers))
    flat = at_least_float32(delta.reshape(delta.shape[0], -1))
    groups: dict[int, list[int]] = {}
    for col, (_, _kind, layer, _i) in enumerate(receivers):
        groups.setdefault(layer, []).append(col)
    for layer, cols in groups.items():
        kinds = list(dict.fromkeys(receivers[c][1] for c in cols))
        g = _receiver_grads(model, kinds, layer, grads, acts, w).reshape(len(cols), -1)
        ups = torch.tensor([upstream[c] for c in cols])
        n_up = int(ups.max())
        scores = (flat[:n_up] @ at_least_float32(g).T).detach().cpu()
        out[:n_up, cols] = scores * (torch.arange(n_up)[:, None] < ups[None])
    return out


def _sender_names(model) -> list[str]:
    """The activations `_sender_deltas` reads of each run (what `_from_runs` takes from a cache)."""
    return [INPUT] + [f"blocks.{layer}.{n}" for layer in range(model.cfg.n_layers)
                      for n in ("attn.hook_z", "hook_mlp_out")]


def _from_runs(model, batch: TaskBatch, runs):
    """`cached(which, index)` for `_passes`: the sender activations of prompts `index` from the
    cached clean/corrupted runs (`interp.patching.runs.Runs`), None where a cache lacks one."""
    if runs is None:
        return None
    if runs.batch is not batch and not (
            torch.equal(runs.batch.clean_tokens, batch.clean_tokens)
            and torch.equal(runs.batch.corrupted_tokens, batch.corrupted_tokens)):
        raise ValueError("runs were prepared for other prompts than batch; pass the runs of "
                         "this batch (prepare_runs(model, batch)) or none")
    names = _sender_names(model)

    def cached(which: str, index: Tensor) -> dict | None:
        cache = runs.cache(which)
        if not all(n in cache for n in names):
            return None
        rows = index.to(cache[INPUT].device)
        return {n: cache[n][rows] for n in names}
    return cached


def edge_attribution(
    model, batch: TaskBatch, receivers: tuple[str, ...] = RECEIVER_KINDS,
    method: str = "attribution", steps: int = 5, direction: str = "noise",
    chunk_size: int = 8, runs=None,
) -> EdgeScores:
    """EAP / EAP-IG scores for every sender -> receiver edge.

    score(u -> v) = mean over prompts of sum over positions of
    `(a_u_end - a_u_start) . dM/d(residual input of v)`, where `a_u` is what sender u writes
    into the residual stream (z_h W_O^h for a head, the MLP output, the embeddings for INPUT)
    and the gradient is taken at v's own input before its norm (LayerNorm/RMSNorm Jacobian
    included), so only the direct residual path u -> v is credited. For q/k/v receivers the
    gradient at `hook_q/k/v` of that head is mapped back through W_Q/W_K/W_V (these hooks sit
    before the rotary embedding on Llama). On GQA models (e.g. SmolLM2: 9 query heads,
    3 KV heads) a key/value input belongs to a KV head and is scored once per KV head
    ("L{l}KV{g}.k"); query head h uses KV head `h // kv_groups`.

    The same passes give every head's node score (`EdgeScores.heads`), what
    `head_attribution` returns: the gradient at `hook_z` is at hand.

    Args:
        receivers: which receiver kinds to score: "q", "k", "v", "mlp", "logits".
        method, steps, direction: as in `head_attribution`.
        chunk_size: prompts per forward (memory only).
        runs: the batch's cached clean and corrupted runs (`prepare_runs`), or None. Their
            embeddings, `hook_z` and `hook_mlp_out` stand in for the forward of the source
            run (and of the start run for EAP-IG): one forward fewer, the same scores.

    Example:
        >>> es = edge_attribution(model, batch, runs=prepare_runs(model, batch))
        >>> es.top(3)   # [("L9H9", "LOGITS", 1.2), ...]
        >>> es.heads    # [n_layers, n_heads], = head_attribution(model, batch)
    """
    _check(method, direction, steps)
    bad = set(receivers) - set(RECEIVER_KINDS)
    if bad:
        raise ValueError(f"unknown receiver kinds {sorted(bad)}; use {RECEIVER_KINDS}")
    cached = _from_runs(model, batch, runs)
    parallel = mlp_input(model, 0)[1].endswith("resid_pre")
    senders, recv, upstream = _graph(model.cfg, receivers, parallel)
    names, wrt = _edge_names(model)
    scores = torch.zeros(len(senders), len(recv))
    heads = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    n_points = 1 if method == "attribution" else steps
    w = StackedWeights(model)
    for index in _chunks(len(batch), chunk_size):
        sub = batch.subset(index)
        delta = None
        at = None if cached is None else (lambda which, index=index: cached(which, index))
        for start, end, grads, acts in _passes(model, sub, direction, method, steps, names,
                                               len(batch), at, wrt):
            if delta is None:
                delta = _sender_deltas(model, end, start, w)
            scores += _edge_scores_at(model, recv, upstream, grads, acts, delta, w) / n_points
            heads += _head_grid(model, start, end, grads, sub) / n_points
    valid = torch.zeros_like(scores, dtype=torch.bool)
    for col, n_up in enumerate(upstream):
        valid[:n_up, col] = True
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return EdgeScores(senders, [r[0] for r in recv], scores, valid, model.cfg.n_heads // n_kv,
                      heads)


def _head_grid(model, start, end, grads, sub: TaskBatch) -> Float[Tensor, "n_layers n_heads"]:
    """Every head's node score at one gradient point (`head_attribution`'s terms)."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    return torch.stack([head_scores(end[n] - start[n], grads[n], sub).detach().cpu()
                        for n in names])
