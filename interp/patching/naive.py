"""Reference implementations: one full forward pass per patched item, hooks only.

Slow and obviously faithful to the definitions; the tests hold the fast sweeps to them.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from interp.metrics import logits_at
from interp.nodes import Head, all_heads
from interp.patching.activation import _base_source
from interp.patching.path import Receiver
from interp.patching.runs import Runs


def _metric(model, runs: Runs, logits) -> Tensor:
    return runs.batch.metric(logits_at(logits, runs.batch.read_positions))


def _tokens(runs: Runs, which: str) -> Tensor:
    b = runs.batch
    return b.clean_tokens if which == "clean" else b.corrupted_tokens


@torch.inference_mode()
def act_patch_heads_naive(model, runs: Runs, direction: str = "noise",
                          positions: str | None = None,
                          layers: list[int] | None = None) -> Float[Tensor, "layer head"]:
    """One forward per head; `layers` limits the sweep (rows of other layers stay 0)."""
    base, source = _base_source(direction)
    base_metric = runs.clean_metric if base == "clean" else runs.corrupted_metric
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
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
        out[head.layer, head.head] = (_metric(model, runs, logits) - base_metric).mean()
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


@torch.inference_mode()
def path_patch_naive(model, runs: Runs, senders: list[Head], receivers="logits") -> Tensor:
    out = torch.zeros(len(senders))
    clean = runs.batch.clean_tokens
    for i, sender in enumerate(senders):
        hooks = _freeze_hooks(model, runs, sender)
        if receivers == "logits":
            logits = model.run_with_hooks(clean, fwd_hooks=hooks)
        else:
            names = sorted({r.hook_name() for r in receivers})
            with model.hooks(fwd_hooks=hooks):
                _, cache = model.run_with_cache(clean, names_filter=names)
            logits = model.run_with_hooks(clean, fwd_hooks=_receiver_hooks(model, runs,
                                                                           receivers, cache))
        out[i] = (_metric(model, runs, logits) - runs.clean_metric).mean()
    return out


def _receiver_hooks(model, runs: Runs, receivers: list[Receiver], cache):
    rows = torch.arange(len(runs.batch))
    hooks = []
    for r in receivers:
        pos, slot = runs.batch.positions[r.position], r.slot(model)
        patched = cache[r.hook_name()][rows, pos, slot]

        def hook(act, hook=None, pos=pos, slot=slot, patched=patched):
            act = act.clone()
            act[rows, pos, slot] = patched
            return act
        hooks.append((r.hook_name(), hook))
    return hooks
