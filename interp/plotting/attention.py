"""Attention-pattern views: token x token heatmaps for one head, and a grid of a layer's heads.

Query positions run down the y axis, key positions along the x axis; both carry the prompt's
tokens as labels (with their position, since a token can occur twice). Hover shows the query
token, the key token and the weight. Future keys (masked by the causal mask) are left blank.

Example:
    >>> model = interp.load_model("random:tiny")
    >>> attention_views(model, "When Mary and John went to the store,", ["L1H2"], folder, root=out)
    [PosixPath('.../attention_L1H2.html')]
"""

import html
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from interp.nodes import Head, model_node
from interp.plotting.html import save_figure
from interp.tokens import encode

COLORSCALE = "Blues"


def view_name(layer: int, head: int) -> str:
    """File name of one head's attention view: `attention_L{layer}H{head}.html`."""
    return f"attention_L{layer}H{head}.html"


def grid_name(layer: int) -> str:
    """File name of one layer's head grid: `attention_grid_L{layer}.html`."""
    return f"attention_grid_L{layer}.html"


def token_label(position: int, token: str) -> str:
    """An axis label: position, then the token with spaces shown as '␣' (HTML-escaped)."""
    shown = token.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t")
    return html.escape(f"{position} {shown}")


def prompt_tokens(model, prompt) -> tuple[Int[Tensor, "1 pos"], list[str]]:
    """Token ids `[1, pos]` and their strings for one prompt.

    Args:
        prompt: text (encoded with the model's BOS choice), a list of ids, or a 1-D tensor /
            a `[1, pos]` tensor of ids (unpadded: one prompt, no padding tokens).
    """
    if isinstance(prompt, str):
        ids = encode(model, prompt)
    else:
        ids = torch.as_tensor(prompt).tolist()
        if ids and isinstance(ids[0], list):
            if len(ids) != 1:
                raise ValueError(f"attention views take one prompt, got a batch of {len(ids)}; "
                                 "pass tokens[i, :length_i] for the prompt you want.")
            ids = ids[0]
    if not ids:
        raise ValueError("the prompt is empty: pass some text or token ids.")
    return torch.tensor([ids]), [model.tokenizer.decode([i]) for i in ids]


def attention_patterns(model, tokens: Int[Tensor, "1 pos"],
                       layers) -> dict[int, Float[Tensor, "n_heads q k"]]:
    """Attention patterns of `layers` for one prompt (from `blocks.L.attn.hook_pattern`)."""
    names = {f"blocks.{layer}.attn.hook_pattern": layer for layer in layers}
    for layer in names.values():
        model_node(model, Head(layer, 0))
    device = next(model.parameters()).device
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(device), names_filter=lambda n: n in names)
    return {layer: cache[name][0].float().cpu() for name, layer in names.items()}


def _hover_text(str_tokens: list[str]) -> list[list[str]]:
    labels = [html.escape(repr(t)) for t in str_tokens]
    return [[f"query {q} {labels[q]}<br>key {k} {labels[k]}" for k in range(len(labels))]
            for q in range(len(labels))]


def _masked(pattern) -> np.ndarray:
    """The pattern as a float array with future keys (k > q) set to NaN (drawn blank)."""
    grid = torch.as_tensor(pattern).detach().double().cpu().numpy().copy()
    if grid.ndim != 2 or grid.shape[0] != grid.shape[1]:
        raise ValueError(f"an attention pattern is [query, key] and square; got {grid.shape}.")
    grid[np.triu_indices_from(grid, k=1)] = np.nan
    return grid


def _heatmap(pattern, str_tokens: list[str], name: str, **kwargs) -> go.Heatmap:
    grid = _masked(pattern)
    if len(str_tokens) != grid.shape[0]:
        raise ValueError(f"{len(str_tokens)} token labels for a {grid.shape[0]}-position "
                         "pattern; pass the str tokens of the same prompt.")
    return go.Heatmap(
        z=grid, x=list(range(grid.shape[1])), y=list(range(grid.shape[0])),
        text=_hover_text(str_tokens), zmin=0.0, zmax=1.0, colorscale=COLORSCALE,
        hovertemplate=f"{name}<br>%{{text}}<br>weight: %{{z:.4f}}<extra></extra>",
        hoverongaps=False, **kwargs)


def _token_axes(fig, str_tokens: list[str], **where) -> None:
    ticks = list(range(len(str_tokens)))
    text = [token_label(i, t) for i, t in enumerate(str_tokens)]
    fig.update_xaxes(tickvals=ticks, ticktext=text, tickangle=-60, showgrid=False, **where)
    fig.update_yaxes(tickvals=ticks, ticktext=text, autorange="reversed", showgrid=False,
                     **where)
    fig.update_layout(plot_bgcolor="white")


def attention_heatmap(pattern: Float[Tensor, "q k"], str_tokens: list[str],
                      title: str, head: str = "") -> go.Figure:
    """Token x token heatmap of one head on one prompt (query on y, key on x).

    Args:
        pattern: attention weights `[query, key]` (e.g. `cache[hook_pattern][0, head]`).
        str_tokens: the prompt's tokens as strings, one per position.
        title: figure title (name the model, the head and the prompt in it).
        head: head name shown in the hover (e.g. "L9H9").

    Example:
        >>> fig = attention_heatmap(patterns[9][9], str_tokens, "gpt2 L9H9", head="L9H9")
    """
    fig = go.Figure(_heatmap(pattern, str_tokens, head or "attention",
                             colorbar={"title": {"text": "weight"}}))
    size = max(420, 26 * len(str_tokens) + 220)
    fig.update_layout(title=title, xaxis_title="key token", yaxis_title="query token",
                      width=size + 80, height=size)
    _token_axes(fig, str_tokens)
    return fig


def attention_grid(patterns: Float[Tensor, "n_heads q k"], str_tokens: list[str],
                   title: str, layer: int) -> go.Figure:
    """All heads of one layer on one prompt, one token x token subplot per head.

    Args:
        patterns: `[n_heads, query, key]` (e.g. `cache["blocks.L.attn.hook_pattern"][0]`).
        str_tokens: the prompt's tokens as strings.
        title: figure title (name the model and the prompt in it).
        layer: the layer, for subplot titles `L{layer}H{h}` and the hover.
    """
    n_heads = len(patterns)
    cols = math.ceil(math.sqrt(n_heads))
    rows = math.ceil(n_heads / cols)
    names = [f"L{layer}H{h}" for h in range(n_heads)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_xaxes=True,
                        shared_yaxes=True, horizontal_spacing=0.02, vertical_spacing=0.06)
    for h, name in enumerate(names):
        fig.add_trace(_heatmap(patterns[h], str_tokens, name, coloraxis="coloraxis"),
                      row=h // cols + 1, col=h % cols + 1)
    cell = max(220, 14 * len(str_tokens) + 60)
    fig.update_layout(title=title, coloraxis={"colorscale": COLORSCALE, "cmin": 0, "cmax": 1,
                                              "colorbar": {"title": {"text": "weight"}}},
                      width=cols * cell + 260, height=rows * cell + 260)
    _token_axes(fig, str_tokens)
    fig.update_xaxes(tickfont={"size": 8}, title_text="key token", row=rows)
    fig.update_yaxes(tickfont={"size": 8}, title_text="query token", col=1)
    return fig


def _heads(model, heads) -> list[Head]:
    if heads is None:
        return [Head(layer, h) for layer in range(model.cfg.n_layers)
                for h in range(model.cfg.n_heads)]
    if isinstance(heads, (str, Head)):
        heads = [heads]
    return [model_node(model, h) for h in heads]


def attention_views(model, tokens, heads, out_dir: Path, *, root: Path) -> list[Path]:
    """Write one attention view per head, `out_dir/attention_L{l}H{h}.html`, for one prompt.

    Head heatmaps saved with `interp.plotting.links.save_linked_figure` in the same folder
    open these files on click.

    Args:
        model: a loaded model (`interp.load_model`).
        tokens: the prompt: text, a list of ids, or a 1-D (or `[1, pos]`) id tensor, unpadded.
        heads: heads to draw: `Head`s or names like "L9H9"; None draws every head.
        out_dir: folder to write into, usually the experiment's run folder
            `<out>/<model-slug>/<experiment>/`.
        root: the output root, where plotly.min.js lives (`<out>`).

    Returns:
        The written paths, in the order of `heads`.

    Example:
        >>> attention_views(model, batch.clean_tokens[0, :n], ["L9H9"], run_folder, root=out)
    """
    heads = _heads(model, heads)
    ids, str_tokens = prompt_tokens(model, tokens)
    patterns = attention_patterns(model, ids, sorted({h.layer for h in heads}))
    out_dir = Path(out_dir)
    spec = getattr(model, "interp_spec", model.cfg.model_name)
    prompt = html.escape("".join(str_tokens))
    paths = []
    for h in heads:
        fig = attention_heatmap(patterns[h.layer][h.head], str_tokens,
                                f"{spec}: {h} attention pattern<br><sup>{prompt}</sup>",
                                head=str(h))
        paths.append(save_figure(fig, out_dir / view_name(h.layer, h.head), root=root))
    return paths


def attention_grid_views(model, tokens, layers, out_dir: Path, *, root: Path) -> list[Path]:
    """Write one grid of all heads per layer, `out_dir/attention_grid_L{l}.html`, for one prompt.

    Args are as for `attention_views`, with `layers` a list of layer indices.

    Example:
        >>> attention_grid_views(model, "When Mary and John went to the store,", [9], folder,
        ...                      root=out)
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    ids, str_tokens = prompt_tokens(model, tokens)
    patterns = attention_patterns(model, ids, layers)
    out_dir = Path(out_dir)
    spec = getattr(model, "interp_spec", model.cfg.model_name)
    prompt = html.escape("".join(str_tokens))
    return [save_figure(attention_grid(patterns[layer], str_tokens,
                                       f"{spec}: layer {layer} attention patterns, all heads"
                                       f"<br><sup>{prompt}</sup>", layer),
                        out_dir / grid_name(layer), root=root)
            for layer in layers]
