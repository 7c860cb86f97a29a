"""Whole-run atomicity: a run killed at any point (SIGINT, SIGKILL) leaves the previous
complete run in place, never a mix of two runs; the next run cleans up after it.

Once, after SIGINT during an `--overwrite` run, summary.json said 300 prompts while
dataset.jsonl held 200 lines, and after SIGKILL of `discover --overwrite` circuit.yaml was
new and summary.json old.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "ioi": (["ioi", "--n-prompts", "8", "--quiet"], "ioi"),
    "discover": (["discover", "--task", "induction", "--n-prompts", "8"],
                 "discover-induction"),
}
# kill points: (signal, file whose appearance in the staging folder triggers it; None = the
# staging folder itself, i.e. while the model loads)
KILLS = {
    "ioi": [(signal.SIGKILL, None), (signal.SIGINT, "dataset.jsonl"),
            (signal.SIGKILL, "dla_heads.html")],
    "discover": [(signal.SIGINT, None), (signal.SIGKILL, "faithfulness_curve.html")],
}


def _start(out: Path, command: str, seed: int) -> subprocess.Popen:
    args, _ = COMMANDS[command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "interp.cli", *args, "--model", "random:tiny",
                             "--seed", str(seed), "--out", str(out), "--overwrite"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """Give the child the default SIGINT disposition: a suite started in the background
    (`cmd &` in a script) ignores SIGINT, and children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_complete(folder: Path, command: str, seed: int) -> None:
    """One whole run: its summary's seed, and exactly the files that run writes."""
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["config"]["seed"] == seed
    names = set(_snapshot(folder))
    if command == "ioi":
        circuit = [summary["circuit_file"]] if summary["circuit_file"] else []  # none if skipped
        assert names == {"summary.json", "dataset.jsonl", *circuit, *summary["figures"].values()}
        lines = (folder / "dataset.jsonl").read_text().splitlines()
        assert len(lines) == summary["n_prompts"]
    else:
        assert names == {"summary.json", "circuit.yaml", "faithfulness_curve.html",
                         "head_scores.html"}


def _kill_when(proc: subprocess.Popen, parent: Path, experiment: str, trigger: str | None,
               sig: int) -> tuple[int, str]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        staging = list(parent.glob(f".{experiment}.staging-*"))
        if staging and (trigger is None or any((s / trigger).exists() for s in staging)):
            proc.send_signal(sig)
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {trigger or 'staging'} appeared: "
                        f"{proc.stderr.read()}")
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("the kill point never came")
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ioi", "discover"])
def test_killed_runs_leave_the_old_run_whole(tmp_path, command):
    _, experiment = COMMANDS[command]
    parent, target = tmp_path / "random-tiny", tmp_path / "random-tiny" / experiment
    old = _start(tmp_path, command, seed=0)
    assert old.wait(timeout=300) == 0, old.stderr.read()
    _check_complete(target, command, seed=0)
    before = _snapshot(target)
    for sig, trigger in KILLS[command]:
        code, err = _kill_when(_start(tmp_path, command, seed=1), parent, experiment, trigger,
                               sig)
        if sig == signal.SIGINT:
            assert code == 130, err
            assert err.strip().splitlines()[-1] == f"interp {command}: interrupted"
            assert "Traceback" not in err
        else:
            assert code == -signal.SIGKILL
        assert _snapshot(target) == before, f"{signal.Signals(sig).name} at {trigger}"
    new = _start(tmp_path, command, seed=1)
    assert new.wait(timeout=300) == 0, new.stderr.read()
    _check_complete(target, command, seed=1)
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{experiment}.")]
    assert leftovers == [f".{experiment}.lock"]  # killed runs' staging folders are gone
