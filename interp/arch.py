"""The architecture seam: the one place that knows how a model family computes a block.

The fast exact sweeps (`interp.patching.sparse`, `activation`, `path`, the EAP edge gradients
in `interp.attribution`, `interp.mean_ablation`, `interp.dla`) drive blocks from their weights.
Everything family-specific they need is a method of a `Family`:

- the attention input norm (`attn_input`) and the MLP's input norm and gradient point
  (`mlp_norm`, `mlp_input_hook`); norms run as `F.layer_norm` where the block wraps an
  `nn.LayerNorm` and as `F.rms_norm` where it wraps a Llama-form RMSNorm (`Family.norm`,
  `fast_norm`), the bridge's module otherwise;
- the block step (`block_step`): sequential `mid = x + a; out = mid + mlp(ln2(mid))`, parallel
  `out = x + a + mlp(ln(x))` (GPT-J, GPT-NeoX/Pythia), or with post-norms around attention and
  MLP outputs (Gemma 2);
- where a head's output enters the residual stream (`head_step`, `attn_out_hook`): the raw
  attention output, before any post-norm;
- rotary embedding: none, rotate-half (Llama, NeoX; partial when the tables are shorter than a
  head) or interleaved (GPT-J), with the tables (base, scaling such as Llama 3's) taken from
  the HF rotary module's output, and the attention scale from the HF attention module;
- KV grouping (`n_kv_heads`), q/k/v biases (the bridge's `b_Q`.. when present), q/k norms
  (Qwen3); attention-logit soft-capping and sliding windows (Gemma 2, Mistral);
- the final logit soft-capping that `metric_from_resid` needs (Gemma 2).

`family_of(model)` returns the family of a loaded bridge, or None: then every sweep takes the
general path (`interp.patching.general`), one hooked forward of the bridge per patch, which
is exact for any model the bridge loads.

Adding a family = one `Family(...)` entry in `FAMILIES` plus one entry in
`tests/tiny_families.py` (a tiny random config of its HF class); the parametrized tests in
`tests/test_arch_families.py` then hold it to the naive references.

Example:
    >>> fam = family_of(model)      # e.g. Family(name="gpt-neox", parallel=True, ...)
    >>> fam.block_step(model, 3, resid_pre, attn_out)  # resid_post of block 3
"""

from __future__ import annotations  # hints stay strings: `interp models` lists the families

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it runs, so that the family table stays light
    from jaxtyping import Float
    from torch import Tensor


@dataclass(frozen=True)
class Family:
    """How one model family computes a decoder block (see the module docstring)."""

    name: str
    hf_classes: tuple[str, ...]
    parallel: bool = False  # out = x + attn(ln1 x) + mlp(ln2 x)
    shared_norm: bool = False  # parallel block whose MLP reads ln1 too (GPT-J)
    post_norms: bool = False  # Gemma 2: ln1_post(attn) and ln2_post(mlp) before the adds
    rotary: str | None = "half"  # "half" (rotate_half), "interleaved" (GPT-J) or None
    sin_first: bool = False  # the HF blocks get (sin, cos) instead of (cos, sin)
    qk_norm: bool = False  # per-head norms of q and k before the rotary (Qwen3)

    # -- norms and the block step -------------------------------------------------------
    def norm(self, model, layer: int, name: str):
        """Block `layer`'s norm `name` ("ln1", "ln2", ..) as a function (`fast_norm`)."""
        return fast_norm(getattr(model.blocks[layer], name))

    def attn_input(self, model, layer: int, x: Tensor) -> Tensor:
        return self.norm(model, layer, "ln1")(x)

    def mlp_norm(self, model, layer: int):
        block = model.blocks[layer]
        return block.ln1 if self.shared_norm else block.ln2

    def mlp_input_hook(self, layer: int) -> str:
        """The residual the MLP's norm reads: the EAP gradient point of an MLP receiver."""
        return f"blocks.{layer}.hook_resid_{'pre' if self.parallel else 'mid'}"

    def attn_out_hook(self, layer: int) -> str:
        """The raw attention output (sum of heads + b_O), before any post-norm."""
        return f"blocks.{layer}.{'attn.hook_out' if self.post_norms else 'hook_attn_out'}"

    def block_step(self, model, layer: int, x: Float[Tensor, "... d"],
                   attn: Float[Tensor, "... d"], mlp=None) -> Float[Tensor, "... d"]:
        """resid_post of block `layer` from resid_pre `x` and its raw attention output.

        `mlp`, when given, stands in for the block's MLP (input: the normed residual; output:
        what `hook_mlp_out` sees), e.g. one that skips the rows whose output an ablation
        replaces anyway."""
        mlp = self.mlp(model, layer) if mlp is None else mlp
        if self.parallel:
            return x + attn + mlp(fast_norm(self.mlp_norm(model, layer))(x))
        ln2 = self.norm(model, layer, "ln2")
        if self.post_norms:
            mid = x + self.norm(model, layer, "ln1_post")(attn)
            return mid + self.norm(model, layer, "ln2_post")(mlp(ln2(mid)))
        mid = x + attn
        return mid + mlp(ln2(mid))

    def head_step(self, model, layer: int, at, delta: Tensor) -> Tensor:
        """resid_post of block `layer` when its attention output changes by `delta`.

        `at(hook)` reads a cached activation of the base run at the rows/positions in use.
        """
        if self.parallel:  # the MLP does not see the attention output
            return at(f"blocks.{layer}.hook_resid_post") + delta
        if self.post_norms:
            return self.block_step(model, layer, at(f"blocks.{layer}.hook_resid_pre"),
                                   at(self.attn_out_hook(layer)) + delta)
        mid = at(f"blocks.{layer}.hook_resid_mid") + delta
        return mid + self.mlp(model, layer)(self.norm(model, layer, "ln2")(mid))

    def mlp(self, model, layer: int):
        """Block `layer`'s MLP as a function of its normed input (`fused_mlp`)."""
        return fused_mlp(model.blocks[layer].mlp)

    def cached_hooks(self) -> tuple[str, ...]:
        """Hook-name endings the sweeps read from the cached runs, beyond the common ones."""
        return ("attn.hook_out",) if self.post_norms else ()

    # -- attention ------------------------------------------------------------------------
    def scale(self, model, layer: int) -> float:
        return _hf_attn(model, layer).scaling

    def softcap(self, model, layer: int) -> float | None:
        return getattr(_hf_attn(model, layer), "attn_logit_softcapping", None)

    def window(self, model, layer: int) -> int | None:
        """Sliding window of this layer's attention (None: full causal attention)."""
        attn = _hf_attn(model, layer)
        if hasattr(attn, "sliding_window"):
            return attn.sliding_window
        if getattr(attn, "layer_type", None) == "full_attention":
            return None
        return getattr(model.original_model.config, "sliding_window", None)

    def normed(self, model, layer: int, kind: str,
               x: Float[Tensor, "... heads d_head"]) -> Tensor:
        """q or k after the family's per-head norm (identity without q/k norms)."""
        if not self.qk_norm or kind == "v":
            return x
        return getattr(_hf_attn(model, layer), f"{kind}_norm")(x)

    def rotary_tables(self, kwargs: dict) -> tuple[Tensor | None, Tensor | None]:
        """(cos, sin) [batch or 1, pos, rot] from the captured block kwargs."""
        tables = kwargs.get("position_embeddings") if self.rotary else None
        if tables is None:
            return None, None
        return (tables[1], tables[0]) if self.sin_first else tuple(tables)

    def rotate(self, x: Float[Tensor, "n heads d_head"], cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary embedding of vectors whose per-row tables are cos, sin [n, 1, rot]."""
        import torch

        if self.rotary == "interleaved":
            cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
        rot = cos.shape[-1]
        part, rest = (x, None) if rot == x.shape[-1] else (x[..., :rot], x[..., rot:])
        if self.rotary == "interleaved":
            turned = torch.stack((-part[..., 1::2], part[..., ::2]), -1).flatten(-2)
        else:
            half = rot // 2
            turned = torch.cat((-part[..., half:], part[..., :half]), -1)
        out = part * cos + turned * sin
        return out if rest is None else torch.cat((out, rest), -1)

    # -- unembedding ------------------------------------------------------------------------
    def logit_softcap(self, model) -> float | None:
        cap = getattr(model.cfg, "output_logits_soft_cap", None)
        return cap if cap is not None and cap > 0 else None


class StackedWeights:
    """The bridge's weights stacked over layers (`W_Q` [layers, heads, d_model, d_head], ..
    `b_O`, `W_U`), each read from the bridge once, on first use; None for a parameter the
    model lacks (a bias-free projection).

    Every read of a stacked property of the bridge (`model.W_O`) copies all layers' weights
    anew (~45 ms on SmolLM2), so `model.W_O[layer]` in a loop over layers or heads costs
    that each time (~2,300 reads, ~100 s, in one `interp discover` before this existed).
    Make one per computation, not per model: weights edited in place (`p.data.zero_()`
    bumps no version counter) would go unseen by a longer-lived cache.

    Example:
        >>> w = StackedWeights(model)
        >>> w["W_O"][3].shape  # [heads, d_head, d_model]
    """

    def __init__(self, model):
        self.model, self._read = model, {}

    def __getitem__(self, name: str) -> Tensor | None:
        if name not in self._read:
            self._read[name] = getattr(self.model, name, None)
        return self._read[name]


# HF activations written as elementwise Python (GPT-2's and GPT-J's `gelu_new`: five passes
# over the [tokens, d_mlp] hidden layer) that torch computes as one kernel, the same function
# up to float rounding (tests/test_arch.py): about 30% of a GPT-2 MLP's time.
_ONE_KERNEL = {"NewGELUActivation": "tanh", "FastGELUActivation": "tanh"}
# (input map, output map) of the two-layer MLPs whose forward is out(act(in(x))) in eval mode
_MLP_MAPS = (("c_fc", "c_proj"), ("fc_in", "fc_out"))


def fused_mlp(bridge_mlp):
    """`bridge_mlp` (a block's MLP) as a function of its normed input, with the activation
    computed by torch's fused kernel where HF writes it elementwise; the MLP itself otherwise.

    The bridge's own MLP hooks (`mlp.hook_in`, `mlp.hook_out`) do not fire in the fused
    version: the engine's callers read and replace MLP outputs themselves (`MlpOut`).

    Example:
        >>> f = fused_mlp(model.blocks[0].mlp)   # GPT-2: c_proj(gelu_tanh(c_fc(x)))
        >>> torch.allclose(f(x), model.blocks[0].mlp(x), atol=1e-6)
        True
    """
    import torch
    import torch.nn.functional as F

    hf = getattr(bridge_mlp, "original_component", None)
    approximate = _ONE_KERNEL.get(type(getattr(hf, "act", None)).__name__)
    maps = next((m for m in _MLP_MAPS if all(hasattr(hf, n) for n in m)), None)
    if approximate is None or maps is None or hf.training:
        return bridge_mlp
    first, second = (getattr(hf, n) for n in maps)

    def run(x: Tensor) -> Tensor:
        h = first(x)
        if h.requires_grad:  # autograd keeps the pre-activation for the backward
            return second(F.gelu(h, approximate=approximate))
        # in place: one [tokens, d_mlp] buffer fewer to allocate (and fault in) per call
        return second(torch.ops.aten.gelu_(h, approximate=approximate))
    return run


# HF RMSNorms whose forward is Llama's: weight * (x * rsqrt(mean(x^2) + variance_epsilon)),
# computed in float32 (tests/test_arch_families.py checks each one's source against Llama's)
LLAMA_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def fast_norm(bridge_norm):
    """`bridge_norm` (a block's norm) as a function: `F.layer_norm` with its weights where it
    wraps an `nn.LayerNorm` (GPT-2, GPT-J, GPT-NeoX), `F.rms_norm` where it wraps a Llama-form
    RMSNorm (`LLAMA_RMS_NORMS`: Llama, Mistral, Qwen2, Qwen3) and the input is float32; the
    bridge module itself otherwise (Gemma's 1 + weight, a norm in training mode).

    The bridge computes a LayerNorm as eight elementwise passes in Python (mean, subtract,
    square, mean, add, sqrt, divide, scale); the fused kernel is the same function up to float
    rounding (about 1e-6, tests/test_arch_families.py) in one pass, about 7x faster. An
    RMSNorm's bridge computes its hook values and then calls HF's module (five passes);
    `F.rms_norm` gives HF's result (bit for bit on SmolLM2's norms) about 4x faster. As with
    `fused_mlp`, the bridge's norm hooks do not fire in the fast version.

    Example:
        >>> f = fast_norm(model.blocks[0].ln1)   # GPT-2: F.layer_norm(x, (768,), w, b, 1e-5)
        >>> torch.allclose(f(x), model.blocks[0].ln1(x), atol=1e-5)
        True
    """
    import torch
    import torch.nn.functional as F

    hf = getattr(bridge_norm, "original_component", None)
    if type(hf).__name__ in LLAMA_RMS_NORMS and not hf.training:
        return _rms_norm(bridge_norm, hf)
    if (type(hf) is not torch.nn.LayerNorm or hf.training or not hf.elementwise_affine
            or getattr(bridge_norm, "uses_rms_norm", False)
            or getattr(bridge_norm, "uses_weight_offset", False)):
        return bridge_norm
    eps = getattr(getattr(bridge_norm, "config", None), "eps", hf.eps)
    return lambda x: F.layer_norm(x, hf.normalized_shape, hf.weight, hf.bias, eps)


def _rms_norm(bridge_norm, hf):
    import torch
    import torch.nn.functional as F

    def run(x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or hf.weight.dtype != torch.float32:
            return bridge_norm(x)  # HF casts back to the input dtype before the weight
        return F.rms_norm(x, hf.weight.shape, hf.weight, hf.variance_epsilon)
    return run


def _hf_attn(model, layer: int):
    return model.blocks[layer].attn.original_component


FAMILIES: tuple[Family, ...] = (
    Family("gpt2", ("GPT2LMHeadModel",), rotary=None),
    Family("gpt-j", ("GPTJForCausalLM",), parallel=True, shared_norm=True,
           rotary="interleaved", sin_first=True),
    Family("gpt-neox", ("GPTNeoXForCausalLM",), parallel=True),
    Family("llama", ("LlamaForCausalLM",)),
    Family("mistral", ("MistralForCausalLM",)),
    Family("qwen2", ("Qwen2ForCausalLM",)),
    Family("qwen3", ("Qwen3ForCausalLM",), qk_norm=True),
    Family("gemma", ("GemmaForCausalLM",)),
    Family("gemma2", ("Gemma2ForCausalLM",), post_norms=True),
)


# Tensor names of the input embedding and the unembedding in a HF checkpoint, per HF class:
# `interp.models.light` reads them from the safetensors without building the model. A base-
# model prefix ("transformer.") may be absent in the file (GPT-2's hub checkpoint).
_EMBED_TOKENS = ("model.embed_tokens.weight", "lm_head.weight")
EMBEDDING_KEYS: dict[str, tuple[str, str]] = {
    "GPT2LMHeadModel": ("transformer.wte.weight", "lm_head.weight"),
    "GPTJForCausalLM": ("transformer.wte.weight", "lm_head.weight"),
    "GPTNeoXForCausalLM": ("gpt_neox.embed_in.weight", "embed_out.weight"),
    **{name: _EMBED_TOKENS for name in ("LlamaForCausalLM", "MistralForCausalLM",
                                        "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                        "GemmaForCausalLM", "Gemma2ForCausalLM")},
}


def family_table() -> list[tuple[str, str, str]]:
    """(family, HF classes, path) for `interp models`: every fast family, then the rest."""
    rows = [(f.name, ", ".join(f.hf_classes), "fast") for f in FAMILIES]
    rows.append(("any other", "every decoder TransformerBridge loads", "general"))
    return rows


ONE_PLUS_WEIGHT_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


def norm_gain(norm) -> tuple[Tensor, Tensor | None]:
    """(gain, bias) a norm applies after dividing by its scale: Gemma's RMSNorms multiply
    by 1 + weight, every other norm by its weight."""
    comp = getattr(norm, "_original_component", norm)
    weight, bias = comp.weight, getattr(comp, "bias", None)
    return (1 + weight if type(comp).__name__ in ONE_PLUS_WEIGHT_NORMS else weight), bias


def architecture(model) -> str:
    """The HF class name of the bridge's original model, e.g. "LlamaForCausalLM"."""
    return type(getattr(model, "original_model", None)).__name__


def family_of(model) -> Family | None:
    """The fast-engine family of a bridge, or None when only the general path is exact."""
    arch = architecture(model)
    family = next((f for f in FAMILIES if arch in f.hf_classes), None)
    if family is None:
        return None
    if getattr(_hf_attn(model, 0), "scale_attn_by_inverse_layer_idx", False):
        return None  # GPT-2 variant with a per-layer attention scale
    if family.parallel != bool(getattr(model.cfg, "parallel_attn_mlp", family.parallel)):
        return None  # e.g. GPT-NeoX with use_parallel_residual=False
    return family


def mlp_input(model, layer: int) -> tuple[object, str]:
    """(norm module, residual hook) of the MLP's input: where an MLP receiver's EAP gradient
    is taken. Known families answer exactly; other bridges by their block layout (a
    `hook_resid_mid` means attention then MLP; parallel blocks read `hook_resid_pre`)."""
    family = family_of(model)
    if family is not None:
        return family.mlp_norm(model, layer), family.mlp_input_hook(layer)
    block = model.blocks[layer]
    sequential = (f"blocks.{layer}.hook_resid_mid" in model.hook_dict
                  and not getattr(model.cfg, "parallel_attn_mlp", False))
    norm = getattr(block, "ln2", None)
    if norm is None and not sequential:
        norm = getattr(block, "ln1", None)
    point = f"blocks.{layer}.hook_resid_{'mid' if sequential else 'pre'}"
    return (_identity() if norm is None else norm), point


def attn_norm(model, layer: int):
    """The norm the attention's q/k/v projections read (identity for OLMo 2's post-norm
    blocks, which have none)."""
    norm = getattr(model.blocks[layer], "ln1", None)
    return _identity() if norm is None else norm


def _identity():
    import torch

    return torch.nn.Identity()


def slow_reason(model) -> str | None:
    """Why the general path runs on this model (None when the fast engine serves it)."""
    if family_of(model) is not None:
        return None
    arch = architecture(model)
    known = [f for f in FAMILIES if arch in f.hf_classes]
    detail = ("a variant the fast engine does not reproduce" if known
              else "not one of the fast-engine families")
    return f"{arch} is {detail} (interp.arch)"


_NOTIFIED: set[str] = set()


def notify_slow(model, what: str) -> None:
    """Print, once per architecture, the one-line notice that the general path runs."""
    import sys

    reason = slow_reason(model)
    key = architecture(model)
    if reason is not None and key not in _NOTIFIED:
        _NOTIFIED.add(key)
        print(f"[interp] {what}: general path (one hooked forward per patch, exact but "
              f"slower): {reason}", file=sys.stderr)
