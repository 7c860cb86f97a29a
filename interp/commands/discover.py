"""`interp discover`: a circuit from attribution-patching edge scores, at several sizes.

Writes to `<out>/<model>/discover-<task>/` (`discover-<task>-ig/` with EAP-IG): summary.json
(faithfulness curve, CPR, CMD, the best circuit, top edges, config, provenance),
faithfulness_curve.html, head_scores.html and circuit.yaml (read by `interp evaluate-circuit`).
"""

from interp.commands._args import add_run_arguments, fraction, positive_int
from interp.outputs import model_slug


def register(subparsers) -> None:
    p = subparsers.add_parser("discover", help="automated circuit discovery (EAP / EAP-IG)")
    p.add_argument("--task", required=True,
                   help="ioi, greater-than, induction, capitals, or path/to/file.py:Class")
    p.add_argument("--method", default="attribution", choices=["attribution", "attribution-ig"])
    p.add_argument("--steps", type=positive_int, default=5,
                   help="EAP-IG interpolation steps (default 5)")
    p.add_argument("--n-prompts", type=positive_int, default=50, help="prompts (default 50)")
    p.add_argument("--target", type=fraction, default=0.8,
                   help="best circuit = smallest with normalised faithfulness >= this, in "
                        "(0, 1] (default 0.8)")
    add_run_arguments(p)
    p.set_defaults(func=run)


def _summary(result, args, spec: str) -> dict:
    return {
        "model": spec, "task": args.task, "method": args.method, "n_prompts": args.n_prompts,
        "metric_full_model": result.f_model, "metric_all_heads_ablated": result.f_empty,
        "n_edges_total": result.n_edges_total,
        "curve": [p.row() for p in result.points],
        "CPR": result.cpr, "CMD": result.cmd,
        "best": {**result.best.row(), "nodes": [str(n) for n in result.best.nodes],
                 "target": args.target},
        "top_edges": [{"sender": s, "receiver": r, "score": v}
                      for s, r, v in result.ranked[:30]],
        "notes": "nodes induced by the top-|score| edges, all other heads mean-ablated over the "
                 "corrupted prompts; MLPs kept; CPR/CMD over the edge fraction (MIB)",
    }


def run(args) -> int:
    from interp.runner import ExperimentRun, RunOptions, check_memory
    from interp.tasks.registry import get_task

    task = get_task(args.task)
    config = {"task": args.task, "method": args.method, "steps": args.steps,
              "n_prompts": args.n_prompts, "target": args.target}
    experiment = f"discover-{task.name}" + ("-ig" if args.method == "attribution-ig" else "")
    with ExperimentRun(RunOptions.from_args(args), experiment, config) as run:
        model = run.load_model()
        check_memory(model, args.n_prompts)
        result, batch = _discover(run, task, args)
        _write(run, task, batch, result, args)
        folder = run.finish(_summary(result, args, run.spec))
    print(f"discover {task.name} on {run.spec} ({args.method}): {result.n_edges_total} edges, "
          f"F(model)={result.f_model:.4f}, F(all ablated)={result.f_empty:.4f}")
    for p in result.points:
        print(f"  {p.n_edges:>7} edges {len(p.nodes):>4} heads  faithfulness {p.normalised:.3f}")
    print(f"CPR={result.cpr:.3f} CMD={result.cmd:.3f}; wrote {folder / 'circuit.yaml'} "
          f"({result.best.n_edges} edges, {len(result.best.nodes)} heads, "
          f"faithfulness {result.best.normalised:.3f})")
    return 0


def _discover(run, task, args):
    from interp.discover import discover

    with run.stage("dataset"):
        batch = task.build(run.model, args.n_prompts, args.seed)
    with run.stage("discover"):
        result = discover(run.model, batch, method=args.method, steps=args.steps,
                          target=args.target)
    return result, batch


def _write(run, task, batch, result, args) -> None:
    """The figures and circuit.yaml, into the run's (staging) folder."""
    from interp.attribution import head_attribution
    from interp.circuits.format import write_circuit
    from interp.discover import circuit_spec
    from interp.plotting import head_heatmap, save_figure
    from interp.plotting.circuit import faithfulness_curve

    model, spec, folder = run.model, run.spec, run.folder
    label = f"{spec}, {task.name}, {args.method}"
    save_figure(faithfulness_curve(result, f"Faithfulness vs circuit size ({label})"),
                folder / "faithfulness_curve.html", root=run.out)
    with run.stage("head scores"):
        grid = head_attribution(model, batch, method=args.method, steps=args.steps)
    save_figure(head_heatmap(grid.tolist(), f"Head attribution, corrupted -> clean ({label})",
                             "estimated metric change"), folder / "head_scores.html",
                root=run.out)
    circuit = circuit_spec(result.best, result.edge_scores.kv_groups,
                           f"discover-{task.name}-{model_slug(spec)}", spec, task.name,
                           f"interp discover, {args.method}, {result.best.n_edges} edges")
    write_circuit(circuit, folder / "circuit.yaml",
                  f"Discovered by `interp discover` on {spec} ({task.name}); not a paper circuit.")
