"""Hook-based interventions on a `TransformerBridge`.

Every intervention is one mechanism: at a node's hook (`hook_z` for a head, `hook_mlp_out`
for an MLP, `hook_resid_pre`/`hook_resid_post` for the residual stream) it replaces or adds
a value, at all positions or at chosen ones. Ablations only differ in the value:

- zero: zeros;
- mean: the mean over a reference batch, per position;
- resample: the reference batch's activations in a seeded random order;
- patch: the activations of another run (a cache).

Hooks are attached for one `with` block and always removed, also when the forward raises.

Example:
    >>> model = load_model("random:tiny")
    >>> tokens = model.to_tokens("When Mary and John went to the store")
    >>> ivs = [zero_ablate("L1H2"), add_to_resid(1, position=-1, vector=torch.ones(64))]
    >>> logits = run_with_interventions(model, tokens, ivs)
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.nodes import Head, Mlp, Node, model_node

# None: all positions; an int or a list of ints: the same positions in every prompt;
# a LongTensor [batch]: one position per prompt (e.g. each prompt's END under right padding).
Positions = None | int | Sequence[int] | Int[Tensor, " batch"]


@dataclass
class Intervention:
    """Replace (or add to) an activation at a hook.

    Attributes:
        hook_name: the TransformerLens hook, e.g. "blocks.3.attn.hook_z".
        value: broadcastable to the selected activation `[batch, pos, d]` (a head's slice of
            `hook_z` is `[batch, pos, d_head]`); for per-prompt positions `[batch, d]` or `[d]`.
        head: the query-head index for `hook_z`, else None.
        positions: see `Positions`.
        mode: "replace" or "add".
        label: a human name, e.g. "mean-ablate L9H9".
    """

    hook_name: str
    value: Tensor | Callable[[Tensor], Tensor]
    head: int | None = None
    positions: Positions = None
    mode: str = "replace"
    label: str = ""

    def __call__(self, act: Tensor, hook=None) -> Tensor:
        target = act[:, :, self.head] if self.head is not None else act  # [batch, pos, d]
        value = self.value(target) if callable(self.value) else self.value
        value = value.to(target.dtype).to(target.device)
        act = act.clone()
        view = act[:, :, self.head] if self.head is not None else act
        _write(view, value, self.positions, self.mode)
        return act


def _write(view: Float[Tensor, "batch pos d"], value: Tensor, positions: Positions, mode: str):
    if value.dim() == 3:  # a per-position source [batch or 1, pos, d]: align it with `view`
        value = value.expand(view.shape[0], -1, -1)
    if positions is None:
        idx = (slice(None), slice(None))
    elif isinstance(positions, Tensor):
        if positions.shape != (view.shape[0],):
            raise ValueError(f"per-prompt positions must have shape [batch]={view.shape[0]}, "
                             f"got {tuple(positions.shape)}")
        idx = (torch.arange(view.shape[0], device=view.device), positions.to(view.device))
    else:
        idx = (slice(None), [positions] if isinstance(positions, int) else list(positions))
    if value.dim() == 3:
        value = value[idx]
    if mode == "replace":
        view[idx] = value
    elif mode == "add":
        view[idx] = view[idx] + value
    else:
        raise ValueError(f"mode must be 'replace' or 'add', got '{mode}'")


def _node_target(node: Node) -> tuple[str, int | None]:
    return node.hook_name, node.head if isinstance(node, Head) else None


def _resolve(model, node: Node | str) -> Node:
    return model_node(model, node) if model is not None else _parse(node)


def _parse(node: Node | str) -> Node:
    from interp.nodes import parse_node

    return parse_node(node) if isinstance(node, str) else node


def zero_ablate(node: Node | str, positions: Positions = None, model=None) -> Intervention:
    """Set a head's (or MLP's) output to zero. Pass `model` to range-check the node."""
    node = _resolve(model, node)
    hook, head = _node_target(node)
    return Intervention(hook, lambda t: torch.zeros_like(t), head, positions,
                        label=f"zero-ablate {node}")


def node_activation(cache, node: Node) -> Float[Tensor, "batch pos d"]:
    """A node's activation from an `ActivationCache` (a head's slice of hook_z)."""
    hook, head = _node_target(node)
    act = cache[hook]
    return act[:, :, head] if head is not None else act


def mean_ablate(node: Node | str, reference_cache, positions: Positions = None,
                model=None) -> Intervention:
    """Replace with the per-position mean over the reference batch (needs equal seq length)."""
    node = _resolve(model, node)
    hook, head = _node_target(node)
    mean = node_activation(reference_cache, node).mean(0, keepdim=True)  # [1, pos, d]
    return Intervention(hook, _same_length(mean, str(node)), head, positions,
                        label=f"mean-ablate {node}")


def resample_ablate(node: Node | str, reference_cache, seed: int = 0,
                    positions: Positions = None, model=None) -> Intervention:
    """Replace each prompt's activation with that of a random reference prompt (seeded)."""
    node = _resolve(model, node)
    hook, head = _node_target(node)
    ref = node_activation(reference_cache, node)
    gen = torch.Generator().manual_seed(seed)

    def value(target: Tensor) -> Tensor:
        picks = torch.randint(0, ref.shape[0], (target.shape[0],), generator=gen)
        return _same_length(ref[picks], str(node))(target)

    return Intervention(hook, value, head, positions, label=f"resample-ablate {node}")


def patch_node(node: Node | str, source_cache, positions: Positions = None,
               model=None) -> Intervention:
    """Replace with the same node's activation from another run (same batch and length)."""
    node = _resolve(model, node)
    hook, head = _node_target(node)
    src = node_activation(source_cache, node)
    return Intervention(hook, _same_length(src, str(node)), head, positions,
                        label=f"patch {node}")


def ablate_mlp(layer: int, kind: str = "zero", reference_cache=None,
               positions: Positions = None, model=None) -> Intervention:
    """Zero- or mean-ablate the output of MLP `layer`."""
    if kind == "zero":
        return zero_ablate(Mlp(layer), positions, model)
    if kind == "mean":
        if reference_cache is None:
            raise ValueError("mean ablation needs reference_cache (a run_with_cache result)")
        return mean_ablate(Mlp(layer), reference_cache, positions, model)
    raise ValueError(f"kind must be 'zero' or 'mean', got '{kind}'")


def set_mlp_out(layer: int, vector: Float[Tensor, " d_model"], positions: Positions = -1,
                model=None) -> Intervention:
    """Replace MLP `layer`'s output with a fixed vector at the given positions."""
    node = _resolve(model, Mlp(layer))
    return Intervention(node.hook_name, vector, None, positions, label=f"set {node}")


RESID_POINTS = ("resid_pre", "resid_mid", "resid_post")


def _resid_hook(layer: int, where: str) -> str:
    if where not in RESID_POINTS:
        raise ValueError(f"where must be resid_pre, resid_mid or resid_post, got '{where}'")
    return f"blocks.{layer}.hook_{where}"


def add_to_resid(layer: int, position: Positions, vector: Float[Tensor, " d_model"],
                 where: str = "resid_pre") -> Intervention:
    """Add a vector to the residual stream before (`resid_pre`) or after a block."""
    return Intervention(_resid_hook(layer, where), vector, None, position, "add",
                        label=f"add to {where} {layer}")


def patch_resid(layer: int, position: Positions, value: Tensor,
                where: str = "resid_pre") -> Intervention:
    """Set the residual stream at (layer, position) to a value."""
    return Intervention(_resid_hook(layer, where), value, None, position,
                        label=f"patch {where} {layer}")


def _same_length(value: Tensor, label: str) -> Callable[[Tensor], Tensor]:
    def check(target: Tensor) -> Tensor:
        if value.shape[1] != target.shape[1]:
            raise ValueError(
                f"{label}: reference activations have {value.shape[1]} positions but the input "
                f"has {target.shape[1]}; use prompts of equal token length (same template) or "
                "pass explicit positions.")
        return value
    return check


@contextmanager
def applied(model, interventions: Sequence[Intervention]) -> Iterator[None]:
    """Attach the interventions' hooks for the duration of a `with` block.

    The hooks are removed on exit, also when the body raises.
    """
    fwd_hooks = [(iv.hook_name, iv) for iv in interventions]
    with model.hooks(fwd_hooks=fwd_hooks):
        yield


def run_with_interventions(
    model, tokens: Int[Tensor, "batch pos"], interventions: Sequence[Intervention]
) -> Float[Tensor, "batch pos d_vocab"]:
    """Forward `tokens` with the interventions applied; returns the logits."""
    with applied(model, interventions):
        return model(tokens)
