"""How a result was made: command, model, seed, package versions, git commit, timings."""

import platform
import resource
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("interp", "torch", "transformer-lens", "transformers", "numpy", "plotly")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(root: Path | None = None) -> str:
    """HEAD of the repo this package lives in, with "-dirty" if tracked files outside
    `results/` have changes (the outputs of earlier runs say nothing about the code)."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("-dirty" if dirty.strip() else "")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (the high-water mark), in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


class Provenance:
    """Collects the facts of a run; `record()` returns the dict stored in summary.json.

    Example:
        >>> prov = Provenance(model="smollm2-135m", seed=0)
        >>> with prov.stage("dataset"):
        ...     pass
        >>> prov.record()["seed"]
        0
    """

    def __init__(self, model: str, seed: int, **extra):
        self.model = model
        self.seed = seed
        self.extra = extra
        self.stages: dict[str, float] = {}
        self.costs: dict[str, dict] = {}  # per stage: cpu, RSS high-water, block-tokens
        self.started = datetime.now(timezone.utc)

    def set_model(self, model) -> None:
        """Record the model actually loaded: its resolved spec and its BOS token."""
        from interp.tokens import model_bos

        self.model = model.interp_spec
        self.extra.update(model_bos(model).record())

    @contextmanager
    def stage(self, name: str):
        from interp.patching.counter import COUNTER

        t0, c0, n0 = time.perf_counter(), time.process_time(), COUNTER.tokens
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - t0, 3)
            self.costs[name] = {"cpu_s": round(time.process_time() - c0, 3),
                                "rss_high_water_mb": peak_rss_mb(),
                                "block_tokens": COUNTER.tokens - n0}

    def cost_table(self, n_layers: int, batch_tokens: int,
                   minimums: dict[str, float] | None = None) -> dict[str, dict]:
        """Per stage: wall and CPU seconds, RSS high-water, forward-equivalents (counted
        block-tokens over one forward of `batch_tokens` tokens through `n_layers` blocks)
        and, where `minimums` names the stage, the least forward-equivalents it needs."""
        from interp.patching.counter import forward_equivalents

        least = minimums or {}
        return {name: {"wall_s": self.stages[name], "cpu_s": cost["cpu_s"],
                       "rss_high_water_mb": cost["rss_high_water_mb"],
                       "forward_equivalents": round(forward_equivalents(
                           cost["block_tokens"], n_layers, batch_tokens), 3),
                       "minimum_forward_equivalents": (None if name not in least
                                                       else round(least[name], 3))}
                for name, cost in self.costs.items()}

    def record(self) -> dict:
        return {
            "command": command_line(),
            "model": self.model,
            "seed": self.seed,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "started_utc": self.started.isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.machine()},
            "wall_time_s": self.stages,
            "stage_costs": self.costs,
            **self.extra,
        }
