"""Node names: `L{layer}H{head}` for attention heads, `MLP{layer}` for feed-forward blocks.

Example:
    >>> parse_node("L9H9")
    Head(layer=9, head=9)
    >>> format_node(Mlp(3))
    'MLP3'
"""

import re
from dataclasses import dataclass

from interp.errors import UserValueError

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
_MLP_RE = re.compile(r"^MLP(\d+)$")


@dataclass(frozen=True, order=True)
class Head:
    """An attention (query) head. On GQA models its output is its slice of `hook_z`."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.attn.hook_z"


@dataclass(frozen=True, order=True)
class Mlp:
    """A feed-forward block's output (`hook_mlp_out`)."""

    layer: int

    def __str__(self) -> str:
        return f"MLP{self.layer}"

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_mlp_out"


Node = Head | Mlp


class NodeError(UserValueError):
    """A node name is malformed or out of range for the model."""


def parse_node(name: str) -> Node:
    """Parse `L{l}H{h}` or `MLP{l}` (no range check; see `check_node`)."""
    text = name.strip()
    if m := _HEAD_RE.match(text):
        return Head(int(m.group(1)), int(m.group(2)))
    if m := _MLP_RE.match(text):
        return Mlp(int(m.group(1)))
    raise NodeError(f"'{name}' is not a node name: use L{{layer}}H{{head}} (e.g. L9H9) "
                    "or MLP{layer} (e.g. MLP3).")


def format_node(node: Node) -> str:
    """Inverse of `parse_node`."""
    return str(node)


def check_node(node: Node | str, n_layers: int, n_heads: int) -> Node:
    """Return the node if its indices exist in a model with this shape, else raise NodeError."""
    node = parse_node(node) if isinstance(node, str) else node
    if not 0 <= node.layer < n_layers:
        raise NodeError(f"{node}: layer {node.layer} out of range; this model has "
                        f"n_layers={n_layers} (valid 0..{n_layers - 1}).")
    if isinstance(node, Head) and not 0 <= node.head < n_heads:
        raise NodeError(f"{node}: head {node.head} out of range; this model has "
                        f"n_heads={n_heads} (valid 0..{n_heads - 1}).")
    return node


def model_node(model, node: Node | str) -> Node:
    """`check_node` against a TransformerBridge's `cfg`."""
    return check_node(node, model.cfg.n_layers, model.cfg.n_heads)


def all_heads(n_layers: int, n_heads: int) -> list[Head]:
    """Every head, layer-major (the order of `[layer][head]` result grids)."""
    return [Head(layer, head) for layer in range(n_layers) for head in range(n_heads)]
