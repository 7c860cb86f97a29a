"""`interp evaluate-circuit`: faithfulness, completeness per group, minimality per node of a
circuit hypothesis file, with the evaluation code of `interp.circuit` (the IOI paper's).

Ablation of everything outside the circuit, as the file's `ablation:` says: mean, zero or
resample (`interp.mean_ablation.MeanAblation`'s `kind`). A file that lists `edges:` is
evaluated edge by edge (`interp.edge_circuit`, exact edge ablation); a file with groups only,
node by node (`interp.circuit`). summary.json's `level` says which: "edges" or "nodes".

Writes `<out>/<model>/evaluate-<task>-<circuit name>/`: summary.json, completeness.html,
minimality.html.
"""

from interp.commands._args import add_run_arguments, existing_file, non_negative, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate-circuit",
                              help="faithfulness/completeness/minimality of a circuit file")
    p.add_argument("--task", required=True,
                   help="ioi, greater-than, induction, capitals, or path/to/file.py:Class")
    p.add_argument("--circuit", required=True, type=existing_file,
                   help="circuit hypothesis file (YAML)")
    p.add_argument("--n-prompts", type=positive_int, default=100, help="prompts (default 100)")
    p.add_argument("--minimality-threshold", type=non_negative, default=0.01,
                   help="a node is needed when it moves the metric by >= this x F(M) (0.01)")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.circuits.format import load_circuit
    from interp.edge_circuit import edge_label, minimum_forwards
    from interp.patching.counter import counting
    from interp.plotting import save_figure
    from interp.plotting.circuit import completeness_figure, minimality_figure
    from interp.runner import ExperimentRun, RunOptions, check_memory
    from interp.tasks.registry import get_task

    parsed = load_circuit(args.circuit)  # syntax errors before the model loads
    task = get_task(args.task)
    config = {"task": args.task, "circuit": str(args.circuit), "circuit_name": parsed.name,
              "ablation": parsed.ablation, "n_prompts": args.n_prompts,
              "minimality_threshold": args.minimality_threshold}
    experiment = f"evaluate-{task.name}-{parsed.name}"
    with ExperimentRun(RunOptions.from_args(args), experiment, config) as run:
        model = run.load_model()
        check_memory(model, args.n_prompts)
        with counting():
            spec, batch, result = _run(run, task, args)
        title = f"{spec.name} on {run.spec} ({task.name}, {spec.ablation} ablation)"
        save_figure(completeness_figure(result["completeness"], title),
                    run.folder / "completeness.html", root=run.out)
        if "skipped" not in result["minimality"]:
            save_figure(minimality_figure(result["minimality"], title),
                        run.folder / "minimality.html", root=run.out)
        circuit_text = {"groups": {k: [str(n) for n in v]
                                   for k, v in spec.group_nodes().items()},
                        "edges": [edge_label(e) for e in spec.edges]}
        costs = run.prov.cost_table(run.model.cfg.n_layers, batch.clean_tokens.numel(),
                                    minimum_forwards(result, spec, batch, run.model.cfg.n_layers))
        folder = run.finish({"model": run.spec, "task": task.name, "circuit": circuit_text,
                             **result, "costs": costs})
    _print(spec, run.spec, task, batch, result, folder)
    return 0


def _run(run, task, args):
    from interp.circuit import evaluate
    from interp.circuits.format import load_circuit
    from interp.edge_ablation import edge_runs
    from interp.edge_circuit import evaluate_edges
    from interp.patching.runs import prepare_runs

    with run.stage("dataset"):
        batch = task.build(run.model, args.n_prompts, args.seed)
    spec = load_circuit(args.circuit, model=run.model, positions=batch.positions)
    with run.stage("runs"):  # node ablation reads clean resid_pre, corrupted z and MLP outs
        runs = edge_runs(run.model, batch) if spec.edges else prepare_runs(
            run.model, batch, clean_hooks=("hook_resid_pre",),
            corrupted_hooks=("attn.hook_z", "hook_mlp_out"))
    if spec.edges:
        result = evaluate_edges(run.model, runs, spec, args.minimality_threshold,
                                spec.ablation, args.seed, stage=run.stage)
    else:
        with run.stage("evaluate"):
            result = {"level": "nodes", **evaluate(
                run.model, runs, spec.circuit(), spec.group_nodes(), args.minimality_threshold,
                spec.ablation, args.seed)}
    return spec, batch, result


def _print(spec, model_name: str, task, batch, result: dict, folder) -> None:
    f = result["faithfulness"]
    print(f"{spec.name} on {model_name} ({task.name}, {len(batch)} prompts, {spec.ablation} "
          f"ablation, {result['level']}): F(C)={f['F_C']:.4f} F(M)={f['F_M']:.4f} "
          f"faithfulness F(C)/F(M)={f['faithfulness']:.3f} "
          f"normalised={f['normalised_faithfulness']:.3f}")
    if "node_level_faithfulness" in result:
        n = result["node_level_faithfulness"]
        print(f"  node level (the groups, edges ignored): F(C)={n['F_C']:.4f} faithfulness "
              f"F(C)/F(M)={n['faithfulness']:.3f} normalised={n['normalised_faithfulness']:.3f}")
    for name, c in result["completeness"].items():
        print(f"  completeness {name}: F(C\\K)={c['F_C_minus_K']:.4f} "
              f"F(M\\K)={c['F_M_minus_K']:.4f} |diff|={c['incompleteness']:.4f}")
    mini = result["minimality"]
    if "skipped" in mini:
        print(f"  minimality: skipped ({mini['skipped']})")
        print(f"wrote {folder}")
        return
    small = [n for n, v in mini["per_node"].items() if not v["minimal"]]
    unit = "edges" if result["level"] == "edges" else "nodes"
    print(f"  minimality: {len(mini['per_node']) - len(small)}/{len(mini['per_node'])} {unit} "
          f"contribute >= {mini['threshold']} x F(M)" + (f"; below: {small}" if small else ""))
    print(f"wrote {folder}")
