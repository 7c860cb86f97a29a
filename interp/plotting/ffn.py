"""Figures of the FFN study: single-layer and window sweeps (both position modes side by side),
massive activations, and the o-vector transfer with its controls.

Example:
    >>> save_ffn_figures(folder, model.cfg.n_layers, summary)
"""

from interp.plotting import save_figure
from interp.plotting.lens import ablation_curves, grouped_bars

KINDS = ("zero", "mean")
PROMPT_KINDS = ("abstractive", "extractive")
QUANTITIES = (("accuracy", "capital top-1 accuracy"),
              ("capital_prob", "mean capital probability"))


def _single(s: dict, n: int, quantity: str) -> dict:
    return {f"{pk}, {k}, {mode}": (list(range(n)), [rows[str(la)][k][pk][quantity]
                                                      for la in range(n)])
            for mode, rows in s["single_layer"].items() for k in KINDS if k in rows["0"]
            for pk in PROMPT_KINDS}


def _windows(s: dict, quantity: str) -> dict:
    out = {}
    for mode, ws in s["windows"].items():
        fr = list(ws)
        for k in (k for k in KINDS if k in ws[fr[0]]):
            for pk in PROMPT_KINDS:
                out[f"{pk}, {k}, {mode}"] = ([float(f) for f in fr],
                                             [ws[f][k][pk][quantity] for f in fr])
    return out


def save_ffn_figures(folder, n_layers: int, s: dict, root) -> None:
    """single_layer_*.html, windows_*.html, massive_activations.html, transfer.html
    (plotly.js from `root`, the output root)."""
    name = s["model"]
    for quantity, label in QUANTITIES:
        save_figure(ablation_curves(_single(s, n_layers, quantity), name,
                                    f"Single MLP layer ablated (all positions vs all but the "
                                    f"first): {label}", "ablated MLP layer", label),
                    folder / f"single_layer_{quantity}.html", root=root)
        save_figure(ablation_curves(_windows(s, quantity), name,
                                    f"Top MLP layers removed: {label}",
                                    "fraction of MLP layers removed (from the top)", label),
                    folder / f"windows_{quantity}.html", root=root)
    m = s["massive_activations"]["abstractive"]
    fig = ablation_curves(
        {"MLP out norm, position 0": (list(range(n_layers)), m["mlp_out_norm_first_position"]),
         "MLP out norm, median of other positions":
             (list(range(n_layers)), m["mlp_out_norm_median_other_positions"])},
        name, "Massive activations: MLP output norm at the first position", "layer",
        "L2 norm (log scale)")
    fig.update_yaxes(type="log")
    save_figure(fig, folder / "massive_activations.html", root=root)
    rows = {f"add: {k}": {q: v[q] or 0.0 for q in ("capital_top1", "mrr_change",
                                                   "country_repeat_rate",
                                                   "source_capital_rate")}
            for k, v in s["transfer"]["add"].items()}
    save_figure(grouped_bars(rows, f"o-vector transfer from MLP {s['transfer']['layer']} and "
                             f"controls ({name})", "vector added", "rate / MRR change"),
                folder / "transfer.html", root=root)
