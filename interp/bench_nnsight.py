"""nnsight beside TransformerLens in `interp bench`: the same activation-patching sweep.

Per-head activation patching, all positions, denoising (each head's clean output patched
into the corrupted run), with nnsight's tracing on the HF model under the bridge
(`model.original_model`): one trace saves every layer's clean attention-output-projection
input (the heads' concatenated `z`), then one trace per head writes the head's slice into
the corrupted run and saves the logits at the read positions only. The result is
mean(metric(patched) - metric(corrupted)) per head, interp's and TransformerLens' convention.
nnsight is optional (`pip install -e .[bench]`); without it the row is skipped.

Example:
    >>> scores = nnsight_act_patch_heads(model, batch)  # [n_layers, n_heads]
"""

import importlib.util

import torch


def nnsight_missing() -> str | None:
    """Why the nnsight row cannot run (None: nnsight is installed)."""
    if importlib.util.find_spec("nnsight") is None:
        return "skipped: nnsight is not installed (pip install -e .[bench])"
    return None


def _envoy(root, module, hf) -> object:
    """The nnsight envoy of `module` (a submodule of the HF model `hf`)."""
    names = {id(m): name for name, m in hf.named_modules()}
    envoy = root
    for part in names[id(module)].split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def nnsight_act_patch_heads(model, batch) -> torch.Tensor:
    """Every head's denoising activation-patching effect, traced with nnsight."""
    from nnsight import NNsight

    hf = model.original_model
    traced = NNsight(hf)
    cfg = model.cfg
    outs = [_envoy(traced, model.blocks[la].attn.o, hf) for la in range(cfg.n_layers)]
    rows = torch.arange(len(batch))
    read = batch.read_positions
    clean = batch.clean_tokens.to(cfg.device)
    corrupted = batch.corrupted_tokens.to(cfg.device)
    result = torch.zeros(cfg.n_layers, cfg.n_heads)
    z_clean: list = []
    with torch.no_grad():
        with traced.trace(clean):
            for o in outs:
                z_clean.append(o.input.save())
        with traced.trace(corrupted):
            base = traced.output.logits[rows, read].save()
        base_metric = batch.metric(base)
        for layer in range(cfg.n_layers):
            for head in range(cfg.n_heads):
                cols = slice(head * cfg.d_head, (head + 1) * cfg.d_head)
                with traced.trace(corrupted):
                    outs[layer].input[:, :, cols] = z_clean[layer][:, :, cols]
                    logits = traced.output.logits[rows, read].save()
                result[layer, head] = (batch.metric(logits) - base_metric).mean().cpu()
    return result
