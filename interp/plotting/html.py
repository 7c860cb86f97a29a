"""Writing plotly figures as offline HTML.

plotly.js comes from the installed `plotly` package, written once as `plotly.min.js` at the
output root (e.g. `results/plotly.min.js`); each page references it by a relative path,
so no CDN is needed and the library is not copied next to every figure.
"""

import os
from pathlib import Path

from interp.outputs import write_atomic

PLOTLY_JS = "plotly.min.js"


def check_root(path: Path, root: Path) -> Path:
    """`root` as a Path; ValueError unless it is a folder above `path`."""
    if root is None:
        raise ValueError("save_figure needs root=, the output root that gets plotly.min.js")
    root = Path(root)
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        raise ValueError(f"figure {path} is not inside the output root {root}; pass the root "
                         "of this run's output (e.g. --out)")
    return root


def ensure_plotly_js(root: Path) -> Path:
    """Write plotly.min.js into `root` once (rewritten only if the plotly version changed)."""
    from plotly.offline import get_plotlyjs

    target = Path(root) / PLOTLY_JS
    source = get_plotlyjs()
    if not target.exists() or target.stat().st_size != len(source.encode()):
        write_atomic(target, source)
    return target


def save_figure(fig, path: Path, *, root: Path) -> Path:
    """Save `fig` as HTML at `path`, loading plotly.js from `root/plotly.min.js` (written
    there if missing). `root` is the output root, e.g. the `<out>` of
    `<out>/<model>/<experiment>/fig.html`; it must contain `path`.

    Example:
        >>> save_figure(fig, out / "smollm2-135m" / "capitals" / "lens.html", root=out)
    """
    path = Path(path)
    js = ensure_plotly_js(check_root(path, root))
    rel = os.path.relpath(js, path.parent)
    html = fig.to_html(include_plotlyjs=rel, full_html=True,
                       config={"displaylogo": False, "responsive": True})
    return write_atomic(path, html)
