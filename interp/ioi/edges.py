"""The IOI circuit's edges (Wang et al. 2022, fig. 2) between the classes `interp ioi` finds,
and the classified circuit's edge-level faithfulness.

The classes talk along these edges: the name movers (and backup and negative name movers)
write to the logits; the S-inhibition heads' output is read by the name movers' queries at
END; the induction and duplicate-token heads' output by the S-inhibition heads' values at S2;
the previous-token heads' output by the induction heads' keys at S1+1. Each edge keeps its
sender class's positions (`CLASS_POSITIONS`); embeddings and MLPs stay connected
(circuits/README.md).

Example:
    >>> edges = class_edges({"name_movers": [Head(9, 9)], "s_inhibition": [Head(7, 3)]})
    >>> [(e.sender, e.receiver, e.input) for e in edges]
    [('name_movers', 'logits', None), ('s_inhibition', 'name_movers', 'q')]
"""

from interp.circuits.format import CircuitSpec, Group, GroupEdge
from interp.ioi.classify import CLASS_POSITIONS
from interp.nodes import parse_node

MOVERS = ("name_movers", "backup_name_movers", "negative_name_movers")
CLASS_EDGES = ([(m, "logits", None) for m in MOVERS]
               + [("s_inhibition", m, "q") for m in MOVERS]
               + [("induction", "s_inhibition", "v"), ("duplicate_token", "s_inhibition", "v"),
                  ("previous_token", "induction", "k")])


def class_edges(classes: dict) -> list[GroupEdge]:
    """The edges of `CLASS_EDGES` whose two classes both have heads."""
    found = {name for name, heads in classes.items() if heads} | {"logits"}
    return [GroupEdge(s, r, kind) for s, r, kind in CLASS_EDGES if s in found and r in found]


def classified_spec(classes: dict, name: str, **meta) -> CircuitSpec | None:
    """The classes (class -> head names) as a circuit file's spec, each class a group at
    its positions, with the `class_edges` between them; None when no class has heads."""
    groups = {cls: Group(cls, [parse_node(h) for h in heads], CLASS_POSITIONS[cls])
              for cls, heads in classes.items() if heads}
    if not groups:
        return None
    return CircuitSpec(name=name, groups=groups, edges=class_edges(classes), ablation="mean",
                       **meta)


def edge_faithfulness(model, runs, spec: CircuitSpec | None) -> dict:
    """F(C), F(M), F(0), F(C)/F(M) and the normalised faithfulness of `spec`'s edges under
    exact edge ablation (mean ablation over `runs`' corrupted prompts); {"skipped": reason}
    for a model the edge engine refuses or a spec without edges."""
    from interp.circuit import normalised_faithfulness
    from interp.edge_ablation import EdgeAblation, EdgeAblationUnsupported
    from interp.edge_circuit import empty_metric

    if spec is None or not spec.edges:
        return {"skipped": "no edges between the classes found"}
    try:
        ev = EdgeAblation(model, runs)
    except EdgeAblationUnsupported as err:
        return {"skipped": str(err)}
    kept = ev.mask(spec.kept_edges(ev.graph))
    f_c, f_empty = ev.metrics([kept]).mean().item(), empty_metric(ev, spec)
    f_m = runs.clean_metric.mean().item()
    return {"F_C": f_c, "F_M": f_m, "F_all_heads_ablated": f_empty, "faithfulness": f_c / f_m,
            "normalised_faithfulness": normalised_faithfulness(f_c, f_m, f_empty),
            "n_edges": len(spec.edge_list(ev.graph)), "forward_equivalents": ev.n_forwards}
