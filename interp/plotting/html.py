"""Writing plotly figures as offline HTML.

plotly.js comes from the installed `plotly` package, written once as `plotly.min.js` at the
output root (e.g. `results/plotly.min.js`); each page references it by a relative path,
so no CDN is needed and the library is not copied next to every figure.
"""

import os
from pathlib import Path

from interp.outputs import write_atomic

PLOTLY_JS = "plotly.min.js"


def ensure_plotly_js(root: Path) -> Path:
    """Write plotly.min.js into `root` once (rewritten only if the plotly version changed)."""
    from plotly.offline import get_plotlyjs

    target = Path(root) / PLOTLY_JS
    source = get_plotlyjs()
    if not target.exists() or target.stat().st_size != len(source.encode()):
        write_atomic(target, source)
    return target


def save_figure(fig, path: Path, root: Path | None = None) -> Path:
    """Save `fig` as HTML at `path`, loading plotly.js from `root` (default: path's grandparent's
    parent, i.e. the `<out>` of `<out>/<model>/<experiment>/fig.html`).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent.parent.parent
    js = ensure_plotly_js(root)
    rel = os.path.relpath(js, path.parent)
    html = fig.to_html(include_plotlyjs=rel, full_html=True,
                       config={"displaylogo": False, "responsive": True})
    return write_atomic(path, html)
