"""Clickable layer x head heatmaps: a click on cell (layer, head) opens that head's page.

`save_linked_figure` is `save_figure` plus a small script (plotly's `post_script`) that
listens for `plotly_click` and opens `attention_L{layer}H{head}.html` (a template) in a new
tab, relative to the figure's own file. Pass `heads` to link only the heads that have a view.

Example:
    >>> fig = head_heatmap(scores, "smollm2-135m: direct effect per head", "logit diff")
    >>> attention_views(model, prompt, ["L9H9"], folder, root=out)
    >>> save_linked_figure(fig, folder / "heads.html", root=out, heads=["L9H9"])
"""

import json
import os
from pathlib import Path

import plotly.graph_objects as go

from interp.outputs import write_atomic
from interp.plotting.html import check_root, ensure_plotly_js

TEMPLATE = "attention_L{layer}H{head}.html"

_SCRIPT = """(function () {
  var gd = document.getElementById('{plot_id}');
  var heads = %(heads)s, template = %(template)s;
  gd.on('plotly_click', function (event) {
    var point = event.points[0], layer = point.y, head = point.x;
    if (heads !== null && heads.indexOf('L' + layer + 'H' + head) < 0) { return; }
    var url = template.split('{layer}').join(layer).split('{head}').join(head);
    window.open(url, '_blank');
  });
})();"""


def head_link_script(template: str = TEMPLATE, heads=None) -> str:
    """JavaScript for plotly's `post_script`: clicking cell (x=head, y=layer) opens the page.

    Args:
        template: URL relative to the figure's file, with `{layer}` and `{head}` placeholders.
        heads: names ("L9H9") or `Head`s that have a page; None links every cell.
    """
    if "{layer}" not in template or "{head}" not in template:
        raise ValueError(f"link template {template!r} needs both '{{layer}}' and '{{head}}', "
                         f"e.g. {TEMPLATE!r}.")
    names = None if heads is None else sorted(str(h) for h in heads)
    return _SCRIPT % {"heads": json.dumps(names), "template": json.dumps(template)}


def _with_click_hint(fig: go.Figure) -> go.Figure:
    fig = go.Figure(fig)
    for trace in fig.data:
        if trace.type == "heatmap" and trace.hovertemplate:
            trace.hovertemplate = trace.hovertemplate.replace(
                "<extra>", "<br>(click: attention pattern)<extra>", 1)
    return fig


def save_linked_figure(fig: go.Figure, path: Path, *, root: Path,
                       template: str = TEMPLATE, heads=None) -> Path:
    """Like `interp.plotting.save_figure`, with cells linking to per-head pages.

    Args:
        fig: a layer x head heatmap (x = head index, y = layer index), e.g. `head_heatmap`.
        path: the HTML file to write.
        root: the output root, where plotly.min.js lives (`<out>`).
        template: link target relative to `path`'s folder (default `attention_L{l}H{h}.html`).
        heads: heads that have a page (others are not clickable); None: every cell.
    """
    path = Path(path)
    rel = os.path.relpath(ensure_plotly_js(check_root(path, root)), path.parent)
    html = _with_click_hint(fig).to_html(
        include_plotlyjs=rel, full_html=True, post_script=head_link_script(template, heads),
        config={"displaylogo": False, "responsive": True})
    return write_atomic(path, html)
