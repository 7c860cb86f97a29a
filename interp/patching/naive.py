"""Reference implementations: one full forward pass per patched item, hooks only.

Slow and obviously faithful to the definitions; the tests hold the fast sweeps to them. They
are also the general path: models outside `interp.arch.FAMILIES` run every sweep
through them (the bridge's own hooks, so exact on any architecture the bridge loads).
"""

import torch
from jaxtyping import Float
from torch import Tensor

from interp.forward import at_least_float32
from interp.metrics import logits_at
from interp.nodes import Head, all_heads
from interp.patching.activation import _base_source
from interp.patching.path import Receiver
from interp.patching.runs import Runs


def _metric(model, runs: Runs, logits) -> Tensor:
    return at_least_float32(runs.batch.metric(logits_at(logits, runs.batch.read_positions)))


def _tokens(runs: Runs, which: str) -> Tensor:
    b = runs.batch
    tokens = b.clean_tokens if which == "clean" else b.corrupted_tokens
    return tokens.to(runs.clean_metric.device)


@torch.inference_mode()
def act_patch_heads_naive(model, runs: Runs, direction: str = "noise",
                          positions: str | None = None,
                          layers: list[int] | None = None) -> Float[Tensor, "layer head"]:
    """One forward per head; `layers` limits the sweep (rows of other layers stay 0)."""
    base, source = _base_source(direction)
    base_metric = runs.clean_metric if base == "clean" else runs.corrupted_metric
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=base_metric.dtype)
    pos = None if positions is None else runs.batch.positions[positions]
    rows = torch.arange(len(runs.batch))
    for head in all_heads(model.cfg.n_layers, model.cfg.n_heads):
        if layers is not None and head.layer not in layers:
            continue
        src = runs.cache(source)[head.hook_name][:, :, head.head]

        def hook(z, hook=None, h=head.head, src=src):
            z = z.clone()
            if pos is None:
                z[:, :, h] = src
            else:
                z[rows, pos, h] = src[rows, pos]
            return z

        logits = model.run_with_hooks(_tokens(runs, base), fwd_hooks=[(head.hook_name, hook)])
        out[head.layer, head.head] = (_metric(model, runs, logits) - base_metric).mean().cpu()
    return out


def _freeze_hooks(model, runs: Runs, sender: Head):
    hooks = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        frozen = runs.clean_cache[name].clone()
        if layer == sender.layer:
            frozen[:, :, sender.head] = runs.corrupted_cache[name][:, :, sender.head]
        hooks.append((name, lambda z, hook=None, f=frozen: f))
    return hooks


def _frozen_cache(model, runs: Runs, sender: Head, names: list[str]) -> dict:
    """The activations `names` of the paper's sender run: sender corrupted, every other
    head frozen clean, MLPs and norms recomputed."""
    with model.hooks(fwd_hooks=_freeze_hooks(model, runs, sender)):
        _, cache = model.run_with_cache(_tokens(runs, "clean"), names_filter=names)
    return cache


@torch.inference_mode()
def receiver_values_naive(model, runs: Runs, sender: Head,
                          receivers: list[Receiver]) -> dict[Receiver, Tensor]:
    """Each receiver's q/k/v input [batch, d_head] in the sender's frozen run."""
    rows = torch.arange(len(runs.batch))
    cache = _frozen_cache(model, runs, sender, sorted({r.hook_name() for r in receivers}))
    return {r: cache[r.hook_name()][rows, runs.batch.positions[r.position], r.slot(model)]
            for r in receivers}


@torch.inference_mode()
def path_patch_naive(model, runs: Runs, senders: list[Head], receivers="logits") -> Tensor:
    """The paper's Algorithm 1, two full hooked forwards per sender (more on GQA k/v)."""
    out = torch.zeros(len(senders), dtype=runs.clean_metric.dtype)
    clean = _tokens(runs, "clean")
    for i, sender in enumerate(senders):
        if receivers == "logits":
            logits = model.run_with_hooks(clean, fwd_hooks=_freeze_hooks(model, runs, sender))
        else:
            cache = _frozen_cache(model, runs, sender,
                                  sorted({r.hook_name() for r in receivers}))
            hooks = _receiver_hooks(model, runs, receivers, cache)
            logits = model.run_with_hooks(clean, fwd_hooks=hooks)
        out[i] = (_metric(model, runs, logits) - runs.clean_metric).mean().cpu()
    return out


def _shared(model, r: Receiver) -> bool:
    """A k/v receiver whose key/value head other query heads share (GQA)."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return r.input != "q" and n_kv != model.cfg.n_heads


def _receiver_hooks(model, runs: Runs, receivers: list[Receiver], cache) -> list:
    """Hooks of the final run: each receiver sees its patched input, and only it.

    q inputs and unshared k/v inputs are patched at their hook. A shared (GQA) k/v input
    would reach the whole KV group, so instead the receiving head's output `hook_z` is
    replaced by its output in a run where the KV head is patched (everything before that
    layer being the final run's own); receivers are handled layer by layer.
    """
    hooks = [_patch_hook(model, runs, r, cache) for r in receivers if not _shared(model, r)]
    by_head: dict[Head, list[Receiver]] = {}
    for r in sorted((r for r in receivers if _shared(model, r)),
                    key=lambda r: (r.head.layer, r.head.head)):
        by_head.setdefault(r.head, []).append(r)
    tokens = _tokens(runs, "clean")
    for head, group in by_head.items():
        trial = hooks + [_patch_hook(model, runs, r, cache) for r in group]
        with model.hooks(fwd_hooks=trial):
            _, seen = model.run_with_cache(tokens, names_filter=[head.hook_name])
        z = seen[head.hook_name][:, :, head.head]

        def own_output(act, hook=None, h=head.head, z=z):
            act = act.clone()
            act[:, :, h] = z
            return act
        hooks.append((head.hook_name, own_output))
    return hooks


def _patch_hook(model, runs: Runs, r: Receiver, cache):
    rows = torch.arange(len(runs.batch))
    pos, slot = runs.batch.positions[r.position], r.slot(model)
    patched = cache[r.hook_name()][rows, pos, slot]

    def hook(act, hook=None):
        act = act.clone()
        act[rows, pos, slot] = patched
        return act
    return (r.hook_name(), hook)
