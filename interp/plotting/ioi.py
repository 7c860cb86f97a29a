"""IOI figures: the circuit diagram and the faithfulness / completeness plots."""

import plotly.graph_objects as go

from interp.nodes import parse_node

CLASS_COLOURS = {
    "previous_token": "#8c564b", "duplicate_token": "#9467bd", "induction": "#1f77b4",
    "s_inhibition": "#ff7f0e", "name_movers": "#2ca02c", "backup_name_movers": "#98df8a",
    "negative_name_movers": "#d62728", "unclassified": "#7f7f7f",
}
# which class feeds which (the paper's fig. 2), "logits" at the end
CLASS_EDGES = [
    ("previous_token", "induction"), ("induction", "s_inhibition"),
    ("duplicate_token", "s_inhibition"), ("s_inhibition", "name_movers"),
    ("s_inhibition", "backup_name_movers"), ("s_inhibition", "negative_name_movers"),
    ("name_movers", "logits"), ("backup_name_movers", "logits"),
    ("negative_name_movers", "logits"), ("unclassified", "logits"),
]


def _positions(head_classes: dict[str, list[str]], n_layers: int) -> dict[str, tuple]:
    pos, per_layer = {}, {}
    for cls, heads in head_classes.items():
        for name in heads:
            node = parse_node(name)
            slot = per_layer.setdefault(node.layer, 0)
            per_layer[node.layer] += 1
            pos[name] = (node.layer, slot, cls)
    pos["logits"] = (n_layers, 0, "logits")
    return pos


def circuit_diagram(head_classes: dict[str, list[str]], n_layers: int, title: str) -> go.Figure:
    """Heads placed by layer (x) and coloured by class; arrows follow the paper's class graph."""
    pos = _positions(head_classes, n_layers)
    fig = go.Figure()
    for src, dst in CLASS_EDGES:
        for a in head_classes.get(src, []):
            targets = ["logits"] if dst == "logits" else head_classes.get(dst, [])
            for b in targets:
                fig.add_annotation(x=pos[b][0], y=pos[b][1], ax=pos[a][0], ay=pos[a][1],
                                   xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                                   arrowhead=2, arrowwidth=1, opacity=0.35)
    for cls, heads in head_classes.items():
        fig.add_trace(go.Scatter(
            x=[pos[h][0] for h in heads], y=[pos[h][1] for h in heads], mode="markers+text",
            text=heads, textposition="top center", name=f"{cls} ({len(heads)})",
            marker={"size": 16, "color": CLASS_COLOURS.get(cls, "#7f7f7f")},
            hovertemplate="%{text}<br>" + cls + "<extra></extra>"))
    fig.add_trace(go.Scatter(x=[n_layers], y=[0], mode="markers+text", text=["logits"],
                             textposition="top center", name="logits",
                             marker={"size": 18, "symbol": "square", "color": "black"}))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="head slot in layer",
                      xaxis={"range": [-1, n_layers + 1], "dtick": 1}, height=520, width=1000)
    return fig


def faithfulness_figure(circuit: dict, title: str) -> go.Figure:
    """Left: F(C) vs F(M). Right: per class, F(C minus K) against F(M minus K) (complete
    circuits lie on the diagonal)."""
    from plotly.subplots import make_subplots

    faith = circuit["faithfulness"]
    comp = circuit["completeness"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"faithfulness F(C)/F(M) = {faith['faithfulness']:.2f}", "completeness per class"))
    fig.add_trace(go.Bar(x=["F(M) full model", "F(C) circuit"], y=[faith["F_M"], faith["F_C"]],
                         marker_color=["#7f7f7f", "#2ca02c"], showlegend=False,
                         hovertemplate="%{x}: %{y:.3f}<extra></extra>"), row=1, col=1)
    xs = [v["F_M_minus_K"] for v in comp.values()]
    ys = [v["F_C_minus_K"] for v in comp.values()]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=list(comp),
                             textposition="top center", showlegend=False,
                             marker={"size": 12, "color": [CLASS_COLOURS.get(k, "#333")
                                                           for k in comp]},
                             hovertemplate="%{text}<br>F(M\\K)=%{x:.3f}<br>F(C\\K)=%{y:.3f}"
                                           "<extra></extra>"), row=1, col=2)
    lo = min([0.0, *xs, *ys]) - 0.2
    hi = max([faith["F_M"], *xs, *ys]) + 0.2
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False,
                             line={"dash": "dot", "color": "grey"}), row=1, col=2)
    fig.update_yaxes(title_text="mean logit diff", row=1, col=1)
    fig.update_xaxes(title_text="F(M \\ K): full model, class K knocked out", row=1, col=2)
    fig.update_yaxes(title_text="F(C \\ K): circuit, class K knocked out", row=1, col=2)
    fig.update_layout(title=title, height=480, width=1100)
    return fig
