"""Acceptance: `interp ioi` / `interp discover` on tiny local folders of other families.

Each folder is a tiny random model saved by `tiny_families.save_tiny_folder` (HF weights +
the GPT-2 tokenizer), loaded by the CLI like any local model. The path patching to logits in
the summary must equal the naive reference (two hooked bridge forwards per sender).
"""

import json

import pytest
import torch
from tiny_families import save_tiny_folder

import interp
from interp.cli import main
from interp.ioi.dataset import build_ioi
from interp.nodes import all_heads
from interp.patching import prepare_runs
from interp.patching.naive import path_patch_naive


@pytest.mark.parametrize("family", ["neox", "gemma2", "qwen3", "stablelm"])
def test_ioi_on_a_tiny_folder_matches_naive(family, tmp_path, capsys):
    folder = save_tiny_folder(family, tmp_path / family)
    rc = main(["ioi", "--model", str(folder), "--n-prompts", "8", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "Traceback" not in err
    assert ("general path" in err) == (family == "stablelm")
    summary = json.loads(next((tmp_path / "o").rglob("summary.json")).read_text())
    model = interp.load_model(str(folder), device="cpu")
    runs = prepare_runs(model, build_ioi(model, 8, 0).batch)
    ref = path_patch_naive(model, runs, all_heads(model.cfg.n_layers, model.cfg.n_heads))
    got = torch.tensor(summary["path_patching_to_logits"]).flatten()
    assert ref.abs().max() > 1e-3
    assert torch.allclose(got, ref.float(), atol=1e-4)


def test_discover_on_a_tiny_neox_folder(tmp_path, capsys):
    folder = save_tiny_folder("neox", tmp_path / "neox")
    rc = main(["discover", "--task", "greater-than", "--model", str(folder), "--n-prompts", "8",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    assert "Traceback" not in capsys.readouterr().err
