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


class EdgeGraph:
    """The complete edge graph of a model shape, with an index for every sender and receiver.

    Senders (columns): EMBED, then per layer its heads and its MLP. Receivers (rows): per layer
    the q of every head, the k of every head, the v of every head (all per QUERY head), the
    MLP; then LOGITS. In parallel blocks (GPT-J, GPT-NeoX) a layer's heads do not write into
    its own MLP; in sequential blocks they do.

    Example:
        >>> graph = EdgeGraph(n_layers=2, n_heads=4, parallel=False)
        >>> graph.sender_index(Head(1, 2)), graph.receiver_index(Head(1, 2), "k")
        (8, 19)
        >>> len(graph.edges())  # 1 + 2 x 13 receivers, each from every earlier sender
        110
    """

    def __init__(self, n_layers: int, n_heads: int, parallel: bool):
        self.n_layers, self.n_heads, self.parallel = n_layers, n_heads, parallel
        self.per_layer = 3 * n_heads + 1  # receivers of one layer: q, k, v heads and the MLP
        self.n_senders = 1 + n_layers * (n_heads + 1)
        self.n_receivers = n_layers * self.per_layer + 1
        self.logits_index = self.n_receivers - 1

    @classmethod
    def of(cls, model) -> "EdgeGraph":
        """The graph of a loaded bridge (parallel blocks from `interp.arch`)."""
        from interp.arch import family_of

        family = family_of(model)
        parallel = (family.parallel if family is not None
                    else bool(getattr(model.cfg, "parallel_attn_mlp", False)))
        return cls(model.cfg.n_layers, model.cfg.n_heads, parallel)

    # -- senders ----------------------------------------------------------------------------
    def sender_index(self, sender: Sender) -> int:
        if sender == EMBED:
            return 0
        self._check_layer(sender)
        if isinstance(sender, Head):
            self._check_head(sender)
            return 1 + sender.layer * (self.n_heads + 1) + sender.head
        return 1 + sender.layer * (self.n_heads + 1) + self.n_heads

    def sender_slot(self, index: int) -> tuple[int, int]:
        """(layer, slot) of a sender index: slot n_heads is the MLP; the embeddings are
        (-1, 0)."""
        return (-1, 0) if index == 0 else divmod(index - 1, self.n_heads + 1)

    def sender(self, index: int) -> Sender:
        if index == 0:
            return EMBED
        layer, slot = self.sender_slot(index)
        return Mlp(layer) if slot == self.n_heads else Head(layer, slot)

    def senders_before(self, layer: int, mlp: bool = False) -> int:
        """How many senders (a prefix of the columns) a receiver of `layer` can read: the
        attention reads layers < layer; a sequential block's MLP also reads its own heads."""
        n = 1 + layer * (self.n_heads + 1)
        return n + self.n_heads if mlp and not self.parallel else n

    # -- receivers --------------------------------------------------------------------------
    def receiver_index(self, receiver: Receiver, input: str | None = None) -> int:
        if receiver == LOGITS:
            return self.logits_index
        self._check_layer(receiver)
        base = receiver.layer * self.per_layer
        if isinstance(receiver, Mlp):
            return base + 3 * self.n_heads
        self._check_head(receiver)
        return base + INPUTS.index(input) * self.n_heads + receiver.head

    def receiver(self, index: int) -> tuple[Receiver, str | None]:
        if index == self.logits_index:
            return LOGITS, None
        layer, slot = divmod(index, self.per_layer)
        if slot == 3 * self.n_heads:
            return Mlp(layer), None
        kind, head = divmod(slot, self.n_heads)
        return Head(layer, head), INPUTS[kind]

    def readable(self, receiver_index: int) -> int:
        """The number of senders (a prefix) that receiver can read."""
        if receiver_index == self.logits_index:
            return self.n_senders
        layer, slot = divmod(receiver_index, self.per_layer)
        return self.senders_before(layer, mlp=slot == 3 * self.n_heads)

    def index(self, edge: Edge) -> tuple[int, int]:
        """(receiver index, sender index) of an edge; ValueError when the graph lacks it."""
        r, s = self.receiver_index(edge.receiver, edge.input), self.sender_index(edge.sender)
        if s >= self.readable(r):
            raise ValueError(f"no edge {edge}: the sender is not computed before the receiver "
                             f"reads the residual stream")
        return r, s

    def edges(self) -> list[Edge]:
        """Every edge of the graph, receiver-major (the logits last)."""
        out = []
        for r in range(self.n_receivers):
            receiver, input = self.receiver(r)
            out.extend(Edge(self.sender(s), receiver, input) for s in range(self.readable(r)))
        return out

    def _check_layer(self, node) -> None:
        if not isinstance(node, (Head, Mlp)) or not 0 <= node.layer < self.n_layers:
            raise ValueError(f"{node!r} is not a node of this model (n_layers={self.n_layers})")

    def _check_head(self, head: Head) -> None:
        if not 0 <= head.head < self.n_heads:
            raise ValueError(f"{head}: head out of range (n_heads={self.n_heads})")


def all_edges(model) -> list[Edge]:
    """The complete graph of a loaded bridge: every edge (sender, receiver, input)."""
    return EdgeGraph.of(model).edges()
