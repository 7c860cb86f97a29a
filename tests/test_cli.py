"""The command line: light imports, one-line user errors, tracebacks for bugs, --debug,
and arguments checked while parsing (before any model loads)."""

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from interp import cli
from interp.cli import COMMANDS, main
from interp.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformer_lens", "transformers", "plotly")


def _imported_by(code: str) -> list[str]:
    """The heavy libraries in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True).stdout
    return eval(out.strip().splitlines()[-1])


def test_import_interp_loads_no_heavy_library():
    """`import interp` once imported TransformerLens' bridge (about 5 s of CPU)."""
    assert _imported_by("import interp, interp.cli, interp.models, interp.runner") == []


@pytest.mark.parametrize("argv", [["--help"], ["models"], *([c, "--help"] for c in (
    "ioi", "discover", "evaluate-circuit", "bench", "report"))])
def test_help_and_models_load_no_heavy_library(argv):
    """Heavy libraries load inside the commands that run, not to parse or list them."""
    code = (f"import sys\nfrom interp.cli import main\ntry:\n    main({argv!r})\n"
            "except SystemExit:\n    pass")
    assert _imported_by(code) == []


def test_load_model_is_still_an_attribute():
    import interp

    assert callable(interp.load_model) and "smollm2-135m" in interp.MODEL_SPECS
    with pytest.raises(AttributeError):
        interp.no_such_thing  # noqa: B018


def test_command_table_matches_the_modules():
    """COMMANDS lists every command module, with the help its parser registers."""
    modules = {p.stem.replace("_", "-") for p in (ROOT / "interp" / "commands").glob("*.py")
               if not p.stem.startswith("_")}
    assert set(COMMANDS) == modules
    parser = cli.build_parser()  # every command fully registered
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == COMMANDS


def test_user_error_is_one_line(monkeypatch, capsys):
    def fail(args):
        raise UserError("--thing 3 is wrong; pass 4")
    monkeypatch.setattr(importlib.import_module("interp.commands.models"), "run", fail)
    assert main(["models"]) == 1
    assert capsys.readouterr().err == "interp models: error: --thing 3 is wrong; pass 4\n"


def test_debug_shows_the_traceback_of_a_user_error(monkeypatch, capsys):
    def fail(args):
        raise UserError("bad input")
    monkeypatch.setattr(importlib.import_module("interp.commands.models"), "run", fail)
    for argv in (["--debug", "models"], ["models", "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "in fail" in err
        assert err.endswith("interp models: error: bad input\n")


def test_internal_bug_is_not_hidden_as_a_user_error(monkeypatch):
    """cli.USER_ERRORS once caught every ValueError: a bug printed as one line."""
    def bug(args):
        return list(zip([1, 2], [1], strict=True))
    monkeypatch.setattr(importlib.import_module("interp.commands.models"), "run", bug)
    with pytest.raises(ValueError, match="zip"):
        main(["models"])


@pytest.mark.parametrize("argv, message", [
    (["capitals", "--seed", str(2**64)], "argument --seed: must be from 0 to 2**64 - 1"),
    (["capitals", "--seed", "-1"], "argument --seed: must be from 0 to 2**64 - 1"),
    (["capitals", "--seed", "x"], "argument --seed: 'x' is not an integer"),
    (["discover", "--task", "induction", "--n-prompts", "0"],
     "argument --n-prompts: must be >= 1, got 0"),
    (["discover", "--task", "induction", "--steps", "0"], "argument --steps: must be >= 1"),
    (["ioi", "--top-k", "0"], "argument --top-k: must be >= 1"),
    (["ioi", "--n-prompts", "0"], "argument --n-prompts: must be >= 1"),
    (["ioi", "--n-mean-prompts", "0"], "argument --n-mean-prompts: must be >= 1"),
    (["discover", "--task", "induction", "--target", "nan"],
     "argument --target: must be a finite number, got 'nan'"),
    (["discover", "--task", "induction", "--target", "0"],
     "argument --target: must be in (0, 1], got 0.0"),
    (["discover", "--task", "induction", "--target", "1.5"], "must be in (0, 1], got 1.5"),
    (["evaluate-circuit", "--task", "ioi", "--circuit", "{folder}"],
     "argument --circuit: {folder} is a folder; pass a file"),
    (["evaluate-circuit", "--task", "ioi", "--circuit", "{folder}/no.yaml"],
     "does not exist; pass an existing file"),
    (["evaluate-circuit", "--task", "ioi", "--circuit", "{file}", "--n-prompts", "0"],
     "argument --n-prompts: must be >= 1"),
    (["evaluate-circuit", "--task", "ioi", "--circuit", "{file}", "--minimality-threshold",
      "-5"], "argument --minimality-threshold: must be >= 0, got -5.0"),
    (["evaluate-circuit", "--task", "ioi", "--circuit", "{file}", "--minimality-threshold",
      "inf"], "argument --minimality-threshold: must be a finite number"),
])
def test_bad_arguments_fail_while_parsing(tmp_path, capsys, argv, message):
    circuit = tmp_path / "c.yaml"
    circuit.write_text("name: x\ngroups:\n  a: [L0H0]\n")
    fill = {"{folder}": str(tmp_path), "{file}": str(circuit)}
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
        message = message.replace(key, value)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_unknown_task_is_a_user_error(tmp_path, capsys):
    assert main(["discover", "--task", "nope", "--model", "random:tiny", "--out",
                 str(tmp_path)]) == 1
    assert "unknown task 'nope'; valid tasks:" in capsys.readouterr().err


def test_gpt2_cached_reads_the_hub_cache_layout(tmp_path, monkeypatch):
    """The light check agrees with huggingface_hub's own lookup on a hand-made cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    from interp.models.specs import gpt2_cached

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--openai-community--gpt2"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text("{}")

    def hub_says() -> bool:
        return all(isinstance(try_to_load_from_cache("openai-community/gpt2", f,
                                                     cache_dir=str(tmp_path)), str)
                   for f in ("config.json", "model.safetensors"))

    assert gpt2_cached("gpt2") is False and hub_says() is False  # weights missing
    (snap / "model.safetensors").write_bytes(b"w")
    assert gpt2_cached("gpt2") is True and hub_says() is True
    assert gpt2_cached("gpt2-medium") is False
