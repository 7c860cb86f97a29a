"""The experiment scripts (recipes over the library API) run end to end on random:tiny."""

import importlib.util
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
TINY = ["--model", "random:tiny"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_script_is_a_short_recipe():
    for path in EXPERIMENTS.glob("*.py"):
        text = path.read_text()
        assert 40 <= len(text.splitlines()) <= 110, path.name
        assert "interp.cli" not in text, f"{path.name} passes through the CLI"


@pytest.mark.parametrize(("script", "args", "figures"), [
    ("capitals_logit_lens.py", ["--n-prompts", "6"], ["capitals-recipe/lens_curves.html"]),
    ("word_analogies.py", [], []),
    ("ffn_ablation.py", ["--n-prompts", "4"], ["ffn-ablation-recipe/single_layer.html"]),
    ("ioi_circuit.py", ["--n-prompts", "8"], ["ioi-recipe/patching_end.html", "ioi/summary.json"]),
])
def test_recipe_runs_on_random_tiny(tmp_path, capsys, script, args, figures):
    result = _script(script).main([*TINY, *args, "--out", str(tmp_path)])
    assert result and "random:tiny" in capsys.readouterr().out
    for figure in figures:
        assert (tmp_path / "random-tiny" / figure).exists(), figure
    assert (tmp_path / "plotly.min.js").exists() or not figures


def test_benchmark_recipe_matches_the_reference(capsys):
    result = _script("benchmark_patching.py").main([*TINY, "--n-prompts", "4"])
    assert result["exact"].shape == (2, 4)
    assert "max |difference|" in capsys.readouterr().out
    for row in result["attribution"].values():
        assert -1 <= row["pearson_r"] <= 1
