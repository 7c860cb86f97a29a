"""Layer x head heatmaps with a diverging colour scale centred at 0."""

import numpy as np
import plotly.graph_objects as go


def head_heatmap(values, title: str, colorbar: str = "value", zmid: float = 0.0) -> go.Figure:
    """A layers x heads heatmap; hover shows `L{l}H{h}` and the value.

    Args:
        values: array-like [n_layers, n_heads].
        title: figure title (name the model in it).
        colorbar: label of the colour bar (the quantity and its unit).
    """
    grid = np.asarray(values, dtype=float)
    n_layers, n_heads = grid.shape
    labels = [[f"L{layer}H{head}" for head in range(n_heads)] for layer in range(n_layers)]
    bound = float(np.nanmax(np.abs(grid))) or 1.0
    fig = go.Figure(go.Heatmap(
        z=grid, x=list(range(n_heads)), y=list(range(n_layers)), text=labels,
        colorscale="RdBu", zmid=zmid, zmin=-bound, zmax=bound,
        colorbar={"title": {"text": colorbar}},
        hovertemplate="%{text}<br>" + colorbar + ": %{z:.4f}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer",
                      xaxis={"dtick": 1}, yaxis={"autorange": "reversed", "dtick": 1},
                      width=720,
                      height=max(360, 22 * n_layers + 160))
    return fig
