"""An offline report of everything under a results folder: `<out>/index.html` plus one page per
model, `<out>/<model-slug>/index.html`.

It scans `<out>/*/*/summary.json` (any experiment), shows the key numbers it knows about
(wherever they sit in a summary), every other scalar, each run's provenance, and each
experiment's HTML plots inline (iframes, so the plots' own relative links keep working).
Per-head attention views (`attention_L{l}H{h}.html`) are listed as links. Nothing is loaded
from the network: the plots reference `<out>/plotly.min.js`.

Example:
    >>> report = build_report(Path("results"))
    >>> report.index
    PosixPath('results/index.html')
"""

import json
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

from interp.errors import UserError
from interp.outputs import write_atomic
from interp.plotting.html import ensure_plotly_js

# (label, dotted path in summary.json); a path not found as written is searched for by its
# last component anywhere in the summary (outside "provenance" and "config"), except the
# paths in EXACT, whose last component is too common a name.
KEY_NUMBERS = [
    ("task", "task"),
    ("clean logit diff", "clean_logit_diff"),
    ("clean accuracy", "clean_accuracy"),
    ("circuit faithfulness", "circuit.faithfulness"),
    ("discovered circuit: faithfulness", "best.normalised_faithfulness"),
    ("discovered circuit: nodes", "best.nodes"),
    ("CPR", "CPR"),
    ("CMD", "CMD"),
    ("head classes", "head_classes"),
    ("capital top-1 by layer", "capital_top1_by_layer"),
    ("final accuracy", "final_accuracy"),
    ("argument formation layer", "argument_formation_layer"),
    ("function application layer", "function_application_layer"),
    ("critical FFN layer", "critical_layer"),
    ("critical FFN layers", "critical_layers"),
    ("analogy accuracy@1", "overall.accuracy@1"),
]
EXACT = {"best.normalised_faithfulness", "best.nodes", "overall.accuracy@1"}
SKIP = ("provenance", "config")
ORDER = ("ioi", "capitals", "ffn-ablation", "analogies")
MAX_DEPTH = 32  # deeper summaries are shown as unreadable, not walked
VIEW_RE = re.compile(r"attention_L\d+H\d+\.html$")
SIZE_RE = re.compile(r'<div style="height:(\d+)px; width:(\d+)px;">')
CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1500px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top;font-size:14px}th{background:#f3f3f3}
.note{background:#fff4d6;border:1px solid #e0b84c;padding:8px 12px;margin:8px 0}
.plot{border:1px solid #ddd;margin:6px 0;display:block;max-width:100%}
code,pre{font-size:13px;background:#f6f6f6}pre{padding:8px;overflow-x:auto}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}"""


class NoResultsError(UserError, FileNotFoundError):
    """The results folder is missing or holds no run."""


@dataclass
class Run:
    """One experiment run: `<out>/<slug>/<experiment>/` with its summary and plots."""

    slug: str
    experiment: str
    folder: Path
    summary: dict = field(default_factory=dict)
    error: str = ""
    plots: list[Path] = field(default_factory=list)
    views: list[Path] = field(default_factory=list)

    @property
    def model(self) -> str:
        """The model spec from the summary (or its provenance / config), else the slug."""
        prov, config = _dict(self.summary.get("provenance")), _dict(self.summary.get("config"))
        spec = self.summary.get("model") or prov.get("model") or config.get("model")
        return str(spec) if isinstance(spec, str) and spec != "auto" else self.slug


@dataclass
class Report:
    index: Path
    pages: dict[str, Path]
    runs: list[Run]


MISSING = object()


def _dict(value) -> dict:
    """`value` if it is a dict, else {} (a summary written by hand may hold anything)."""
    return value if isinstance(value, dict) else {}


def lookup(summary: dict, path: str, default=None, search: bool = True):
    """The value at dotted `path`, else (if `search`) the first key named like its last part.

    Example:
        >>> lookup({"circuit": {"faithfulness": 0.9}}, "circuit.faithfulness")
        0.9
    """
    node, last = summary, path.split(".")[-1]
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            node = _find(summary, last, default) if search else default
            break
        node = node[part]
    while isinstance(node, dict) and last in node:  # {"faithfulness": {"faithfulness": x}}
        node = node[last]
    return node


def _find(node, key: str, default, depth: int = 0):
    if not isinstance(node, dict) or depth > 4:
        return default
    if key in node:
        return node[key]
    for name, child in node.items():
        found = default if name in SKIP else _find(child, key, default, depth + 1)
        if found is not default:
            return found
    return default


def key_numbers(summary: dict) -> dict[str, object]:
    """The known key numbers present in a summary (null ones included), by label."""
    found = {label: lookup(summary, path, MISSING, search=path not in EXACT)
             for label, path in KEY_NUMBERS}
    return {label: value for label, value in found.items() if value is not MISSING}


def fmt(value, limit: int = 90) -> str:
    """A short human form of a summary value (numbers to 4 significant digits)."""
    text = _fmt(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return _fmt_list(list(value))
    return str(value)


def _fmt_list(values: list) -> str:
    numeric = values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                             for v in values)
    if numeric and len(values) > 8:
        best = max(range(len(values)), key=lambda i: values[i])
        return (f"max {_fmt(values[best])} at index {best}, last {_fmt(values[-1])} "
                f"({len(values)} values)")
    return "[" + ", ".join(_fmt(v) for v in values) + "]"


def other_scalars(summary: dict, limit: int = 40) -> list[tuple[str, object]]:
    """(dotted path, value) of scalars and short lists not among the key numbers."""
    known = {path.split(".")[-1] for _, path in KEY_NUMBERS} | {"model"}
    rows: list[tuple[str, object]] = []

    def walk(node: dict, prefix: str, depth: int) -> None:
        for key, value in node.items():
            if len(rows) >= limit or key in known or (depth == 0 and key in SKIP):
                continue
            if isinstance(value, dict) and depth < 2:
                walk(value, f"{prefix}{key}.", depth + 1)
            elif not isinstance(value, (dict, list)) or len(value) <= 5:
                rows.append((prefix + key, value))

    walk(summary, "", 0)
    return rows


def read_json(path: Path) -> tuple[object, str]:
    """(the parsed JSON, "") or (None, "<name>: why it cannot be shown"), never an exception.

    Example:
        >>> read_json(Path("results/random-tiny/ioi/summary.json"))[1]
        ''
    """
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        return None, f"{path.name}: nested too deeply"
    except (OSError, ValueError) as err:  # ValueError: bad JSON, binary (UnicodeDecodeError)
        return None, f"{path.name}: {err}"
    if _depth(data) > MAX_DEPTH:
        return None, f"{path.name}: nested more than {MAX_DEPTH} levels"
    return data, ""


def _depth(obj) -> int:
    """Nesting depth of dicts and lists (iterative: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(
            node, list) else ()
        stack += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]
    return deepest


def find_runs(out: Path) -> list[Run]:
    """Every `<out>/*/*/summary.json`, read (a broken one is kept, with its error)."""
    runs = []
    for path in sorted(Path(out).glob("*/*/summary.json")):
        run = Run(slug=path.parent.parent.name, experiment=path.parent.name, folder=path.parent)
        summary, error = read_json(path)
        if not error and not isinstance(summary, dict):
            error = f"not a JSON object (a {type(summary).__name__})"
        run.summary, run.error = (summary, "") if not error else ({}, f"unreadable {error}")
        htmls = sorted(p for p in path.parent.rglob("*.html") if p.name != "index.html")
        run.views = [p for p in htmls if VIEW_RE.search(p.name)]
        run.plots = _order_plots([p for p in htmls if p not in run.views], run.summary)
        runs.append(run)
    return sorted(runs, key=lambda r: (r.slug, _rank(r.experiment), r.experiment))


def _rank(experiment: str) -> int:
    """Experiments in ORDER first (in that order), then the others by name."""
    return ORDER.index(experiment) if experiment in ORDER else len(ORDER)


def _order_plots(plots: list[Path], summary: dict) -> list[Path]:
    """Plots named in summary["plots"] / ["figures"] first (in that order), grids last."""
    named = summary.get("plots") or summary.get("figures") or []
    named = list(named.values()) if isinstance(named, dict) else named
    named = named if isinstance(named, list) else []
    rank = {str(name): i for i, name in enumerate(named) if isinstance(name, str)}

    def key(p: Path):
        return (rank.get(p.name, len(rank)), p.name.startswith("attention_grid"), str(p))

    return sorted(plots, key=key)


def group_model(runs: list[Run]) -> str:
    """The model spec of a model folder's runs (a run that names it, else the slug)."""
    named = [r.model for r in runs if r.model != r.slug]
    return named[0] if named else runs[0].slug


def model_note(spec: str) -> str:
    """A warning that says whose results these are when they are not GPT-2's."""
    if spec.startswith("random"):
        return (f"{spec}: seeded RANDOM weights, an untrained model. These numbers only "
                "exercise the pipeline; they are not GPT-2's and mean nothing about language.")
    if spec.startswith("gpt2"):
        return ""
    return (f"{spec}: these results are this model's, not GPT-2's. GPT-2 numbers from the "
            "papers are references only, not reproduced here.")


def _iframe(src: str, plot: Path) -> str:
    try:
        head = plot.read_text(errors="replace")[:4000]
    except OSError:
        head = ""
    size = SIZE_RE.search(head)
    # save_figure pages are the figure's size plus the body's margin (and height:100%).
    height, width = (int(size.group(1)) + 20, int(size.group(2)) + 20) if size else (620, 1000)
    scrolling = ' scrolling="no"'  # the pages are sized to the figure (or fill 100%)
    return (f'<iframe class="plot" src="{escape(src)}" title="{escape(plot.name)}"{scrolling} '
            f'style="width:{min(width, 1460)}px;height:{height}px"></iframe>'
            f'<div><a href="{escape(src)}">{escape(plot.name)}</a> (open alone)</div>')


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _href(*parts: str) -> str:
    """A relative URL `./a/b` with each part percent-encoded: a folder named `javascript:x`
    stays a relative link (`./javascript%3Ax`), never a scheme.

    Example:
        >>> _href("javascript:alert(13)", "index.html")
        './javascript%3Aalert%2813%29/index.html'
    """
    return "./" + "/".join(quote(part, safe="") for part in parts)


def _url(path: Path, base: Path) -> str:
    """The relative URL of `path` from a page in `base`."""
    return _href(*path.relative_to(base).parts)


def _anchor(name: str) -> str:
    return "#" + quote(name, safe="")


def _table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td title=\"{escape(_fmt(v))}\">"
                   f"{escape(fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>" if rows else ""


def provenance_html(summary: dict) -> str:
    """Command, model, seed, versions, git commit, start time, wall times and config."""
    prov = summary.get("provenance")
    if not isinstance(prov, dict):
        return "<p><b>No provenance recorded in summary.json.</b></p>"
    walls = prov.get("wall_time_s")
    total = sum(v for v in walls.values() if isinstance(v, (int, float))) \
        if isinstance(walls, dict) else walls
    rows = [("command", prov.get("command")), ("model", prov.get("model")),
            ("seed", prov.get("seed")), ("git commit", prov.get("git_commit")),
            ("started (UTC)", prov.get("started_utc")), ("wall time total (s)", total),
            ("wall time by stage (s)", walls), ("versions", prov.get("versions")),
            ("machine", prov.get("machine"))]
    table = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(_fmt(v))}</code></td></tr>"
                    for k, v in rows if v is not None)
    config = json.dumps(summary.get("config", {}), indent=1, default=str)
    return (f"<details><summary>provenance</summary><table>{table}</table>"
            f"<p>config:</p><pre>{escape(config)}</pre></details>")


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def _note(spec: str) -> str:
    note = model_note(spec)
    return f'<p class="note">{escape(note)}</p>' if note else ""


def _experiment_html(run: Run, base: Path) -> str:
    """One experiment's section on a model page; links are relative to `base`."""
    summary = _url(run.folder / "summary.json", base)
    parts = [f'<h2 id="{escape(run.experiment)}">{escape(run.experiment)}</h2>',
             f'<p><a href="{escape(summary)}">summary.json</a></p>']
    if run.error:
        parts.append(f'<p class="note">{escape(run.error)}</p>')
    parts.append(_table(list(key_numbers(run.summary).items())))
    others = other_scalars(run.summary)
    if others:
        parts.append(f"<details><summary>other values ({len(others)})</summary>"
                     f"{_table(others)}</details>")
    parts.append(provenance_html(run.summary))
    parts += [_iframe(_url(p, base), p) for p in run.plots]
    if run.views:
        links = " ".join(f'<a href="{escape(_url(p, base))}">{escape(p.stem[10:])}</a>'
                         for p in run.views)
        parts.append(f"<p>attention pattern per head ({len(run.views)}): {links}</p>")
    return "\n".join(parts)


def model_page(slug: str, runs: list[Run], out: Path) -> str:
    """`<out>/<slug>/index.html`: every experiment of one model, plots inline."""
    spec = group_model(runs)
    base = Path(out) / slug
    toc = " · ".join(f'<a href="{escape(_anchor(r.experiment))}">{escape(r.experiment)}</a>'
                     for r in runs)
    body = [f'<p><a href="../index.html">all models</a></p><h1>{escape(spec)}</h1>',
            _note(spec), f"<p>experiments: {toc}</p>"]
    body += [_experiment_html(r, base) for r in runs]
    return _page(f"interp results: {spec}", "\n".join(body))


def _summary_table(by_model: dict[str, list[Run]]) -> str:
    """One row per run: model, experiment (links), and its key numbers as `label: value` lines."""
    rows = []
    for slug, group in by_model.items():
        page = _href(slug, "index.html")
        model = f'<a href="{escape(page)}">{escape(group_model(group))}</a>'
        for r in group:
            numbers = "<br>".join(
                f'<b>{escape(label)}</b>: <span title="{escape(_fmt(value))}">'
                f"{escape(fmt(value, 80))}</span>"
                for label, value in key_numbers(r.summary).items())
            link = page + _anchor(r.experiment)
            summary = _href(slug, r.experiment, "summary.json")
            rows.append(f"<tr><td>{model}</td>"
                        f'<td><a href="{escape(link)}">{escape(r.experiment)}</a> '
                        f'(<a href="{escape(summary)}">'
                        f"summary</a>){' ⚠ ' + escape(r.error) if r.error else ''}</td>"
                        f"<td>{numbers}</td><td>{_count(r.plots, 'plot')}, "
                        f"{_count(r.views, 'attention view')}</td></tr>")
    head = "<tr><th>model</th><th>experiment</th><th>key numbers</th><th>figures</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def extras_html(out: Path) -> str:
    """Other JSON results at `<out>/<folder>/*.json` (e.g. benchmarks), with their numbers."""
    parts = []
    for path in sorted(Path(out).glob("*/*.json")):
        data, error = read_json(path)
        if error:
            parts.append(f"<h3>{escape(_rel(path, out))}</h3><p>unreadable {escape(error)}</p>")
            continue
        data = data if isinstance(data, dict) else {"value": data}
        spec = lookup(data, "config.model", "") or ""
        parts += [f'<h3><a href="{escape(_url(path, out))}">{escape(_rel(path, out))}</a></h3>',
                  _note(spec) if isinstance(spec, str) and spec else "",
                  f"<details><summary>numbers</summary>{_table(other_scalars(data))}</details>",
                  provenance_html(data)]
    return "<h2>Other results</h2>" + "\n".join(parts) if parts else ""


def index_page(by_model: dict[str, list[Run]], out: Path) -> str:
    """`<out>/index.html`: the key-number table, then each model's first plot per experiment."""
    runs = [r for group in by_model.values() for r in group]
    body = ["<h1>interp results</h1>",
            f"<p>{len(runs)} runs of {len(by_model)} models, from <code>*/*/summary.json"
            "</code>. Each model's page has every plot and the provenance of each run.</p>",
            _summary_table(by_model)]
    for slug, group in by_model.items():
        spec = group_model(group)
        body += [f'<h2><a href="{escape(_href(slug, "index.html"))}">{escape(spec)}</a></h2>',
                 _note(spec)]
        for r in group:
            if r.plots:
                body += [f"<h3>{escape(r.experiment)}</h3>", _iframe(_url(r.plots[0], out),
                                                                      r.plots[0])]
    body.append(extras_html(out))
    return _page("interp results", "\n".join(body))


def build_report(out: Path) -> Report:
    """Write `<out>/index.html` and `<out>/<slug>/index.html` for every model with results.

    Raises:
        NoResultsError: `out` does not exist or holds no `*/*/summary.json`.
    """
    out = Path(out)
    if not out.is_dir():
        raise NoResultsError(f"{out} is not a folder; pass the --out of your experiments.")
    runs = find_runs(out)
    if not runs:
        raise NoResultsError(f"no {out}/<model>/<experiment>/summary.json found; run an "
                                f"experiment first (e.g. `interp ioi --out {out}`).")
    ensure_plotly_js(out)
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.slug, []).append(run)
    pages = {slug: write_atomic(out / slug / "index.html", model_page(slug, group, out))
             for slug, group in by_model.items()}
    index = write_atomic(out / "index.html", index_page(by_model, out))
    return Report(index=index, pages=pages, runs=runs)
