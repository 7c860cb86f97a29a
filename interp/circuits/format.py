"""Circuit hypothesis files (YAML): named groups of nodes, optional positions and edges.

A file (documented in circuits/README.md):

    name: ioi-gpt2-small-paper
    ablation: mean                 # for everything outside the circuit: mean | resample | zero
    groups:
      name_movers:
        nodes: [L9H9, L9H6, L10H0]
        positions: [END]           # optional; omitted = all positions
      s_inhibition: [L7H3, L7H9]   # shorthand: a list of nodes, all positions
    edges:                         # optional: sender -> receiver, evaluated edge by edge
      - {from: s_inhibition, to: name_movers, input: q}        # group -> group: all pairs
      - {from: L7H3, to: L9H9, input: q, positions: [END]}     # node -> node
      - {from: embed, to: MLP0}                                # embeddings, MLPs, logits
      - {from: name_movers, to: logits}

An edge endpoint is a group, a node (L{layer}H{head}, MLP{layer}), `embed` (sender only)
or `logits` (receiver only); `input` (q, k or v; omitted: all three) applies to head
receivers. `CircuitSpec.edge_list` expands groups to node pairs; `kept_edges` adds the
edges the file leaves implicit (embeddings and MLPs stay connected, see circuits/README.md).

Every problem is reported as ONE line naming the file, the line number and the fix:
`circuits/x.yaml:7: unknown node 'L9X9': use L{layer}H{head} (e.g. L9H9) or MLP{layer}`.

Example:
    >>> spec = load_circuit("circuits/ioi_gpt2_small_paper.yaml", model=model)
    >>> spec.circuit()        # {Head(9, 9): ["END"], ...} for interp.circuit
    >>> write_circuit(spec, "copy.yaml")
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from interp.edges import EMBED, INPUTS, LOGITS, Edge
from interp.errors import UserValueError
from interp.nodes import Head, Mlp, Node, NodeError, check_node, parse_node

ABLATIONS = ("mean", "resample", "zero")
TOP_KEYS = ("name", "description", "model", "task", "ablation", "groups", "edges")
GROUP_KEYS = ("nodes", "positions", "description")
EDGE_KEYS = ("from", "to", "input", "positions")
# A discovered edge circuit lists each edge on one line (~35 bytes): SmolLM2's full graph of
# 123,211 edges is 4.3 MB and parses in ~15 s; GPT-2 medium's ~240k edges fit too.
MAX_BYTES = 16_000_000
MAX_DEPTH = 8  # a circuit file nests 4 deep (file > groups > group > nodes)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 15x faster


class CircuitFormatError(UserValueError):
    """A circuit file is malformed; the message is one line: `file:line: problem`."""


class CircuitFileNotFoundError(CircuitFormatError, FileNotFoundError):
    """The circuit file does not exist."""


@dataclass
class Group:
    name: str
    nodes: list[Node]
    positions: list[str] | None = None  # None: all positions
    description: str = ""
    line: int = field(default=0, compare=False)
    node_lines: list[int] = field(default_factory=list, compare=False)


@dataclass
class GroupEdge:
    """One `edges:` entry: each endpoint a group name, a node name, "embed" or "logits"."""

    sender: str  # a group, a node or "embed"
    receiver: str  # a group, a node or "logits"
    input: str | None = None  # q | k | v for head receivers; None: all three / not applicable
    line: int = field(default=0, compare=False)
    positions: list[str] | None = None  # None: the sender group's positions


@dataclass
class CircuitSpec:
    """A parsed circuit hypothesis."""

    name: str
    groups: dict[str, Group]
    edges: list[GroupEdge] = field(default_factory=list)
    ablation: str = "mean"
    description: str = ""
    model: str | None = None
    task: str | None = None
    source: str = field(default="<memory>", compare=False)

    def circuit(self) -> dict[Node, list[str] | None]:
        """Node -> kept positions (None = all), the form `interp.circuit` evaluates; a node in
        several groups keeps the union of their positions."""
        out: dict[Node, list[str] | None] = {}
        for group in self.groups.values():
            for node in group.nodes:
                if node in out and (out[node] is None or group.positions is None):
                    out[node] = None
                elif node in out:
                    out[node] = sorted(set(out[node]) | set(group.positions))
                else:
                    out[node] = None if group.positions is None else list(group.positions)
        return out

    def group_nodes(self) -> dict[str, list[Node]]:
        return {name: list(g.nodes) for name, g in self.groups.items()}

    def endpoints(self, name: str) -> list[tuple[object, list[str] | None]]:
        """(sender or receiver, its group's positions) for an edge endpoint's name."""
        if name in self.groups:
            group = self.groups[name]
            return [(node, group.positions) for node in group.nodes]
        if name in (EMBED, LOGITS):
            return [(name, None)]
        return [(parse_node(name), None)]

    def edge_list(self, graph) -> list[Edge]:
        """The file's edges between nodes: a group endpoint expands to all its nodes, a head
        receiver without `input` to q, k and v; an edge keeps the sender group's positions
        unless it names its own. Pairs where the sender comes after the receiver (within a
        group, say) are skipped. `graph`: an `interp.edges.EdgeGraph`."""
        out = []
        for e in self.edges:
            for sender, sender_positions in self.endpoints(e.sender):
                positions = e.positions if e.positions is not None else sender_positions
                where = None if positions is None else tuple(positions)
                for receiver, _ in self.endpoints(e.receiver):
                    inputs = ([e.input] if e.input else list(INPUTS)) \
                        if isinstance(receiver, Head) else [None]
                    for kind in inputs:
                        edge = Edge(sender, receiver, kind, where)
                        if _exists(graph, edge):
                            out.append(edge)
        return out

    def implicit(self) -> tuple[bool, bool]:
        """(embeddings implicit, MLPs implicit): the embeddings unless an edge starts at
        `embed`; the MLPs unless the file names an MLP node (circuits/README.md)."""
        named = [n for g in self.groups.values() for n in g.nodes]
        for e in self.edges:
            named += [n for name in (e.sender, e.receiver) for n, _ in self.endpoints(name)]
        return (not any(e.sender == EMBED for e in self.edges),
                not any(isinstance(n, Mlp) for n in named))

    def kept_edges(self, graph) -> list[Edge]:
        """The edges an edge-level evaluation keeps: `edge_list`, plus, while implicit, every
        edge out of the embeddings and the MLPs, and every edge from a circuit node (a node
        of a group or of an edge, at its group's positions) into an MLP."""
        embed, mlps = self.implicit()
        senders = ([EMBED] if embed else []) + \
            ([Mlp(layer) for layer in range(graph.n_layers)] if mlps else [])
        out = self.edge_list(graph)
        for r in range(graph.n_receivers):
            receiver, kind = graph.receiver(r)
            out += [Edge(s, receiver, kind) for s in senders if _exists(graph, Edge(s, receiver,
                                                                                     kind))]
        if mlps:
            nodes = dict(self.circuit())
            for e in self.edges:
                for name in (e.sender, e.receiver):
                    for node, _ in self.endpoints(name):
                        if isinstance(node, Head):
                            nodes.setdefault(node, None)
            for node, positions in nodes.items():
                where = None if positions is None else tuple(positions)
                out += [Edge(node, Mlp(layer), None, where) for layer in range(graph.n_layers)
                        if _exists(graph, Edge(node, Mlp(layer)))]
        return out

    def validate(self, model=None, positions=None) -> "CircuitSpec":
        """Check node indices against a model (`model.cfg`) and position names against a
        task's (`TaskBatch.positions`); raise CircuitFormatError with the line."""
        for group in self.groups.values():
            for node, line in zip(group.nodes, group.node_lines or [group.line] * len(group.nodes),
                                  strict=True):
                if model is not None:
                    try:
                        check_node(node, model.cfg.n_layers, model.cfg.n_heads)
                    except NodeError as err:
                        raise self._error(line, f"{err} (group '{group.name}')") from None
            if positions is not None and group.positions is not None:
                for name in group.positions:
                    if name not in positions:
                        raise self._error(group.line, f"group '{group.name}': unknown position "
                                          f"'{name}'; this task has {sorted(positions)}")
        for edge in self.edges:
            self._validate_edge(edge, model, positions)
        return self

    def _validate_edge(self, edge: GroupEdge, model, positions) -> None:
        nodes = [(name, node) for name in (edge.sender, edge.receiver)
                 if name not in self.groups and name not in (EMBED, LOGITS)
                 for node, _ in self.endpoints(name)]
        if model is not None:
            for _, node in nodes:
                try:
                    check_node(node, model.cfg.n_layers, model.cfg.n_heads)
                except NodeError as err:
                    raise self._error(edge.line, f"{err} (edge {edge.sender} -> "
                                                 f"{edge.receiver})") from None
            if edge.sender not in self.groups and edge.receiver not in self.groups:
                from interp.edges import EdgeGraph

                kind = edge.input or (INPUTS[0] if isinstance(
                    self.endpoints(edge.receiver)[0][0], Head) else None)
                pair = Edge(self.endpoints(edge.sender)[0][0],
                            self.endpoints(edge.receiver)[0][0], kind)
                if not _exists(EdgeGraph.of(model), pair):
                    raise self._error(edge.line, f"no edge {edge.sender} -> {edge.receiver}: "
                                      "the sender is computed after the receiver reads the "
                                      "residual stream; send from an earlier layer")
        if positions is not None and edge.positions is not None:
            for name in edge.positions:
                if name not in positions:
                    raise self._error(edge.line, f"edge {edge.sender} -> {edge.receiver}: "
                                      f"unknown position '{name}'; this task has "
                                      f"{sorted(positions)}")

    def _error(self, line: int, problem: str) -> CircuitFormatError:
        return CircuitFormatError(f"{self.source}:{line}: {problem}")


def _is_mlp(name: str) -> bool:
    try:
        return isinstance(parse_node(name), Mlp)
    except NodeError:
        return False


def _exists(graph, edge: Edge) -> bool:
    """Whether the graph has the edge (its sender is computed before the receiver reads)."""
    return edge.sender == EMBED or edge.receiver == LOGITS or (
        graph.sender_index(edge.sender) < graph.readable(
            graph.receiver_index(edge.receiver, edge.input)))


def _line(node) -> int:
    return node.start_mark.line + 1


class _Parser:
    """Walks the composed YAML node tree, keeping line numbers for errors."""

    def __init__(self, source: str):
        self.source = source

    def error(self, node, problem: str) -> CircuitFormatError:
        return CircuitFormatError(f"{self.source}:{_line(node)}: {problem}")

    def mapping(self, node, what: str, allowed: tuple) -> dict:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping (key: value lines)")
        out = {}
        for key, value in node.value:
            name = self.scalar(key, f"a key of {what}")
            if name not in allowed:
                raise self.error(key, f"unknown key '{name}' in {what}; allowed: "
                                      f"{', '.join(allowed)}")
            if name in out:
                raise self.error(key, f"duplicate key '{name}' in {what}")
            out[name] = value
        return out

    def scalar(self, node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.value == "":
            raise self.error(node, f"{what} must be a single value (text)")
        return node.value

    def strings(self, node, what: str) -> list[tuple[str, int]]:
        """A list (or one value) of scalars, each with its line."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        return [(self.scalar(item, what), _line(item)) for item in items]

    def group(self, name: str, key_node, node) -> Group:
        if isinstance(node, yaml.SequenceNode):
            fields = {"nodes": node}
        else:
            fields = self.mapping(node, f"group '{name}'", GROUP_KEYS)
        if "nodes" not in fields:
            raise self.error(key_node, f"group '{name}' has no 'nodes' list")
        nodes, lines = [], []
        for text, line in self.strings(fields["nodes"], f"a node of group '{name}'"):
            try:
                nodes.append(parse_node(text))
            except NodeError:
                raise CircuitFormatError(
                    f"{self.source}:{line}: unknown node '{text}' in group '{name}': use "
                    "L{layer}H{head} (e.g. L9H9) or MLP{layer} (e.g. MLP3)") from None
            lines.append(line)
        if not nodes:
            raise self.error(fields["nodes"], f"group '{name}' has an empty 'nodes' list")
        positions = None
        if "positions" in fields:
            names = [t for t, _ in self.strings(fields["positions"], "a position")]
            positions = None if names == ["all"] else names
        desc = self.scalar(fields["description"], "description") if "description" in fields \
            else ""
        return Group(name, nodes, positions, desc, _line(key_node), lines)

    def edge(self, node, groups: dict) -> GroupEdge:
        fields = self.mapping(node, "an edge", EDGE_KEYS)
        for key in ("from", "to"):
            if key not in fields:
                raise self.error(node, f"edge needs '{key}: <group or node>'")
        sender, receiver = self.scalar(fields["from"], "from"), self.scalar(fields["to"], "to")
        for key, name in (("from", sender), ("to", receiver)):
            self.endpoint(fields[key], key, name, groups)
        kind = None
        if "input" in fields:
            kind = self.scalar(fields["input"], "input")
            if kind not in INPUTS or receiver == LOGITS or _is_mlp(receiver):
                raise self.error(fields["input"], f"bad edge input '{kind}': use q, k or v "
                                                  "(and none for an edge to logits or an MLP)")
        positions = None
        if "positions" in fields:
            names = [t for t, _ in self.strings(fields["positions"], "a position")]
            positions = None if names == ["all"] else names
        return GroupEdge(sender, receiver, kind, _line(node), positions)

    def endpoint(self, node, key: str, name: str, groups: dict) -> None:
        """A group, a node, `embed` (from) or `logits` (to); else a one-line error."""
        special = EMBED if key == "from" else LOGITS
        if name in groups or name == special:
            return
        if name in (EMBED, LOGITS):
            raise self.error(node, f"'{name}' cannot be an edge's '{key}' ('{EMBED}' only "
                                   f"sends, '{LOGITS}' only receives)")
        try:
            parse_node(name)
        except NodeError:
            raise self.error(node, f"unknown group or node '{name}' in edge '{key}'; groups: "
                                   f"{', '.join(groups) or '(none)'}; or a node L{{layer}}H"
                                   f"{{head}} / MLP{{layer}}, or '{special}'") from None

    def compose(self, text: str):
        """The YAML node tree (line numbers kept); one-line errors for bad or hostile YAML."""
        if len(text) > MAX_BYTES:
            raise CircuitFormatError(f"{self.source}:1: {len(text):,} characters; a circuit file "
                                     f"is at most {MAX_BYTES:,}")
        try:
            _check_depth(text, self.source)
            return yaml.compose(text, Loader=LOADER)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            problem = str(getattr(err, "problem", None) or err).replace("\n", " ")
            raise CircuitFormatError(f"{self.source}:{line}: not valid YAML: {problem}") from None

    def parse(self, text: str) -> CircuitSpec:
        root = self.compose(text)
        if root is None:
            raise CircuitFormatError(f"{self.source}:1: the file is empty; it needs 'groups:'")
        top = self.mapping(root, "the file", TOP_KEYS)
        if "groups" not in top:
            raise self.error(root, "the file has no 'groups:' section")
        groups_node = top["groups"]
        if not isinstance(groups_node, yaml.MappingNode):  # {} is allowed: nothing kept
            raise self.error(groups_node, "'groups' must map group names to node lists")
        groups = {}
        for key, value in groups_node.value:
            name = self.scalar(key, "a group name")
            if name in groups or name in (LOGITS, EMBED):
                raise self.error(key, f"group name '{name}' is duplicate or reserved")
            groups[name] = self.group(name, key, value)
        edges = []
        if "edges" in top:
            if not isinstance(top["edges"], yaml.SequenceNode):
                raise self.error(top["edges"], "'edges' must be a list of {from, to, input}")
            edges = [self.edge(e, groups) for e in top["edges"].value]
        ablation = self.scalar(top["ablation"], "ablation") if "ablation" in top else "mean"
        if ablation not in ABLATIONS:
            raise self.error(top["ablation"], f"bad ablation '{ablation}': use "
                                              f"{', '.join(ABLATIONS)}")
        meta = {k: self.scalar(top[k], k) for k in ("name", "description", "model", "task")
                if k in top}
        return CircuitSpec(meta.get("name", Path(self.source).stem), groups, edges, ablation,
                           meta.get("description", ""), meta.get("model"), meta.get("task"),
                           self.source)


def parse_circuit(text: str, source: str = "<string>", model=None,
                  positions=None) -> CircuitSpec:
    """Parse YAML text; validate against a model / position names when given."""
    return _Parser(source).parse(text).validate(model, positions)


def load_circuit(path: Path | str, model=None, positions=None) -> CircuitSpec:
    """Read and validate a circuit file.

    Raises:
        CircuitFileNotFoundError: the file does not exist.
        CircuitFormatError: a folder, over `MAX_BYTES`, not UTF-8, or malformed.
    """
    return parse_circuit(_read(Path(path)), str(path), model, positions)


def _read(path: Path) -> str:
    """The file's text, or one line naming the file and the problem."""
    if not path.exists():
        raise CircuitFileNotFoundError(f"circuit file {path} does not exist")
    if path.is_dir():
        raise CircuitFormatError(f"{path} is a folder; pass a circuit YAML file, e.g. "
                                 "circuits/ioi_gpt2_small_paper.yaml")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise CircuitFormatError(
            f"{path}: the file is {size:,} bytes; a circuit file is at most {MAX_BYTES:,} "
            "(a model's full edge graph fits; list a group's edges as one group-to-group edge)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise CircuitFormatError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); "
                                 "save the file as UTF-8") from None


def _check_depth(text: str, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream, before composing a tree."""
    depth = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise CircuitFormatError(
                    f"{source}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels "
                    "deep; a circuit file is 'groups: {name: [nodes]}'")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def to_yaml(spec: CircuitSpec) -> str:
    """The spec as YAML that `parse_circuit` reads back to an equal spec."""
    doc: dict = {"name": spec.name}
    for key in ("description", "model", "task"):
        if getattr(spec, key):
            doc[key] = getattr(spec, key)
    doc["ablation"] = spec.ablation
    doc["groups"] = {}
    for name, group in spec.groups.items():
        entry: dict = {"nodes": [str(n) for n in group.nodes]}
        if group.positions is not None:
            entry["positions"] = list(group.positions)
        if group.description:
            entry["description"] = group.description
        doc["groups"][name] = entry
    if spec.edges:
        doc["edges"] = [{"from": e.sender, "to": e.receiver,
                         **({"input": e.input} if e.input else {}),
                         **({"positions": list(e.positions)} if e.positions else {})}
                        for e in spec.edges]
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def write_circuit(spec: CircuitSpec, path: Path | str, header: str = "") -> Path:
    """Write the spec as a YAML file (atomically), with optional `# ` comment lines first."""
    from interp.outputs import write_atomic

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return write_atomic(Path(path), comment + to_yaml(spec))


__all__ = ["ABLATIONS", "EMBED", "CircuitFileNotFoundError", "CircuitFormatError",
           "CircuitSpec", "Group", "GroupEdge", "Head", "Mlp", "load_circuit", "parse_circuit",
           "to_yaml", "write_circuit"]
