"""IOI figures beyond the circuit diagram: one heatmap per path-patching step (estimated-only
cells marked), the name-mover scatter (paper fig. 3) and copying-score bars."""

import numpy as np
import plotly.graph_objects as go

from interp.nodes import parse_node
from interp.plotting.heads import head_heatmap


def step_heatmap(grid: list[list], estimated: list[str], title: str,
                 colorbar: str) -> go.Figure:
    """A [layer x head] heatmap of one path-patching step; blank cells are not senders, and
    cells only estimated by attribution (screened, never patched exactly) carry an x."""
    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig = head_heatmap(values, title, colorbar)
    if estimated:
        nodes = [parse_node(h) for h in estimated]
        fig.add_trace(go.Scatter(x=[n.head for n in nodes], y=[n.layer for n in nodes],
                                 mode="markers", name="attribution estimate only",
                                 marker={"symbol": "x", "size": 7, "color": "black"},
                                 hoverinfo="skip"))
        fig.update_layout(legend={"orientation": "h", "y": -0.15})
    return fig


def name_mover_scatter(data: dict[str, dict], title: str) -> go.Figure:
    """Per prompt: END->IO attention (x) against the head's output projected on the
    IO-minus-S unembedding direction (y), one colour per head."""
    fig = go.Figure()
    for head, d in data.items():
        fig.add_trace(go.Scatter(x=d["attn_end_to_io"], y=d["projection"], mode="markers",
                                 name=head, marker={"size": 6, "opacity": 0.7},
                                 hovertemplate=head + "<br>attn END->IO %{x:.3f}<br>"
                                 "projection %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="attention END -> IO",
                      yaxis_title="head output . (W_U[IO] - W_U[S])", height=480, width=760)
    return fig


def copying_bars(copying: dict[str, dict[str, float]], head_class: dict[str, str],
                 title: str) -> go.Figure:
    """Copying and negative copying score of each classified (or unclassified) head."""
    heads = list(head_class)
    labels = [f"{h} ({head_class[h]})" for h in heads]
    fig = go.Figure()
    for kind, colour in (("copying", "#2ca02c"), ("negative_copying", "#d62728")):
        fig.add_trace(go.Bar(x=labels, y=[copying[kind].get(h, np.nan) for h in heads],
                             name=kind.replace("_", " "), marker_color=colour,
                             hovertemplate="%{x}<br>%{y:.2f}<extra></extra>"))
    fig.update_layout(title=title, barmode="group", yaxis={"range": [0, 1.05],
                      "title": "fraction of IO names in the top-5 (bottom-5)"},
                      height=460, width=max(600, 60 * len(heads) + 200))
    return fig
