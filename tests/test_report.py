"""The offline report: built from a small results tree made by the real plotting functions."""

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from interp.cli import main
from interp.outputs import run_dir, write_json
from interp.plotting import head_heatmap, save_figure
from interp.plotting.attention import (
    attention_grid_views,
    attention_heatmap,
    attention_patterns,
    attention_views,
    prompt_tokens,
)
from interp.plotting.links import head_link_script, save_linked_figure
from interp.provenance import Provenance
from interp.report import build_report, fmt, key_numbers, lookup

PROMPT = "When Mary and John went to the store, John gave a drink to"
LINKED = ["L0H1", "L1H2"]


def make_results(out: Path, model) -> Path:
    """A results tree like the experiments write: summaries with provenance, real plots."""
    config = {"model": "random:tiny", "seed": 0, "n_prompts": 4}
    ioi = run_dir(out, "random:tiny", "ioi", config)
    prov = Provenance(model="random:tiny", seed=0)
    with prov.stage("plots"):
        attention_views(model, PROMPT, LINKED, ioi, root=out)
        attention_grid_views(model, PROMPT, [1], ioi, root=out)
        scores = np.arange(8.0).reshape(2, 4) - 3.5
        save_linked_figure(head_heatmap(scores, "random:tiny: test scores", "score"),
                           ioi / "heads.html", root=out, heads=LINKED)
    write_json(ioi / "summary.json", {
        "model": "random:tiny", "config": config, "provenance": prov.record(),
        "clean_logit_diff": 0.123456, "circuit": {"faithfulness": 0.5, "n_heads": 7},
        "head_classes": {"name_mover": ["L1H2"], "duplicate_token": ["L0H1"]},
        "figures": {"grid": "attention_grid_L1.html", "heads": "heads.html"}})
    caps = run_dir(out, "random:tiny", "capitals", config)
    fig = go.Figure(go.Scatter(y=[0.1, 0.4, 0.3]))
    fig.update_layout(title="random:tiny: capital top-1 by layer")
    save_figure(fig, caps / "by_layer.html", root=out)
    write_json(caps / "summary.json", {
        "config": config, "provenance": Provenance(model="random:tiny", seed=0).record(),
        "capital_top1_by_layer": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9, 0.8],
        "final_accuracy": 0.8})
    smol = run_dir(out, "smollm2-135m", "ffn-ablation", {"model": "smollm2-135m"})
    write_json(smol / "summary.json", {"model": "smollm2-135m", "critical_layers": [3, 5],
                                       "config": {"model": "smollm2-135m"}})
    write_json(out / "bench" / "cpu-test.json", {
        "config": {"model": "random:gpt2"}, "forward_s": 1.25,
        "provenance": Provenance(model="random:gpt2", seed=0).record()})
    broken = out / "random-tiny" / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    return out


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.href, self.src, self.scripts = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.href.append(attrs["href"])
        if tag == "iframe":
            self.src.append(attrs["src"])
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])


def links(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text())
    return parser


def target(page: Path, url: str) -> Path:
    """The file a relative link of `page` opens."""
    return (page.parent / unquote(url.split("#")[0])).resolve()


def targets(page: Path, urls) -> set[Path]:
    return {target(page, u) for u in urls}


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny):
    out = make_results(tmp_path_factory.mktemp("results"), tiny)
    return build_report(out), out


def test_index_links_every_summary_and_model_page(report):
    rep, out = report
    summaries = {p.resolve() for p in out.glob("*/*/summary.json")}
    assert len(summaries) == 4
    found = links(rep.index)
    assert summaries <= targets(rep.index, found.href)
    assert {p.resolve() for p in rep.pages.values()} <= targets(rep.index, found.href)
    for url in found.href + found.src:
        assert target(rep.index, url).exists(), url
    assert "./bench/cpu-test.json" in found.href  # other JSON results, e.g. benchmarks
    assert "<th>forward_s</th><td title=\"1.25\">1.25</td>" in rep.index.read_text()


def test_model_pages_show_every_plot_and_link_every_view(report):
    rep, out = report
    page = rep.pages["random-tiny"]
    found = links(page)
    plots = {p.resolve() for p in (out / "random-tiny").rglob("*.html")
             if p.name != "index.html" and not re.match(r"attention_L\d+H\d+", p.name)}
    views = {p.resolve() for p in (out / "random-tiny").rglob("attention_L*H*.html")}
    assert len(plots) == 3 and len(views) == len(LINKED)
    assert targets(page, found.src) == plots
    ioi = [Path(u).name for u in found.src if u.startswith("./ioi/")]
    assert ioi == ["attention_grid_L1.html", "heads.html"]  # the order of summary["figures"]
    assert views <= targets(page, found.href)
    for url in found.href + found.src:
        assert target(page, url).exists(), url
    assert "unreadable summary.json" in page.read_text()


def test_no_cdn_and_plotly_local(report):
    rep, out = report
    js = (out / "plotly.min.js").resolve()
    assert js.stat().st_size > 1_000_000
    pages = list(out.rglob("*.html"))
    for page in pages:
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=[\"'](https?:)?//", text), page
        assert "cdn" not in " ".join(links(page).scripts).lower(), page
        for src in links(page).scripts:
            assert not Path(src).is_absolute(), (page, src)
            assert (page.parent / src).resolve() == js, (page, src)
    plot_pages = [p for p in pages if p.name != "index.html"]
    assert all(links(p).scripts for p in plot_pages)


def test_key_numbers_and_labels(report):
    rep, out = report
    index = rep.index.read_text()
    summary = json.loads((out / "random-tiny" / "ioi" / "summary.json").read_text())
    assert f"{summary['clean_logit_diff']:.4g}" in index
    assert "name_mover: [L1H2]" in index
    assert "max 0.9 at index 8" in index
    assert "RANDOM weights" in index and "not GPT-2" in rep.pages["smollm2-135m"].read_text()
    model_page = rep.pages["random-tiny"].read_text()
    assert summary["provenance"]["git_commit"] in model_page
    assert summary["provenance"]["command"] in model_page


def test_lookup_and_fmt():
    assert lookup({"eval": {"faithfulness": {"F_C": 2, "faithfulness": 0.5}}},
                  "circuit.faithfulness") == 0.5
    summary = {"circuit": {"faithfulness": 0.91}, "x": {"y": {"critical_layers": [3]}},
               "provenance": {"clean_accuracy": 1.0}}
    assert lookup(summary, "circuit.faithfulness") == 0.91
    assert lookup(summary, "critical_layers") == [3]
    assert lookup(summary, "clean_accuracy") is None
    assert key_numbers(summary) == {"circuit faithfulness": 0.91, "critical FFN layers": [3]}
    assert key_numbers({"x": {"nodes": [1]}, "best": {"nodes": ["L1H2"]}}) == {
        "discovered circuit: nodes": ["L1H2"]}
    assert key_numbers({"x": {"nodes": [1]}}) == {}
    assert key_numbers({"function_application_layer": None}) == {
        "function application layer": None}
    assert fmt(None) == "none" and fmt(1 / 3) == "0.3333" and fmt(True) == "yes"
    assert fmt("a" * 200).endswith("…") and len(fmt("a" * 200)) == 90


def hand_pattern(model, tokens, layer: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head)) with the causal mask, from the cached q and k."""
    names = {f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    q = cache[f"blocks.{layer}.attn.hook_q"][0]  # pos head d
    k = cache[f"blocks.{layer}.attn.hook_k"][0]
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    n = scores.shape[-1]
    scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    return scores.softmax(-1)


def test_attention_patterns_match_hand_computation(tiny):
    ids, str_tokens = prompt_tokens(tiny, PROMPT)
    assert str_tokens == [tiny.tokenizer.decode([i])
                          for i in tiny.tokenizer.encode(PROMPT, add_special_tokens=False)]
    got = attention_patterns(tiny, ids, [1])[1]
    torch.testing.assert_close(got, hand_pattern(tiny, ids, 1), atol=1e-5, rtol=1e-4)
    fig = attention_heatmap(got[2], str_tokens, "random:tiny L1H2", head="L1H2")
    z = np.array(fig.data[0].z, dtype=float)
    lower = np.tril_indices(len(str_tokens))
    np.testing.assert_allclose(z[lower], got[2].numpy()[lower], atol=1e-6)
    assert np.isnan(z[np.triu_indices(len(str_tokens), 1)]).all()
    assert fig.data[0].text[9][3] == "query 9 &#x27; John&#x27;<br>key 3 &#x27; John&#x27;"
    assert list(fig.layout.yaxis.ticktext)[3] == "3 ␣John"


def test_attention_views_files_and_errors(tiny, tmp_path):
    folder = tmp_path / "random-tiny" / "ioi"
    paths = attention_views(tiny, PROMPT, ["L1H3"], folder, root=tmp_path)
    assert paths == [folder / "attention_L1H3.html"]
    assert "random:tiny: L1H3 attention pattern" in paths[0].read_text()
    with pytest.raises(ValueError, match="out of range"):
        attention_views(tiny, PROMPT, ["L5H0"], folder, root=tmp_path)
    with pytest.raises(ValueError, match="one prompt"):
        attention_views(tiny, torch.zeros(2, 3, dtype=torch.long), ["L0H0"], folder,
                        root=tmp_path)


def test_link_script():
    script = head_link_script(heads=["L1H2"])
    assert '["L1H2"]' in script and '"attention_L{layer}H{head}.html"' in script
    with pytest.raises(ValueError, match="needs both"):
        head_link_script("head_{head}.html")


def test_cli_report(report, capsys, tmp_path):
    _, out = report
    assert main(["report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out / 'index.html'}" in printed and "4 runs of 2 models" in printed
    assert main(["report", "--out", str(tmp_path)]) == 1
    assert "no " in capsys.readouterr().err


def test_save_figure_writes_plotly_js_into_the_given_root_only(tmp_path):
    """It used to default to three folders up: a/b/c/fig.html put plotly.min.js in a/."""
    fig = go.Figure(go.Scatter(y=[1, 2]))
    path = tmp_path / "a" / "b" / "c" / "fig.html"
    with pytest.raises(TypeError):
        save_figure(fig, path)  # the root is required
    assert not (tmp_path / "a").exists()
    save_figure(fig, path, root=tmp_path / "a" / "b")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == [
        "a/b/c/fig.html", "a/b/plotly.min.js"]
    assert 'src="../plotly.min.js"' in path.read_text()
    with pytest.raises(ValueError, match="not inside the output root"):
        save_figure(fig, tmp_path / "elsewhere.html", root=tmp_path / "a")


def _hostile_results(out: Path) -> Path:
    """Folder names that are URL schemes, and summaries that are not what the report expects."""
    def write(rel: str, data: str | bytes) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)

    write("javascript:alert(13)/ioi/summary.json", json.dumps({"model": "random:tiny",
                                                              "final_accuracy": 0.5}))
    save_figure(go.Figure(go.Scatter(y=[1, 2])), out / "javascript:alert(13)/ioi/p#1 <b>.html",
                root=out)
    write("m/list/summary.json", "[1, 2]")
    write("m/binary/summary.json", b"\xff\xfe\x00\x01")
    (out / "m/dir/summary.json/nested").mkdir(parents=True)
    write("m/deep/summary.json", "[" * 100_000 + "]" * 100_000)
    write("m/deepish/summary.json", '{"a": ' * 100 + "1" + "}" * 100)
    write("m/types/summary.json", json.dumps({"provenance": [1], "config": 5, "plots": 7,
                                              "model": 3, "head_classes": {"x": [[1]]}}))
    write("m/ok/summary.json", json.dumps({"model": "random:tiny", "final_accuracy": 0.25}))
    write("javascript:alert(1)/bench.json", "[" * 100_000 + "]" * 100_000)
    return out


def test_hostile_names_and_summaries_do_not_abort_or_inject(tmp_path, capsys):
    # BUG before the fix: a deep summary.json aborted the report (RecursionError), a
    # "provenance" list raised AttributeError, and the folder `javascript:alert(13)` became
    # href="javascript:alert(13)/summary.json", a clickable javascript: URL.
    out = _hostile_results(tmp_path)
    assert main(["report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[unreadable summary: binary, deep, deepish, dir, list]" in printed
    pages = [out / "index.html", *out.glob("*/index.html")]
    assert len(pages) == 3
    for page in pages:
        found = links(page)
        for url in found.href + found.src:
            assert url.startswith(("./", "../", "#")), (page, url)
            assert target(page, url).exists(), (page, url)
    index = (out / "index.html").read_text()
    assert "<b>.html" not in index and "p#1 &lt;b&gt;.html" in index
    assert "0.25" in (out / "m" / "index.html").read_text()  # the good run is still shown
