"""Driving the bridge's blocks by hand, to resume a forward pass at any layer.

`TransformerBridge.forward(start_at_layer=k)` still runs blocks 0..k-1, so it saves no compute.
Instead we capture the keyword arguments the HF model passes to its decoder blocks (attention
mask, rotary embeddings, ...) once, and call `model.blocks[l]` ourselves from a cached
residual stream. The bridge's hook points inside the blocks still fire, so interventions apply.

Example:
    >>> kw = block_kwargs(model, tokens)
    >>> _, cache = model.run_with_cache(tokens)
    >>> resid = run_blocks(model, cache["blocks.5.hook_resid_pre"], 5, kw)
    >>> logits = unembed(model, resid)  # equals model(tokens)
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor


class _Captured(Exception):
    pass


def block_kwargs(model, tokens: Int[Tensor, "batch pos"]) -> dict:
    """The keyword arguments block 0 receives on `tokens` (no KV cache).

    Only embeddings run: the forward stops as soon as block 0 is entered. Models whose
    layers differ in their inputs (Gemma 2's alternating sliding/full attention masks) get
    one full forward instead, and every block's own kwargs under "_per_layer".
    """
    per_layer = len(set(_layer_types(model))) > 1
    captured: list[dict] = []

    def grab(module, args, kwargs):
        captured.append(_without_cache(kwargs))
        if not per_layer:
            raise _Captured

    handles = [block.register_forward_pre_hook(grab, with_kwargs=True)
               for block in (model.blocks if per_layer else model.blocks[:1])]
    try:
        with torch.no_grad():
            model(tokens)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    out = dict(captured[0])
    if per_layer:
        out["_per_layer"] = captured
    return out


def _layer_types(model) -> list:
    """The HF config's per-layer attention types (e.g. sliding/full), [] when uniform."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    return list(getattr(config, "layer_types", None) or [])


def _without_cache(kwargs: dict) -> dict:
    captured = dict(kwargs)
    for key in ("cache", "past_key_value", "past_key_values", "layer_past"):
        if key in captured:
            captured[key] = None
    if "use_cache" in captured:
        captured["use_cache"] = False
    return captured


def repeat_kwargs(kwargs: dict, batch: int, repeats: int) -> dict:
    """Tile the batch dimension of every captured tensor `repeats` times (block-major)."""
    def tile(value):
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch > 1:
            return value.repeat(repeats, *([1] * (value.dim() - 1)))
        if isinstance(value, tuple):
            return tuple(tile(v) for v in value)
        if isinstance(value, list):  # "_per_layer"
            return [repeat_kwargs(v, batch, repeats) for v in value]
        return value
    return {k: tile(v) for k, v in kwargs.items()} if repeats > 1 else kwargs


def run_blocks(
    model,
    resid: Float[Tensor, "batch pos d_model"],
    start: int,
    kwargs: dict,
    stop: int | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Run blocks `start..stop-1` (default: to the end) on a residual stream."""
    stop = model.cfg.n_layers if stop is None else stop
    per_layer = kwargs.get("_per_layer")
    for layer in range(start, stop):
        kw = per_layer[layer] if per_layer is not None else kwargs
        out = model.blocks[layer](resid, **{k: v for k, v in kw.items() if k != "_per_layer"})
        resid = out[0] if isinstance(out, tuple) else out
    return resid


def at_least_float32(x: Tensor) -> Tensor:
    """Metrics and their estimates are accumulated in float32 (float64 when the model runs
    in it), whatever the model's dtype (bfloat16/float16 on GPUs)."""
    return x if x.dtype == torch.float64 else x.float()


def unembed(
    model, resid: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """Final norm + unembedding of residual vectors (any leading shape), then the
    architecture's post-unembedding transform when it declares one (Gemma 2's logit
    soft-capping, Cohere's and Granite's logit scales), as the model's forward applies it."""
    logits = model.unembed(model.ln_final(resid))
    return output_transform(model)(logits)


def output_transform(model):
    """The bridge adapter's logits transform (identity for most architectures)."""
    adapter = getattr(model, "adapter", None)
    return getattr(adapter, "apply_output_logits_transform", None) or (lambda logits: logits)


def linear_logits(model) -> bool:
    """True when the logits are an affine function of the final norm's output (no transform
    after the unembedding), so a logit difference can be read from two W_U columns."""
    adapter = getattr(model, "adapter", None)
    transform = getattr(type(adapter), "apply_output_logits_transform", None)
    if transform is None:
        return True
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    base = _base_transform()
    return transform is base and not (cap is not None and cap > 0)


def _base_transform():
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    return ArchitectureAdapter.apply_output_logits_transform
