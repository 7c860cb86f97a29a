import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.circuits.format import load_circuit
from interp.cli import main
from interp.ioi.classify import Classifier, Thresholds
from interp.ioi.dataset import build_ioi
from interp.ioi.edges import class_edges
from interp.ioi.paper import compare_with_paper, paper_reference
from interp.ioi.scores import attention_scores
from interp.patching import prepare_runs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("r")
    assert main(["ioi", "--model", "random:tiny", "--n-prompts", "8", "--n-mean-prompts", "2",
                 "--out", str(out), "--quiet"]) == 0
    return out / "random-tiny" / "ioi"


def test_outputs_written(tiny_run):
    s = json.loads((tiny_run / "summary.json").read_text())
    for key in ("model", "n_prompts", "seed", "prepend_bos", "bos_token", "clean_logit_diff",
                "clean_accuracy", "corrupted_logit_diff", "path_patching_to_logits",
                "head_classes", "circuit", "paper_comparison", "provenance", "config"):
        assert key in s
    assert s["model"] == "random:tiny" and s["prepend_bos"] is False
    assert len(s["path_patching_to_logits"]) == 2 and len(s["path_patching_to_logits"][0]) == 4
    assert s["paper_comparison"]["status"] == "no paper reference for this model"
    prov = s["provenance"]
    assert prov["seed"] == 0 and "torch" in prov["versions"] and prov["git_commit"]
    assert set(prov["wall_time_s"]) >= {"dataset", "mean_sample", "classification"}
    lines = (tiny_run / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == 8
    for fig in s["figures"].values():
        html = (tiny_run / fig).read_text()
        assert "../../plotly.min.js" in html and "cdn.plot.ly" not in html
    assert (tiny_run.parent.parent / "plotly.min.js").exists()


def test_random_model_is_not_labelled(tiny_run):
    """random:tiny is near chance on IOI: no labels, the reason recorded, maps still there."""
    s = json.loads((tiny_run / "summary.json").read_text())
    assert s["clean_accuracy"] < 0.6 and "accuracy" in s["classification_skipped"]
    assert not any(s["head_classes"].values()) and s["circuit_file"] is None
    assert s["circuit"] == {"skipped": s["classification_skipped"]}
    assert "path_patching_step_logits" in s["figures"]
    assert s["mean_sample"]["n_mean_prompts_per_template"] == 2 and s["dataset"] == "paper"


def test_circuit_file_reads_back(tmp_path):
    """With the accuracy gate lowered, random:tiny is classified end to end."""
    assert main(["ioi", "--model", "random:tiny", "--n-prompts", "8", "--n-mean-prompts", "2",
                 "--threshold", "min_accuracy=0", "--dataset", "extended", "--out",
                 str(tmp_path), "--quiet"]) == 0
    folder = tmp_path / "random-tiny" / "ioi"
    s = json.loads((folder / "summary.json").read_text())
    assert s["classification_skipped"] is None and s["dataset"] == "extended"
    found = {k: v for k, v in s["head_classes"].items() if v}
    if found:
        spec = load_circuit(folder / "circuit.yaml")
        assert {k: [str(n) for n in g.nodes] for k, g in spec.groups.items()} == found
        assert spec.edges == class_edges(found)
        assert "edge_faithfulness" in s["circuit"]
    spread = s["circuit"]["faithfulness_spread"]["classes"]
    assert spread["min"] <= spread["mean"] <= spread["max"] and len(spread["values"]) == 5
    assert "faithfulness_with_unclassified" in s["circuit"]
    json.loads((folder / "summary.json").read_text(), parse_constant=lambda c: 1 / 0)


def test_different_run_is_not_overwritten(tiny_run, capsys):
    out = tiny_run.parent.parent
    before = (tiny_run / "summary.json").read_text()
    code = main(["ioi", "--model", "random:tiny", "--n-prompts", "8", "--n-mean-prompts", "2",
                 "--seed", "1", "--out", str(out), "--quiet"])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert (tiny_run / "summary.json").read_text() == before


def test_gpt2_without_weights_exits_cleanly(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "interp.cli", "ioi", "--model", "gpt2",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "not available" in proc.stderr and "smollm2-135m" in proc.stderr


def test_paper_comparison_only_for_gpt2():
    ref = paper_reference()
    same = compare_with_paper("gpt2", ref["classes"], {"faithfulness": 0.87})
    assert all(c["precision"] == 1 and c["recall"] == 1 for c in same["classes"].values())
    half = compare_with_paper("gpt2", {"name_movers": ["L9H9", "L1H1"]}, {})
    assert half["classes"]["name_movers"]["precision"] == 0.5
    assert half["classes"]["name_movers"]["recall"] == pytest.approx(1 / 3)
    other = compare_with_paper("smollm2-135m", ref["classes"], {})
    assert other["status"] == "no paper reference for this model"


def test_paper_circuit_file_agrees_with_reference():
    spec = load_circuit(ROOT / "circuits" / "ioi_gpt2_small_paper.yaml")
    ref = paper_reference()["classes"]
    assert {k: [str(n) for n in g.nodes] for k, g in spec.groups.items()} == ref
    assert sum(len(v) for v in ref.values()) == 26


@pytest.mark.offline_model
def test_smollm2_solves_ioi_and_has_a_name_mover(smol):
    runs = prepare_runs(smol, build_ioi(smol, n_prompts=20, seed=0).batch)
    assert runs.clean_metric.mean() > 2
    att = attention_scores(smol, runs.clean_cache, runs.batch)
    movers, _ = Classifier(smol, runs, att, Thresholds(), progress=False).name_movers()
    assert len(movers) >= 1


def test_exact_mode_patches_every_head(tmp_path, tiny_run, tiny):
    """`--exact` stores exact activation patching; the default stores gradient estimates."""
    from interp.patching import act_patch_heads

    assert main(["ioi", "--model", "random:tiny", "--n-prompts", "8", "--n-mean-prompts", "2",
                 "--out", str(tmp_path), "--exact", "--quiet"]) == 0
    exact = json.loads((tmp_path / "random-tiny" / "ioi" / "summary.json").read_text())
    default = json.loads((tiny_run / "summary.json").read_text())
    assert exact["activation_patching_method"] == "exact"
    assert default["activation_patching_method"] == "attribution"
    assert exact["config"]["paths"] == "exact" and default["config"]["paths"] == "screen"
    runs = prepare_runs(tiny, build_ioi(tiny, 8, 0).batch)
    ref = act_patch_heads(tiny, runs, "noise", "END", progress=False)
    assert torch.allclose(torch.tensor(exact["activation_patching_end"]), ref, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--threshold", "name_mover=abc"], "--threshold 'name_mover=abc'"),
    (["--threshold", "name_mover=-1"], "--threshold name_mover=-1.0"),
    (["--threshold", "name_mover=nan"], "--threshold name_mover=nan"),
    (["--threshold", "backup=inf"], "--threshold backup=inf"),
    (["--threshold", "min_attention=1.5"], "--threshold min_attention=1.5"),
    (["--threshold", "max_per_class=0"], "--threshold max_per_class=0"),
    (["--threshold", "nope=1"], "--threshold 'nope=1'"),
])
def test_bad_values_are_refused_before_loading(tmp_path, capsys, monkeypatch, args, message):
    def no_load(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("interp.models.loading.load_model", no_load)
    code = main(["ioi", "--model", "random:tiny", *args, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
