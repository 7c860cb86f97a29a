"""The experiment runner and run folders: resolved names, overwrite guard, whole-run swaps,
locks, and checks that happen before any model loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interp.cli import main
from interp.errors import UserError
from interp.outputs import OverwriteError, RunFolder, RunLockedError, safe_name, write_json
from interp.runner import ExperimentRun, RunOptions, check_memory, prompt_bytes

ROOT = Path(__file__).resolve().parent.parent


def _no_load(monkeypatch):
    """Make any model load fail loudly: the checks under test must come first."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the check")
    monkeypatch.setattr("interp.models.loading.load_model", refuse)


def _complete(folder: RunFolder, files: dict[str, str], config: dict) -> Path:
    with folder as run:
        for name, text in files.items():
            (run.staging / name).write_text(text)
        write_json(run.staging / "summary.json", {"config": config})
        return run.commit()


# --- model names -----------------------------------------------------------------------

def test_auto_writes_under_the_resolved_model(tmp_path, monkeypatch):
    """`--model auto` once wrote <out>/auto/capitals/ and recorded "auto" as the model."""
    monkeypatch.setattr("interp.models.specs._resolve_auto", lambda: "random:tiny")
    assert main(["capitals", "--out", str(tmp_path), "--n-prompts", "3"]) == 0
    assert not (tmp_path / "auto").exists()
    summary = json.loads((tmp_path / "random-tiny" / "capitals" / "summary.json").read_text())
    assert summary["config"]["model"] == "random:tiny"
    assert summary["provenance"]["model"] == "random:tiny"
    assert summary["model"] == "random:tiny"


def test_auto_without_gpt2_targets_the_smollm2_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("interp.models.specs.gpt2_cached", lambda spec: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = ExperimentRun(RunOptions(model="auto", out=tmp_path), "capitals", {"n": 1})
    assert run.target == tmp_path / "smollm2-135m" / "capitals"
    assert run.config["model"] == "smollm2-135m"


# --- overwrite guard and whole-run replacement --------------------------------------------

def test_same_config_replaces_different_config_needs_overwrite(tmp_path):
    target = tmp_path / "m" / "exp"
    _complete(RunFolder(target, {"seed": 0}), {"a.html": "old"}, {"seed": 0})
    _complete(RunFolder(target, {"seed": 0}), {"b.html": "new"}, {"seed": 0})
    assert sorted(p.name for p in target.iterdir()) == ["b.html", "summary.json"]
    with pytest.raises(OverwriteError, match="--overwrite"):
        RunFolder(target, {"seed": 1}).__enter__()


def test_overwrite_leaves_no_stale_file(tmp_path):
    """--overwrite once kept old attention_L*.html files next to the new run's."""
    target = tmp_path / "m" / "ioi"
    _complete(RunFolder(target, {"seed": 0}),
              {"attention_L0H1.html": "old", "attention_L1H2.html": "old"}, {"seed": 0})
    _complete(RunFolder(target, {"seed": 1}, overwrite=True),
              {"attention_L1H3.html": "new"}, {"seed": 1})
    assert sorted(p.name for p in target.iterdir()) == ["attention_L1H3.html", "summary.json"]
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == ["ioi"]  # no leftovers


@pytest.mark.parametrize("content", [b"[1, 2]\n", b"\x00\xff\xfe binary", b'{"no": "config"}'])
def test_unreadable_summary_is_another_run(tmp_path, content):
    """A summary.json that is a list or binary once raised AttributeError/UnicodeDecodeError."""
    target = tmp_path / "m" / "exp"
    target.mkdir(parents=True)
    (target / "summary.json").write_bytes(content)
    with pytest.raises(OverwriteError, match="unreadable summary.json"):
        RunFolder(target, {"seed": 0}).__enter__()
    _complete(RunFolder(target, {"seed": 0}, overwrite=True), {}, {"seed": 0})
    assert json.loads((target / "summary.json").read_text()) == {"config": {"seed": 0}}


def test_folder_of_other_files_is_not_replaced_silently(tmp_path):
    target = tmp_path / "m" / "exp"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(OverwriteError, match="no summary.json"):
        RunFolder(target, {"seed": 0}).__enter__()


def test_failed_run_leaves_the_old_one_and_no_staging(tmp_path):
    target = tmp_path / "m" / "exp"
    _complete(RunFolder(target, {"seed": 0}), {"a.html": "old"}, {"seed": 0})
    with pytest.raises(KeyboardInterrupt), RunFolder(target, {"seed": 1}, True) as run:
        (run.staging / "a.html").write_text("half")
        raise KeyboardInterrupt
    assert (target / "a.html").read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == [".exp.lock", "exp"]


def test_stale_staging_of_a_killed_run_is_removed(tmp_path):
    target = tmp_path / "m" / "exp"
    stale = target.with_name(".exp.staging-99999-abc")
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text("{}")
    _complete(RunFolder(target, {"seed": 0}), {}, {"seed": 0})
    assert not stale.exists()


def test_second_concurrent_run_fails_at_once_naming_the_first(tmp_path):
    target = tmp_path / "m" / "exp"
    with RunFolder(target, {"seed": 0}):
        code = ("import sys; from interp.outputs import RunFolder\n"
                "RunFolder(sys.argv[1], {'seed': 1}).__enter__()")
        proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 1
        assert "RunLockedError" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
        with pytest.raises(RunLockedError, match="another run"):
            RunFolder(target, {"seed": 1}).__enter__()  # in-process too (flock is per open)
    _complete(RunFolder(target, {"seed": 0}), {}, {"seed": 0})  # free again afterwards


# --- checks before the model loads ---------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--out", "{file}"], "is a file, not a folder"),
    (["--device", "foo"], "--device foo: unknown device 'foo': use cpu, cuda"),
    (["--model", "nonsense"], "Unknown model spec 'nonsense'"),
])
def test_bad_run_options_fail_before_loading(tmp_path, monkeypatch, capsys, argv, message):
    _no_load(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = [a.replace("{file}", str(afile)) for a in argv]
    assert main(["capitals", "--model", "random:tiny", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_cuda_without_cuda_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    import torch

    _no_load(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["capitals", "--model", "random:tiny", "--device", "cuda",
                 "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--device cuda: device 'cuda': CUDA is not available on this machine; use device " \
           "cpu" in err


def test_unwritable_out_check(tmp_path, monkeypatch):
    """os.access stubbed: this machine's tests run as root, who may write anywhere."""
    from interp import runner

    monkeypatch.setattr(runner.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=r"--out .* is not writable; pass a folder"):
        runner.check_out(tmp_path / "x" / "y")


def test_tilde_in_out_is_expanded(tmp_path, monkeypatch):
    """`--out=~/x` (no shell expansion after "=") once created a literal ./~ folder."""
    from interp.commands import _args

    monkeypatch.setenv("HOME", str(tmp_path))
    assert _args.out_folder("~/x") == tmp_path / "x"
    run = ExperimentRun(RunOptions(model="random:tiny", out=Path("~/x")), "capitals", {})
    assert run.target == tmp_path / "x" / "random-tiny" / "capitals"


def test_occupied_target_fails_before_loading(tmp_path, monkeypatch, capsys):
    target = tmp_path / "random-tiny" / "capitals"
    target.mkdir(parents=True)
    (target / "summary.json").write_text("[1, 2]")
    _no_load(monkeypatch)
    assert main(["capitals", "--model", "random:tiny", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "holds a different run" in err and len(err.strip().splitlines()) == 1


def test_custom_task_name_cannot_escape_the_output_folder(tmp_path):
    run = ExperimentRun(RunOptions(model="random:tiny", out=tmp_path), "discover-../../x", {})
    assert run.target.parent == tmp_path / "random-tiny"
    assert not run.target.name.startswith(".")


def test_memory_estimate_refuses_huge_prompt_counts(tiny, monkeypatch):
    per = prompt_bytes(tiny.cfg, 16)
    # a hand count for random:tiny: 16 tokens x (50257 logits + 2 runs x 2 layers x
    # (9 x 64 + 4 x 16) activations) x 4 bytes
    assert per == 4 * 16 * (50257 + 2 * 2 * (9 * 64 + 4 * 16))
    monkeypatch.setattr("interp.runner.available_memory", lambda device: 100 * per)
    check_memory(tiny, 100)
    with pytest.raises(UserError, match=r"--n-prompts 101 needs at least .* GiB .* pass "
                                        r"--n-prompts 100 or fewer"):
        check_memory(tiny, 101)


def test_memory_check_runs_before_the_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("interp.runner.available_memory", lambda device: 10**6)
    monkeypatch.setattr("interp.tasks.induction.InductionTask.build",
                        lambda *a: pytest.fail("dataset built before the memory check"))
    assert main(["discover", "--task", "induction", "--model", "random:tiny", "--n-prompts",
                 "100000", "--out", str(tmp_path)]) == 1
    assert "--n-prompts 100000 needs at least" in capsys.readouterr().err
    assert not (tmp_path / "random-tiny" / "discover-induction").exists()


def test_cli_run_into_a_locked_target_fails_at_once(tmp_path, monkeypatch, capsys):
    """Two simultaneous runs into one --out once both exited 0 with mixed files."""
    _no_load(monkeypatch)
    with RunFolder(tmp_path / "random-tiny" / "capitals", {}):
        assert main(["capitals", "--model", "random:tiny", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"is being written by another run (pid {os.getpid()}: " in err
    assert len(err.strip().splitlines()) == 1


def test_library_run_of_a_loaded_model_records_it(tiny, tmp_path):
    with ExperimentRun.for_model(tiny, tmp_path, "probe", {"n": 1}, seed=3) as run:
        with run.stage("work"):
            (run.folder / "a.txt").write_text("x")
        folder = run.finish({"value": 1.5})
    assert folder == tmp_path / "random-tiny" / "probe" == run.folder
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["config"] == {"model": "random:tiny", "seed": 3, "n": 1}
    prov = summary["provenance"]
    assert prov["model"] == "random:tiny" and "work" in prov["wall_time_s"]
    assert (prov["bos_token"], prov["bos_token_id"]) == (tiny.interp_bos.token, tiny.interp_bos.id)
    assert (folder / "a.txt").read_text() == "x"


def test_custom_task_named_to_escape_is_refused_before_anything_is_written(tmp_path, capsys):
    """A custom task named "../../x" once made discover write outside --out."""
    task_file = tmp_path / "evil.py"
    task_file.write_text("class Evil:\n    name = '../../x'\n"
                         "    def build(self, model, n_prompts, seed):\n        raise SystemExit\n")
    out = tmp_path / "a" / "b" / "out"
    assert main(["discover", "--task", f"{task_file}:Evil", "--model", "random:tiny", "--out",
                 str(out)]) == 1
    assert "the task's name is '../../x'" in capsys.readouterr().err
    made = [p for p in tmp_path.rglob("*") if p != task_file and not p.name == "__pycache__"]
    assert made == [], made


def test_experiment_names_are_sanitised():
    assert safe_name("discover-../../x") == "discover-..-..-x"
    assert safe_name("../../x") == "-..-x" and safe_name("..") == "unnamed"


FREED_HEAP = """
import torch
from interp.runner import return_freed_memory

def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20

small = [torch.ones(16_000) for _ in range(4_000)]  # 64 KB each: heap chunks, not mmaps
pin = torch.ones(16_000)  # allocated last: the freed chunks are not at the heap's top
high = rss_mb()
del small
kept = rss_mb()
print(return_freed_memory(), round(high), round(kept), round(rss_mb()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_tensors_go_back_to_the_os_only_when_trimmed():
    """~250 MB of small tensors freed mid-heap stay resident until return_freed_memory."""
    out = subprocess.run([sys.executable, "-c", FREED_HEAP], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    trimmed, *sizes = out.stdout.split()
    high, kept, after = map(int, sizes)
    assert trimmed == "True"
    assert kept > high - 50  # glibc keeps the freed pages...
    assert after < high - 200  # ...until they are handed back
