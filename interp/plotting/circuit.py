"""Figures of circuit evaluation and discovery: faithfulness curve, completeness, minimality.

Example:
    >>> result = discover(model, batch)
    >>> save_figure(faithfulness_curve(result, "IOI on gpt2"), out / "curve.html", root=out)
"""

import plotly.graph_objects as go


def faithfulness_curve(result, title: str) -> go.Figure:
    """Normalised faithfulness against edges kept, for an `interp.discover.Discovery`."""
    xs = [p.n_edges for p in result.points]
    fig = go.Figure(go.Scatter(
        x=xs, y=[p.normalised for p in result.points], mode="lines+markers",
        text=[f"{p.n_edges} edges, {len(p.nodes)} heads" for p in result.points],
        hovertemplate="%{text}<br>normalised faithfulness %{y:.3f}<extra></extra>",
        name="circuit"))
    best = result.best
    fig.add_trace(go.Scatter(x=[best.n_edges], y=[best.normalised], mode="markers",
                             marker={"size": 14, "symbol": "star"}, name="written circuit",
                             hovertemplate="written circuit: %{x} edges<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(title=title, xaxis={"type": "log", "title": "edges kept (top |score|)"},
                      yaxis_title="normalised faithfulness (1 = full model, 0 = all ablated)",
                      width=820, height=480)
    return fig


def completeness_figure(completeness: dict, title: str) -> go.Figure:
    """F(C \\ K) against F(M \\ K) per group K (`interp.circuit.completeness`); complete
    circuits lie on the diagonal."""
    names = list(completeness)
    f_m = [completeness[n]["F_M_minus_K"] for n in names]
    f_c = [completeness[n]["F_C_minus_K"] for n in names]
    fig = go.Figure(go.Scatter(x=f_m, y=f_c, mode="markers+text", text=names,
                               textposition="top center",
                               hovertemplate="%{text}<br>F(M\\K) %{x:.3f}<br>F(C\\K) %{y:.3f}"
                                             "<extra></extra>"))
    lo, hi = min(f_m + f_c + [0.0]), max(f_m + f_c + [0.0])
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot"},
                             name="complete (x = y)", hoverinfo="skip"))
    fig.update_layout(title=f"Completeness per group: {title}", xaxis_title="F(M \\ K)",
                      yaxis_title="F(C \\ K)", width=720, height=560, showlegend=False)
    return fig


def minimality_figure(minimality: dict, title: str) -> go.Figure:
    """Each node's contribution relative to |F(M)| (`interp.circuit.minimality`), with the
    threshold."""
    per = minimality["per_node"]
    fig = go.Figure(go.Bar(x=list(per), y=[v["relative_to_F_M"] for v in per.values()],
                           hovertemplate="%{x}: %{y:.3f} x F(M)<extra></extra>"))
    fig.add_hline(y=minimality["threshold"], line_dash="dot")
    fig.update_layout(title=f"Minimality per node: {title}", xaxis_title="node",
                      yaxis_title="|contribution| / |F(M)|", width=max(720, 28 * len(per)),
                      height=480)
    return fig
