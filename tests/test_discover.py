"""Discovery end to end on random:tiny, CPR/CMD arithmetic, and the docs walkthrough."""

import json
import re
import shlex
from pathlib import Path

import pytest

from interp.circuits.format import load_circuit
from interp.cli import main
from interp.discover import areas, edge_nodes, receiver_heads, sizes
from interp.nodes import Head

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_areas_by_hand():
    # (0,0) - (0.5,0.5) - (1,1): CPR = 0.5, CMD = 0.5
    assert areas([(0.5, 0.5)]) == pytest.approx((0.5, 0.5))
    # a circuit at 10% of the edges already at 1: CPR = 0.05 + 0.9 = 0.95, CMD = 0.05
    assert areas([(0.1, 1.0)]) == pytest.approx((0.95, 0.05))
    # overshooting counts in CMD as distance from 1: |1-f| = 1, 0.5, 0 at x = 0, 0.5, 1
    assert areas([(0.5, 1.5)]) == pytest.approx((0.5 * 0.75 + 0.5 * 1.25, 0.5 * 0.75 + 0.125))


def test_sizes_and_nodes():
    assert sizes(81) == [1, 2, 5, 9, 17, 41, 81]
    assert sizes(3) == [1, 2, 3]
    assert sizes(59446)[:8] == [1, 2, 5, 10, 20, 50, 60, 119]  # small counts below 0.1%
    assert receiver_heads("L3KV1.k", 3) == [Head(3, 3), Head(3, 4), Head(3, 5)]
    assert receiver_heads("L3H2.q", 1) == [Head(3, 2)]
    edges = [("INPUT", "L0H1.v", 1.0), ("L0H1", "LOGITS", -2.0), ("L0H3", "L1KV0.k", 0.5)]
    assert edge_nodes(edges, 2) == [Head(0, 1), Head(0, 3), Head(1, 0), Head(1, 1)]


def _cli(args: list[str]) -> int:
    return main(args)


def test_discover_writes_a_circuit_that_evaluate_reads_back(tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(["discover", "--task", "induction", "--model", "random:tiny",
                 "--n-prompts", "6", "--out", str(out)]) == 0
    folder = out / "random-tiny" / "discover-induction"
    summary = json.loads((folder / "summary.json").read_text())
    assert {"config", "provenance", "CPR", "CMD", "curve", "best"} <= set(summary)
    curve = summary["curve"]
    assert [p["n_edges"] for p in curve] == sizes(summary["n_edges_total"])
    # every edge kept = every head and MLP kept = the full model
    assert curve[-1]["n_nodes"] == 10  # float noise over a tiny F(M) - F(0): abs 1e-3
    assert curve[-1]["normalised_faithfulness"] == pytest.approx(1, abs=1e-3)
    assert curve[-1]["metric"] == pytest.approx(summary["metric_full_model"], abs=1e-5)
    cpr, cmd = areas([(p["n_edges"] / summary["n_edges_total"], p["normalised_faithfulness"])
                      for p in curve])
    assert (summary["CPR"], summary["CMD"]) == pytest.approx((cpr, cmd))
    for name in ("faithfulness_curve.html", "head_scores.html"):
        assert "plotly" in (folder / name).read_text()
    spec = load_circuit(folder / "circuit.yaml")
    assert sorted(str(n) for n in spec.circuit()) == sorted(summary["best"]["nodes"])
    capsys.readouterr()
    assert _cli(["evaluate-circuit", "--task", "induction", "--model", "random:tiny",
                 "--n-prompts", "6", "--circuit", str(folder / "circuit.yaml"),
                 "--out", str(out)]) == 0
    evaluated = next((out / "random-tiny").glob("evaluate-induction-*/summary.json"))
    result = json.loads(evaluated.read_text())
    # discover evaluates its kept edges; its file lists them, so evaluate-circuit does too
    assert result["level"] == "edges"
    faith = result["faithfulness"]
    # the same circuit, prompts and ablation: the same number discover reported
    assert faith["normalised_faithfulness"] == pytest.approx(
        summary["best"]["normalised_faithfulness"], abs=1e-5)
    assert "normalised=" in capsys.readouterr().out


def test_evaluate_circuit_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  a:\n    nodes: [L1H1, L5H0]\n")
    assert _cli(["evaluate-circuit", "--task", "greater-than", "--model", "random:tiny",
                 "--circuit", str(bad), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:3: L5H0: layer 5 out of range" in err


def _walkthrough() -> str:
    """The README's "Test your own hypothesis" section, up to the next level-2 heading."""
    text = README.read_text()
    start = text.index("## Test your own hypothesis")
    end = text.find("\n## ", start + 3)
    return text[start:end if end > 0 else None]


def _doc_blocks():
    text = _walkthrough()
    files = dict(re.findall(r"```\w+ file=(\S+)\n(.*?)```", text, re.S))
    commands = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                for line in block.splitlines() if line.startswith("interp ")]
    return files, commands


def _tiny_node(match) -> str:
    return f"L{int(match.group(1)) % 2}H{int(match.group(2)) % 4}"


def _run_walkthrough(tmp_path, monkeypatch, model: str, n_prompts: str):
    files, commands = _doc_blocks()
    assert {"my_greater_than.py", "my_circuit.yaml"} <= set(files) and len(commands) == 3
    monkeypatch.chdir(tmp_path)
    for name, body in files.items():
        if name.endswith(".yaml") and model == "random:tiny":  # fold heads into 2 x 4
            body = re.sub(r"L(\d+)H(\d+)", _tiny_node, body)
        (tmp_path / name).write_text(body)
    for command in commands:
        argv = shlex.split(command)[1:]
        argv[argv.index("--model") + 1] = model
        argv[argv.index("--n-prompts") + 1] = n_prompts
        argv = [a.replace("smollm2-135m", model.replace(":", "-")) for a in argv]
        assert _cli(argv) == 0, command
    slug = model.replace(":", "-")
    assert (tmp_path / "results" / slug / "discover-my-greater-than" / "circuit.yaml").exists()
    assert (tmp_path / "results" / slug / "evaluate-my-greater-than-my-greater-than-guess"
            / "completeness.html").exists()


def test_docs_walkthrough_runs_on_random_tiny(tmp_path, monkeypatch):
    _run_walkthrough(tmp_path, monkeypatch, "random:tiny", "6")


@pytest.mark.offline_model
def test_docs_walkthrough_runs_on_smollm2(tmp_path, monkeypatch):
    _run_walkthrough(tmp_path, monkeypatch, "smollm2-135m", "8")


def test_zero_ablation_runs_match_zero_ablate_interventions(tiny):
    """evaluate-circuit's zero ablation (interp.circuit fed a zero cache) = zero_ablate hooks."""
    import torch

    from interp.circuit import circuit_metric
    from interp.interventions import run_with_interventions, zero_ablate
    from interp.mean_ablation import ablation_runs
    from interp.metrics import logits_at
    from interp.nodes import all_heads
    from interp.patching.runs import prepare_runs
    from interp.tasks.registry import get_task

    model = tiny
    batch = get_task("greater-than").build(model, 4, 0)
    keep = Head(1, 2)
    runs = ablation_runs(prepare_runs(model, batch), "zero", seed=0)
    got = circuit_metric(model, runs, {keep: None})
    ivs = [zero_ablate(h) for h in all_heads(2, 4) if h != keep]
    with torch.no_grad():
        logits = run_with_interventions(model, batch.clean_tokens, ivs)
    assert torch.allclose(got, batch.metric(logits_at(logits, batch.read_positions)), atol=1e-6)


def test_evaluate_circuit_equals_the_library_faithfulness(tmp_path, tiny):
    """evaluate-circuit's F(C) and F(C)/F(M) equal interp.circuit.faithfulness computed in
    this process on the same task batch (means over its own p_ABC prompts). `interp ioi`
    takes its means from a separate p_ABC sample, so its figure differs by design."""
    from interp.circuit import faithfulness
    from interp.patching.runs import prepare_runs
    from interp.tasks.registry import get_task

    circuit = tmp_path / "mine.yaml"
    circuit.write_text("name: mine\ntask: ioi\nablation: mean\ngroups:\n"
                       "  movers:\n    nodes: [L1H0, L1H3]\n    positions: [END]\n"
                       "  early:\n    nodes: [L0H2]\n    positions: [S2]\n")
    assert _cli(["evaluate-circuit", "--task", "ioi", "--model", "random:tiny", "--n-prompts",
                 "8", "--circuit", str(circuit), "--out", str(tmp_path)]) == 0
    faith = json.loads(next((tmp_path / "random-tiny").glob("evaluate-ioi-*/summary.json"))
                       .read_text())["faithfulness"]
    batch = get_task("ioi").build(tiny, 8, 0)
    spec = load_circuit(circuit, model=tiny, positions=batch.positions)
    direct = faithfulness(tiny, prepare_runs(tiny, batch), spec.circuit())
    assert faith["F_C"] == pytest.approx(direct["F_C"], abs=1e-5)
    assert faith["faithfulness"] == pytest.approx(direct["faithfulness"], abs=1e-4)


def test_discover_with_eap_ig(tmp_path):
    assert _cli(["discover", "--task", "greater-than", "--model", "random:tiny", "--method",
                 "attribution-ig", "--steps", "2", "--n-prompts", "4",
                 "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "random-tiny" / "discover-greater-than-ig" /
                          "summary.json").read_text())
    assert summary["config"]["method"] == "attribution-ig" and summary["config"]["steps"] == 2
    assert summary["curve"][-1]["normalised_faithfulness"] == pytest.approx(1, abs=1e-3)
