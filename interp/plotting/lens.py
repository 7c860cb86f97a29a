"""Figures for the logit lens, FFN ablation and o-vector transfer.

Example:
    >>> fig = trajectory_heatmap(trajectory(model, tokens, {"capital": wid}), "smollm2-135m")
    >>> save_figure(fig, out / "smollm2-135m" / "capitals" / "lens_poland.html", root=out)
"""

import html

import plotly.graph_objects as go


def _show(token: str) -> str:
    """A token as readable cell text (spaces as '␣', newlines as '\\n')."""
    return html.escape(token.replace(" ", "␣").replace("\n", "\\n"), quote=False)


def trajectory_heatmap(traj, model_name: str, prompt_label: str = "",
                       target: str | None = None) -> go.Figure:
    """Layers x positions heatmap of the lens' top-1 token (cell text) and its probability
    (colour); hover lists the top-5 and, if `target` is given, that token's rank.
    """
    probs = traj.top_probs[..., 0].numpy()
    n_layers, n_pos = probs.shape
    cells = [[_show(traj.top_tokens[la][p][0]) for p in range(n_pos)] for la in range(n_layers)]
    hover = []
    for la in range(n_layers):
        row = []
        for p in range(n_pos):
            tops = "<br>".join(f"{_show(t)}: {float(q):.3f}" for t, q in
                               zip(traj.top_tokens[la][p], traj.top_probs[la, p], strict=True))
            rank = (f"<br>rank of {target}: {int(traj.target_ranks[target][la, p])}"
                    if target else "")
            row.append(f"layer {la}, pos {p} ({_show(traj.tokens[p])})<br>{tops}{rank}")
        hover.append(row)
    fig = go.Figure(go.Heatmap(
        z=probs, x=list(range(n_pos)), y=list(range(n_layers)), text=cells,
        texttemplate="%{text}", textfont={"size": 9}, customdata=hover,
        hovertemplate="%{customdata}<extra></extra>", colorscale="Blues", zmin=0, zmax=1,
        colorbar={"title": {"text": "top-1 prob"}}))
    fig.update_xaxes(tickmode="array", tickvals=list(range(n_pos)),
                     ticktext=[_show(t) for t in traj.tokens], tickangle=-60)
    fig.update_layout(
        title=f"Logit lens, {model_name}: top token per layer and position {prompt_label}",
        xaxis_title="input token (position)", yaxis_title="layer (residual after block)",
        width=max(700, 62 * n_pos + 200), height=max(420, 22 * n_layers + 220))
    return fig


def layer_curves(by_layer: dict[str, list[float]], model_name: str, title: str,
                 yaxis: str = "fraction of prompts") -> go.Figure:
    """One line per named per-layer series (e.g. capital/country top-1 and MRR)."""
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    groups: dict[str, str] = {}
    for name, values in by_layer.items():
        dash = "dot" if "mrr" in name.lower() else "solid"
        color = groups.setdefault(name.split("_")[0], palette[len(groups) % len(palette)])
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=values, mode="lines+markers",
                                 name=name, line={"dash": dash, "color": color},
                                 hovertemplate=name + "<br>layer %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"{title} ({model_name})", xaxis_title="layer",
                      yaxis_title=yaxis, width=820, height=460)
    return fig


def ablation_curves(series: dict[str, tuple[list, list[float]]], model_name: str, title: str,
                    xaxis: str, yaxis: str = "capital top-1 accuracy") -> go.Figure:
    """Lines `name -> (x values, y values)`, e.g. abstractive vs extractive accuracy."""
    fig = go.Figure()
    for name, (xs, ys) in series.items():
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=name,
                                 hovertemplate=name + "<br>%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"{title} ({model_name})", xaxis_title=xaxis, yaxis_title=yaxis,
                      width=820, height=460)
    return fig


def grouped_bars(rows: dict[str, dict[str, float]], title: str, xaxis: str,
                 yaxis: str = "value") -> go.Figure:
    """Grouped bars: x category -> {series: value}."""
    cats = list(rows)
    series = list(next(iter(rows.values())))
    fig = go.Figure([go.Bar(name=m, x=cats, y=[rows[c][m] for c in cats],
                            hovertemplate=m + "<br>%{x}: %{y:.3f}<extra></extra>")
                     for m in series])
    fig.update_layout(barmode="group", title=title, xaxis_title=xaxis, yaxis_title=yaxis,
                      width=820, height=460)
    return fig
