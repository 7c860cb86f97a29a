"""`interp discover`: an edge-level circuit from EAP / EAP-IG scores, or by ACDC.

`--method eap` (= attribution) / `eap-ig` (= attribution-ig): edges ranked by |score|, the
top k evaluated by edge ablation for several k (`interp.discover`). `--method acdc`: greedy
edge pruning at `--threshold` (`interp.acdc`).

Writes to `<out>/<model>/discover-<task>/` (`-ig` with EAP-IG, `-acdc` with ACDC):
summary.json (faithfulness curve, CPR, CMD, the best circuit, top edges, per-stage time and
forward-equivalents, config, provenance), faithfulness_curve.html and head_scores.html (EAP;
the head scores come with the edge scores, no extra pass), and circuit.yaml, an edge-level
circuit file read by `interp evaluate-circuit`.
"""

from interp.commands._args import add_run_arguments, fraction, non_negative, positive_int
from interp.outputs import model_slug

ALIASES = {"eap": "attribution", "eap-ig": "attribution-ig"}
METHODS = ("eap", "eap-ig", "attribution", "attribution-ig", "acdc")


def register(subparsers) -> None:
    p = subparsers.add_parser("discover", help="automated circuit discovery (EAP, EAP-IG, ACDC)")
    p.add_argument("--task", required=True,
                   help="ioi, greater-than, induction, capitals, or path/to/file.py:Class")
    p.add_argument("--method", default="eap", choices=METHODS,
                   help="eap (= attribution, default), eap-ig (= attribution-ig) or acdc")
    p.add_argument("--steps", type=positive_int, default=5,
                   help="EAP-IG interpolation steps (default 5)")
    p.add_argument("--n-prompts", type=positive_int, default=50, help="prompts (default 50)")
    p.add_argument("--target", type=fraction, default=0.8,
                   help="EAP: best circuit = smallest with normalised faithfulness >= this, "
                        "in (0, 1] (default 0.8)")
    p.add_argument("--node-level", action="store_true",
                   help="EAP: also evaluate the nodes each circuit touches by node ablation")
    p.add_argument("--threshold", type=non_negative, default=None,
                   help="ACDC: keep an edge when removing it moves the metric by more than "
                        "this (default: 1%% of the metric's range, |m(no edges) - m(model)|)")
    p.add_argument("--acdc-metric", default="kl", choices=["kl", "task"],
                   help="ACDC metric: KL to the clean output (default) or the task metric")
    p.add_argument("--prescreen", type=positive_int, default=None,
                   help="ACDC, APPROXIMATION (reported): test only the N edges with the "
                        "largest |EAP| score, ablating all others untested")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.errors import UserError
    from interp.runner import ExperimentRun, RunOptions, check_memory
    from interp.tasks.registry import get_task

    method = ALIASES.get(args.method, args.method)
    if method != "acdc" and (args.threshold is not None or args.prescreen is not None):
        raise UserError("--threshold and --prescreen are ACDC options; add --method acdc "
                        "or drop them")
    task = get_task(args.task)
    config = {"task": args.task, "method": method, "steps": args.steps,
              "n_prompts": args.n_prompts, "target": args.target,
              "threshold": args.threshold, "acdc_metric": args.acdc_metric,
              "prescreen": args.prescreen, "node_level": args.node_level}
    suffix = {"attribution-ig": "-ig", "acdc": "-acdc"}.get(method, "")
    with ExperimentRun(RunOptions.from_args(args), f"discover-{task.name}{suffix}",
                       config) as run:
        check_memory(run.load_model(), args.n_prompts)
        with run.stage("dataset"):
            batch = task.build(run.model, args.n_prompts, args.seed)
        if method == "acdc":
            summary, lines = _acdc(run, task, batch, args)
        else:
            summary, lines = _eap(run, task, batch, args, method)
        folder = run.finish(summary)
    print("\n".join(lines + [f"wrote {folder / 'circuit.yaml'}"]))
    return 0


def _eap(run, task, batch, args, method: str):
    from interp.discover import discover, discover_lines, discover_summary
    from interp.plotting import head_heatmap, save_figure
    from interp.plotting.circuit import faithfulness_curve

    with run.stage("discover"):
        result = discover(run.model, batch, method=method, steps=args.steps,
                          target=args.target, node_level=args.node_level)
    label = f"{run.spec}, {task.name}, {method}"
    save_figure(faithfulness_curve(result, f"Faithfulness vs circuit size ({label})"),
                run.folder / "faithfulness_curve.html", root=run.out)
    grid = result.edge_scores.heads  # head_attribution's grid, from the edge-score passes
    save_figure(head_heatmap(grid.tolist(), f"Head attribution, corrupted -> clean ({label})",
                             "estimated metric change"), run.folder / "head_scores.html",
                root=run.out)
    exact = _write_circuit(run, task, result.best.edges,
                           f"{method}, {result.best.n_edges} edges")
    summary = {"model": run.spec, "task": task.name, "method": method,
               "n_prompts": args.n_prompts, **discover_summary(result, args.target),
               "circuit_file_exact": exact}
    return summary, discover_lines(result, f"{task.name} on {run.spec} ({method})")


def _acdc(run, task, batch, args):
    from interp.acdc import acdc, acdc_lines, acdc_summary
    from interp.patching.runs import prepare_runs

    with run.stage("runs"):
        runs = prepare_runs(run.model, batch)
    with run.stage("acdc"):
        result = acdc(run.model, runs, args.threshold, args.acdc_metric,
                      prescreen=args.prescreen)
    with run.stage("evaluate"):
        summary = acdc_summary(run.model, runs, result)
    exact = _write_circuit(run, task, result.edges,
                           f"acdc, threshold {result.threshold:.4g} ({args.acdc_metric}), "
                           f"{len(result.edges)} edges")
    summary = {"model": run.spec, "task": task.name, "method": "acdc",
               "n_prompts": args.n_prompts, **summary, "circuit_file_exact": exact}
    return summary, acdc_lines(summary, f"{task.name} on {run.spec} (acdc)")


def _write_circuit(run, task, edges, how: str) -> bool:
    """Write circuit.yaml; True when the file's edges (with the format's implicit ones) are
    exactly `edges`, so `evaluate-circuit` reproduces the figure."""
    from interp.circuits.format import load_circuit, write_circuit
    from interp.discover import edge_circuit
    from interp.edges import EdgeGraph

    spec = edge_circuit(edges, f"discover-{task.name}-{model_slug(run.spec)}", run.spec,
                        task.name, f"interp discover, {how}")
    path = write_circuit(spec, run.folder / "circuit.yaml",
                         f"Discovered by `interp discover` on {run.spec} ({task.name}); "
                         "not a paper circuit.")
    exact = set(load_circuit(path).kept_edges(EdgeGraph.of(run.model))) == set(edges)
    if not exact:
        print("note: circuit.yaml leaves the embeddings or the MLPs implicit (no edge from "
              "them was kept), so evaluate-circuit keeps their edges and its figure differs")
    return exact
