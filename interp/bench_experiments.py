"""`interp bench --experiments`: the issue's circuit pipelines, end to end, side by side.

Each command runs in its own child process (`python -m interp.bench_experiments CHILD`), so
its peak RSS is that command's own high-water mark (`getrusage` of the child, model load and
imports included); wall and CPU time are the child's too, from start to exit. Outputs go to
a temporary folder, never to `results/`. Forward-equivalents count token x block evaluations
(`interp.patching.counter`; backward passes not counted) in units of one forward of the
command's prompt batch (its first full batch through block 0, padding included).

Minimum forward-equivalents: the sum of the stage minimums each command records in its
summary.json (`costs` of `interp ioi` and `evaluate-circuit`, see `interp.ioi.costs` and
`interp.edge_circuit.minimum_forwards`; `stages` of `discover`). discover's stages count its
EAP backward as two forwards, which the measured column does not: its measured figure can be
below its minimum.

Example:
    >>> report = run_experiments("smollm2-135m")
    >>> print(format_experiments(report))
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interp.provenance import peak_rss_mb

IOI_CIRCUIT = Path("results/smollm2-135m/ioi/circuit.yaml")


def experiments(model: str, circuit: Path = IOI_CIRCUIT) -> list[dict]:
    """The issue's table: name, CLI arguments, prompts, target seconds, minimum fwd-eq."""
    return [
        {"name": "ioi --n-prompts 100", "n_prompts": 100, "target_s": 60,
         "argv": ["ioi", "--model", model, "--n-prompts", "100", "--quiet"]},
        {"name": "ioi --exact --n-prompts 100", "n_prompts": 100, "target_s": 240,
         "argv": ["ioi", "--model", model, "--n-prompts", "100", "--exact", "--quiet"]},
        {"name": "discover --task greater-than --n-prompts 40", "n_prompts": 40,
         "target_s": 60,
         "argv": ["discover", "--model", model, "--task", "greater-than", "--n-prompts", "40"]},
        {"name": "evaluate-circuit --task ioi", "n_prompts": 100, "target_s": 20,
         "argv": ["evaluate-circuit", "--model", model, "--task", "ioi", "--circuit",
                  str(circuit)]},
    ]


RSS_TARGET_MB = 2500  # peak RSS of `interp ioi`


# ---------------------------------------------------------------- the child

def _unit_hook(n_prompts: int, seen: dict):
    def hook(module, args):
        if "unit" not in seen and type(module).__name__ == "BlockBridge" and args \
                and getattr(args[0], "dim", lambda: 0)() >= 2 and args[0].shape[0] == n_prompts:
            seen["unit"] = args[0].shape[:-1].numel()
    return hook


def _stage_costs(out: Path) -> dict | None:
    """The per-stage work the command recorded in its summary.json (`costs` of ioi and
    evaluate-circuit, `stages` of discover), each with `minimum_forward_equivalents`."""
    found = sorted(out.glob("*/*/summary.json"))
    if not found:
        return None
    summary = json.loads(found[0].read_text())
    return summary.get("costs") or summary.get("stages")


def child(spec: dict) -> dict:
    """Run one command in this process; its wall, CPU, peak RSS and forward-equivalents."""
    import torch

    from interp.cli import main
    from interp.patching.counter import counting

    out = Path(tempfile.mkdtemp(prefix="interp-experiments-"))
    argv = [*spec["argv"], "--out", str(out), "--overwrite"]
    seen: dict = {}
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        _unit_hook(spec["n_prompts"], seen))
    t0 = time.perf_counter()
    try:
        with counting() as counter:
            rc = main(argv)
    finally:
        handle.remove()
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    n_layers = _n_layers(spec["argv"])
    fwd_eq = counter.tokens / (n_layers * seen["unit"]) if seen.get("unit") else None
    result = {"rc": rc, "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime
                                                                  + usage.ru_stime, 2),
              "peak_rss_mb": peak_rss_mb(),
              "forward_equivalents": None if fwd_eq is None else round(fwd_eq, 2)}
    costs = _stage_costs(out)
    if costs:
        result["stages"] = costs
        result["minimum"] = round(sum(c.get("minimum_forward_equivalents") or 0
                                      for c in costs.values()), 2)
    return result


def _n_layers(argv: list[str]) -> int:
    from interp.models import load_model

    return load_model(argv[argv.index("--model") + 1]).cfg.n_layers  # cached in-process


# ---------------------------------------------------------------- the parent

def run_one(spec: dict) -> dict:
    """One command in a fresh child process (its own RSS high-water mark)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "interp.bench_experiments", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"rc": proc.returncode, "error": tail}
    return json.loads(lines[-1])


def run_experiments(model: str = "smollm2-135m", only: list[str] | None = None,
                    circuit: Path = IOI_CIRCUIT) -> dict:
    """Every experiment (or those whose name starts with one of `only`), one child each."""
    from interp.bench import load_now, machine_info
    from interp.provenance import Provenance

    machine = {**machine_info(), "load_before": load_now()}
    prov = Provenance(model=model, seed=0, bos="each command's default (its summary.json)")
    rows = []
    for spec in experiments(model, circuit):
        if only and not any(spec["name"].startswith(o) for o in only):
            continue
        with prov.stage(spec["name"]):
            result = run_one(spec)
        minimum = result.pop("minimum", spec.get("minimum"))
        rows.append({"name": spec["name"], "command": "interp " + " ".join(spec["argv"]),
                     "target_s": spec["target_s"], "minimum_forward_equivalents": minimum,
                     **result})
    machine["load_after"] = load_now()
    return {"model": model, "machine": machine, "rss": "per command: the child process's "
            "peak RSS (getrusage ru_maxrss), model load included", "experiments": rows,
            "provenance": prov.record()}


def format_experiments(report: dict) -> str:
    """The printed table: one row per command."""
    m = report["machine"]
    fmt = "{:<46}{:>9}{:>9}{:>8}{:>8}{:>10}{:>9}  {}"
    lines = [f"interp bench --experiments: {report['model']} on {m['slug']} ({m['cores']} cores,"
             f" {m['torch_threads']} torch threads, load {m['load_before'][0]} -> "
             f"{m['load_after'][0]})",
             fmt.format("command", "wall s", "cpu s", "fwd-eq", "min", "RSS MB", "target",
                        "verdict")]
    for row in report["experiments"]:
        if "error" in row:
            lines.append(f"{row['name']:<46} failed (rc {row['rc']}): {row['error']}")
            continue
        fwd = "-" if row["forward_equivalents"] is None else f"{row['forward_equivalents']:.1f}"
        least = row["minimum_forward_equivalents"]
        verdict = "MET" if row["wall_s"] < row["target_s"] else "MISSED"
        if row["name"].startswith("ioi --n-prompts"):
            verdict += f"; RSS {'MET' if row['peak_rss_mb'] < RSS_TARGET_MB else 'MISSED'}" \
                       f" (< {RSS_TARGET_MB} MB)"
        lines.append(fmt.format(row["name"], f"{row['wall_s']:.1f}", f"{row['cpu_s']:.1f}", fwd,
                                "-" if least is None else f"{least:.1f}",
                                f"{row['peak_rss_mb']:.0f}", f"<{row['target_s']} s",
                                verdict))
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
