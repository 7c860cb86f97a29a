"""Edges of the computational graph: the unit of an edge-level circuit hypothesis.

Senders write into the residual stream: the token (and position) embeddings `EMBED`, every
attention head (`Head`, its own slice of `hook_z` times W_O) and every MLP (`Mlp`). Receivers
read from it: each head's q, k and v input (on GQA models, per QUERY head: only that head sees
a k/v edge's change), each MLP's input, and the logits (`LOGITS`). An edge (sender, receiver,
input) exists when the sender is computed before the receiver reads the stream (a head or MLP
of an earlier layer; in a sequential block a layer's heads also write to its own MLP).

An edge may be restricted to named positions of the task (`positions`, e.g. ("END",)): the
receiver reads the sender's real output only there, its ablated output elsewhere.

Example:
    >>> Edge(Head(20, 0), Head(23, 0), "q", ("END",))
    >>> Edge(EMBED, Mlp(0))
    >>> Edge(Head(23, 0), LOGITS)
    >>> str(Edge(Head(20, 0), Head(23, 0), "q"))
    'L20H0 -> L23H0.q'
"""

from dataclasses import dataclass

from interp.nodes import Head, Mlp, Node

EMBED = "embed"  # the sender of the embeddings (token + position)
LOGITS = "logits"  # the receiver of the final residual stream
INPUTS = ("q", "k", "v")

Sender = Node | str  # a Head, an Mlp or EMBED
Receiver = Node | str  # a Head (with input q/k/v), an Mlp or LOGITS


@dataclass(frozen=True)
class Edge:
    """sender -> receiver (input q/k/v for a head receiver, None otherwise), kept at
    `positions` (None: at every position)."""

    sender: Sender
    receiver: Receiver
    input: str | None = None
    positions: tuple[str, ...] | None = None

    def __post_init__(self):
        head = isinstance(self.receiver, Head)
        if head and self.input not in INPUTS:
            raise ValueError(f"edge into head {self.receiver} needs input q, k or v, "
                             f"got {self.input!r}")
        if not head and self.input is not None:
            raise ValueError(f"edge into {self.receiver} takes no input, got {self.input!r}")
        if self.sender != EMBED and not isinstance(self.sender, (Head, Mlp)):
            raise ValueError(f"edge sender must be a Head, an Mlp or '{EMBED}', "
                             f"got {self.sender!r}")
        if self.receiver != LOGITS and not isinstance(self.receiver, (Head, Mlp)):
            raise ValueError(f"edge receiver must be a Head, an Mlp or '{LOGITS}', "
                             f"got {self.receiver!r}")

    def __str__(self) -> str:
        target = f"{self.receiver}.{self.input}" if self.input else str(self.receiver)
        where = f" @{','.join(self.positions)}" if self.positions else ""
        return f"{self.sender} -> {target}{where}"
