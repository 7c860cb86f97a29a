"""`interp evaluate-circuit`: faithfulness, completeness per group, minimality per node of a
circuit hypothesis file, with the evaluation code of `interp.circuit` (the IOI paper's).

Ablation of everything outside the circuit, as the file's `ablation:` says: mean, zero or
resample (`interp.mean_ablation.MeanAblation`'s `kind`).

Writes `<out>/<model>/evaluate-<task>-<circuit name>/`: summary.json, completeness.html,
minimality.html.
"""

import re

from interp.commands._args import add_run_arguments
from interp.outputs import run_dir, write_json
from interp.plotting import save_figure
from interp.plotting.circuit import completeness_figure, minimality_figure
from interp.provenance import Provenance


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate-circuit",
                              help="faithfulness/completeness/minimality of a circuit file")
    p.add_argument("--task", required=True,
                   help="ioi, greater-than, induction, capitals, or path/to/file.py:Class")
    p.add_argument("--circuit", required=True, help="circuit hypothesis file (YAML)")
    p.add_argument("--n-prompts", type=int, default=100, help="prompts (default 100)")
    p.add_argument("--minimality-threshold", type=float, default=0.01,
                   help="a node is needed when it moves the metric by >= this x F(M) (0.01)")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.circuit import evaluate
    from interp.circuits.format import load_circuit
    from interp.models import load_model
    from interp.patching.runs import prepare_runs
    from interp.tasks.registry import get_task

    load_circuit(args.circuit)  # syntax errors before the model loads
    task = get_task(args.task)
    model = load_model(args.model, device=args.device, seed=args.seed, bos=args.bos)
    spec_name = model.interp_spec
    prov = Provenance(model=spec_name, seed=args.seed)
    prov.set_model(model)
    with prov.stage("dataset"):
        batch = task.build(model, args.n_prompts, args.seed)
    spec = load_circuit(args.circuit, model=model, positions=batch.positions)
    config = {"task": args.task, "model": spec_name, "circuit": str(args.circuit),
              "circuit_name": spec.name, "ablation": spec.ablation,
              "n_prompts": args.n_prompts, "seed": args.seed,
              "minimality_threshold": args.minimality_threshold}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"evaluate-{task.name}-{spec.name}")
    folder = run_dir(args.out, spec_name, name, config, args.overwrite)
    with prov.stage("runs"):
        runs = prepare_runs(model, batch)
    with prov.stage("evaluate"):
        result = evaluate(model, runs, spec.circuit(), spec.group_nodes(),
                          args.minimality_threshold, spec.ablation, args.seed)
    title = f"{spec.name} on {spec_name} ({task.name}, {spec.ablation} ablation)"
    save_figure(completeness_figure(result["completeness"], title),
                folder / "completeness.html", root=args.out)
    save_figure(minimality_figure(result["minimality"], title), folder / "minimality.html",
                root=args.out)
    circuit_text = {"groups": {k: [str(n) for n in v] for k, v in spec.group_nodes().items()}}
    write_json(folder / "summary.json", {"model": spec_name, "task": task.name,
                                         "circuit": circuit_text, **result, "config": config,
                                         "provenance": prov.record()})
    f = result["faithfulness"]
    print(f"{spec.name} on {spec_name} ({task.name}, {len(batch)} prompts, {spec.ablation} "
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
    return 0
