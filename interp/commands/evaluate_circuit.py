"""`interp evaluate-circuit`: faithfulness, completeness per group, minimality per node of a
circuit hypothesis file, with the evaluation code of `interp.circuit` (the IOI paper's).

Ablation of everything outside the circuit, as the file's `ablation:` says:
- mean: each head's mean output over the corrupted prompts of the same group and position;
- zero: zeros (the same code, given an all-zero corrupted cache);
- resample: each prompt gets the activation of one corrupted prompt of its group drawn at
  random (seeded), i.e. the mean over a group of one.

Writes `<out>/<model>/evaluate-<task>-<circuit name>/`: summary.json, completeness.html,
minimality.html.
"""

from dataclasses import replace

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


def ablation_runs(runs, kind: str, seed: int):
    """`runs` whose corrupted cache makes interp.circuit's mean ablation the `kind` one."""
    import torch

    if kind == "mean":
        return runs
    cache = runs.corrupted_cache
    if kind == "zero":
        return replace(runs, corrupted_cache={k: torch.zeros_like(v) for k, v in cache.items()})
    gen = torch.Generator().manual_seed(seed)
    groups = runs.batch.groups
    pick = torch.arange(len(groups))
    for g in groups.unique():
        rows = (groups == g).nonzero().flatten()
        pick[rows] = rows[torch.randint(len(rows), (len(rows),), generator=gen)]
    batch = replace(runs.batch, groups=torch.arange(len(groups)))  # a group per prompt
    return replace(runs, batch=batch, corrupted_cache={k: v[pick] for k, v in cache.items()})


def _figures(comp: dict, mini: dict, title: str):
    import plotly.graph_objects as go

    names = list(comp)
    f_m = [comp[n]["F_M_minus_K"] for n in names]
    f_c = [comp[n]["F_C_minus_K"] for n in names]
    fig_c = go.Figure(go.Scatter(x=f_m, y=f_c, mode="markers+text", text=names,
                                 textposition="top center",
                                 hovertemplate="%{text}<br>F(M\\K) %{x:.3f}<br>F(C\\K) %{y:.3f}"
                                               "<extra></extra>"))
    lo, hi = min(f_m + f_c + [0.0]), max(f_m + f_c + [0.0])
    fig_c.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot"},
                               name="complete (x = y)", hoverinfo="skip"))
    fig_c.update_layout(title=f"Completeness per group: {title}", xaxis_title="F(M \\ K)",
                        yaxis_title="F(C \\ K)", width=720, height=560, showlegend=False)
    per = mini["per_node"]
    fig_m = go.Figure(go.Bar(x=list(per), y=[v["relative_to_F_M"] for v in per.values()],
                             hovertemplate="%{x}: %{y:.3f} x F(M)<extra></extra>"))
    fig_m.add_hline(y=mini["threshold"], line_dash="dot")
    fig_m.update_layout(title=f"Minimality per node: {title}", xaxis_title="node",
                        yaxis_title="|contribution| / |F(M)|", width=max(720, 28 * len(per)),
                        height=480)
    return fig_c, fig_m


def _evaluate(model, runs, spec, threshold: float) -> dict:
    from interp.circuit import completeness, faithfulness, minimality
    from interp.mean_ablation import MeanAblation

    circuit, groups = spec.circuit(), spec.group_nodes()
    ev = MeanAblation(model, runs)
    faith = faithfulness(model, runs, circuit, ev)
    f_empty = ev.metrics([{}]).mean().item()
    faith["F_all_heads_ablated"] = f_empty
    faith["normalised_faithfulness"] = (faith["F_C"] - f_empty) / (faith["F_M"] - f_empty)
    return {"faithfulness": faith,
            "completeness": completeness(model, runs, circuit, groups, ev=ev),
            "minimality": minimality(model, runs, circuit, groups, threshold, ev=ev)}


def run(args) -> int:
    from interp.circuits.format import load_circuit
    from interp.plotting import save_figure
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
        spec, batch, result = _run(run, task, args)
        title = f"{spec.name} on {run.spec} ({task.name}, {spec.ablation} ablation)"
        fig_c, fig_m = _figures(result["completeness"], result["minimality"], title)
        save_figure(fig_c, run.folder / "completeness.html")
        save_figure(fig_m, run.folder / "minimality.html")
        circuit_text = {"groups": {k: [str(n) for n in v]
                                   for k, v in spec.group_nodes().items()}}
        folder = run.finish({"model": run.spec, "task": task.name, "circuit": circuit_text,
                             **result})
    _print(spec, run.spec, task, batch, result, folder)
    return 0


def _run(run, task, args):
    from interp.circuits.format import load_circuit
    from interp.patching.runs import prepare_runs

    with run.stage("dataset"):
        batch = task.build(run.model, args.n_prompts, args.seed)
    spec = load_circuit(args.circuit, model=run.model, positions=batch.positions)
    with run.stage("runs"):
        runs = ablation_runs(prepare_runs(run.model, batch), spec.ablation, args.seed)
    with run.stage("evaluate"):
        result = _evaluate(run.model, runs, spec, args.minimality_threshold)
    return spec, batch, result


def _print(spec, model_name: str, task, batch, result: dict, folder) -> None:
    f = result["faithfulness"]
    print(f"{spec.name} on {model_name} ({task.name}, {len(batch)} prompts, {spec.ablation} "
          f"ablation): F(C)={f['F_C']:.4f} F(M)={f['F_M']:.4f} faithfulness F(C)/F(M)="
          f"{f['faithfulness']:.3f} normalised={f['normalised_faithfulness']:.3f}")
    for name, c in result["completeness"].items():
        print(f"  completeness {name}: F(C\\K)={c['F_C_minus_K']:.4f} "
              f"F(M\\K)={c['F_M_minus_K']:.4f} |diff|={c['incompleteness']:.4f}")
    mini = result["minimality"]
    small = [n for n, v in mini["per_node"].items() if not v["minimal"]]
    print(f"  minimality: {len(mini['per_node']) - len(small)}/{len(mini['per_node'])} nodes "
          f"contribute >= {mini['threshold']} x F(M)" + (f"; below: {small}" if small else ""))
    print(f"wrote {folder}")
