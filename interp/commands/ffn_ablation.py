"""`interp ffn-ablation`: remove MLP layers on the capital task; restore with the answer in
context; move the critical layer's o-vector onto other countries.

Prompts: the countries the model answers correctly in the abstractive one-shot format
(`--select correct`, a seeded subset of `--n-prompts`), or a seeded sample of the whole table
(`--select all`). The extractive prompts ask about the same countries with
"The capital of X is Y." prepended. The sweeps ablate at `--positions` (all by default); the
windows are also run with zero ablation at the other position sets. The critical layer is
searched among layers >= n_layers // 2. Writes `<out>/<model>/ffn-ablation/summary.json`,
`single_layer_{accuracy,capital_prob}.html`, `windows_{accuracy,capital_prob}.html` and
`transfer.html`.

Example:
    $ interp ffn-ablation --model smollm2-135m --out results
"""

import torch

from interp.capitals import build_prompts, find, load_capitals, mark_tokens
from interp.commands._args import add_run_arguments
from interp.ffn import (
    FRACTIONS,
    POSITIONS,
    Condition,
    MlpMeans,
    Outcome,
    ablation,
    critical_layers,
    evaluate,
    mlp_out_at,
    single_layer_conditions,
    transfer_conditions,
    window,
    window_conditions,
)
from interp.plotting import save_figure
from interp.plotting.lens import ablation_curves, transfer_bars

EXPERIMENT = "ffn-ablation"
KINDS = ("zero", "mean")


def register(subparsers) -> None:
    parser = subparsers.add_parser("ffn-ablation", help="MLP ablation, in-context restoration "
                                   "and o-vector transfer on the capital task")
    add_run_arguments(parser)
    parser.add_argument("--n-prompts", type=int, default=24,
                        help="countries in the sweeps (default 24)")
    parser.add_argument("--select", choices=("correct", "all"), default="correct",
                        help="sweep the countries the model gets right (default) or any")
    parser.add_argument("--country", default="Poland", help="source country of the demo")
    parser.add_argument("--demo", default="France", help="demonstration country of the demo")
    parser.add_argument("--positions", choices=POSITIONS, default="all",
                        help="where the sweeps ablate: all positions (default), all but the "
                        "first (the attention sink), or the answer position only")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.set_defaults(func=run)


def select_items(model, items, args) -> tuple[list, list, dict]:
    """The swept countries and their demonstrations, plus the full-table clean accuracy."""
    full = build_prompts(model, items, seed=args.seed)
    clean = evaluate(model, full, [], batch_size=args.batch_size, desc="clean")["clean"]
    correct = (clean.top1 == full.capital_ids).tolist()
    info = {"table_size": len(items), "table_accuracy": sum(correct) / len(items)}
    pool = list(range(len(items)))
    if args.select == "correct":
        pool = [i for i in pool if correct[i]]
        if len(pool) < 2:
            print(f"only {len(pool)} countries answered correctly; sweeping a sample of all")
            pool, info["fallback"] = list(range(len(items))), "too few correct: sampled all"
    keep = [pool[i] for i in _indices(len(pool), args.n_prompts, args.seed)]
    return [full.items[i] for i in keep], [full.demos[i] for i in keep], info


def _indices(n: int, k: int, seed: int) -> list[int]:
    return list(range(n)) if k >= n else sorted(
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def sweep(model, prompts, args) -> dict[str, Outcome]:
    means = MlpMeans(model, prompts, args.batch_size)
    pos = args.positions
    conds = [c for kind in KINDS for c in single_layer_conditions(model, kind, means, pos)
             + window_conditions(model, kind, means, positions=pos)]
    for other in (p for p in POSITIONS if p != pos):  # windows at the other position sets
        conds += [Condition(f"{c.name}@{other}", c.make)
                  for c in window_conditions(model, "zero", positions=other)]
    return evaluate(model, prompts, conds, batch_size=args.batch_size,
                    desc=f"{prompts.kind} ablations")


def tables(model, results: dict[str, dict[str, Outcome]], answers) -> tuple[dict, dict]:
    """single_layer[layer][kind][prompt kind] and windows[fraction][...] summaries."""
    def cell(name):
        return {pk: results[pk][name].summary(answers[pk]) for pk in results}

    single = {str(la): {k: cell(f"{k}:L{la}") for k in KINDS} for la in range(model.cfg.n_layers)}
    windows = {f"{f:.3f}": {"layers": window(model.cfg.n_layers, f)} |
               {k: cell(f"{k}:top{f:.3f}") for k in KINDS} |
               {f"zero@{p}": cell(f"zero:top{f:.3f}@{p}") for p in POSITIONS
                if f"zero:top{f:.3f}@{p}" in results["abstractive"]}
               for f in FRACTIONS}
    return single, windows


def poland_demo(model, items, args, layers: list[int], window_layers: list[int]) -> dict:
    """Capital prob/rank on the named prompt: clean, ablated, ablated + answer in context."""
    item, demo = find(items, args.country), find(items, args.demo)
    where = args.positions
    out = {"country": item.country, "capital": item.capital, "demo": demo.country,
           "critical_layers": layers, "window_layers": window_layers}
    for kind in ("abstractive", "extractive"):
        p = build_prompts(model, [item], kind, demos=[demo])
        res = evaluate(model, p, [Condition("critical", ablation(layers, "zero", None, where)),
                                  Condition("window", ablation(window_layers, "zero", None,
                                                               where))],
                       desc="demo")
        out[f"prompt_{kind}"] = p.texts[0]
        for cond, r in res.items():
            label = "clean" if cond == "clean" else f"ablated_{cond}"
            label += "_in_context" if kind == "extractive" else ""
            out[label] = {"capital_prob": float(r.prob[0]), "capital_rank": int(r.rank[0]),
                          "top1": model.tokenizer.decode([int(r.top1[0])])}
    return out


def transfer_study(model, items, args, layer: int) -> dict:
    """o-vector from the source prompt at `layer`, moved onto every other country of the table
    (answered correctly or not, so that the vector can also add correct answers).
    """
    item, demo = find(items, args.country), find(items, args.demo)
    source = build_prompts(model, [item], demos=[demo])
    vector = mlp_out_at(model, source.tokens[0, : int(source.lengths[0])], layer)
    full = build_prompts(model, items, seed=args.seed)
    keep = [i for i, it in enumerate(full.items) if it.country != item.country]
    targets = build_prompts(model, [full.items[i] for i in keep],
                            demos=[full.demos[i] for i in keep])
    res = evaluate(model, targets, transfer_conditions(model, layer, vector, args.seed),
                   batch_size=args.batch_size, desc="transfer")
    clean = res["clean"]
    rows = {}
    for name, r in res.items():
        rows[name] = {"success_rate": float((r.top1 == targets.capital_ids).float().mean()),
                      "mrr_change": float((1 / r.rank.float()).mean()
                                          - (1 / clean.rank.float()).mean()),
                      "source_capital_rate": float((r.top1 == item.capital_id).float().mean())}
    return {"layer": layer, "source": item.country, "source_capital": item.capital,
            "vector_norm": float(vector.norm()), "n_targets": len(targets), "conditions": rows,
            "modes": {"add": "o-vector added to the residual after the layer, last position",
                      "replace": "o-vector replaces MLP outputs of this and all later layers "
                                 "at the last position"}}


def run(args) -> int:
    from interp.runner import ExperimentRun, RunOptions

    config = {"n_prompts": args.n_prompts, "select": args.select, "positions": args.positions,
              "country": args.country, "demo": args.demo,
              "critical_layer_search": "layers >= n_layers // 2"}
    with ExperimentRun(RunOptions.from_args(args), EXPERIMENT, config) as run:
        model = run.load_model()
        items = mark_tokens(model, load_capitals())
        with run.stage("select"):
            chosen, demos, info = select_items(model, items, args)
        sets = {k: build_prompts(model, chosen, k, demos=demos) for k in ("abstractive",
                                                                           "extractive")}
        with run.stage("ablation_sweeps"):
            results = {k: sweep(model, p, args) for k, p in sets.items()}
        answers = {k: p.capital_ids for k, p in sets.items()}
        single, windows = tables(model, results, answers)
        clean = {k: results[k]["clean"].summary(answers[k]) for k in sets}
        best, layers = critical_layers(
            *([single[str(la)]["zero"][k]["accuracy"] for la in range(model.cfg.n_layers)]
              for k in sets), clean["abstractive"]["accuracy"], clean["extractive"]["accuracy"],
            min_layer=model.cfg.n_layers // 2)
        gap_window = max(windows, key=lambda f: windows[f]["zero"]["extractive"]["accuracy"]
                         - windows[f]["zero"]["abstractive"]["accuracy"])
        with run.stage("demo_and_transfer"):
            demo = poland_demo(model, items, args, layers, windows[gap_window]["layers"])
            moved = transfer_study(model, items, args, best)
        summary = {"model": run.spec, "n_prompts": len(chosen), "selection": info,
                   "countries": [it.country for it in chosen], "clean": clean,
                   "critical_layer": best, "critical_layers": layers, "single_layer": single,
                   "windows": windows, "poland_demo": demo, "transfer": moved}
        _figures(run.folder, model, summary, run.out)
        folder = run.finish(summary)
    _print(summary, folder)
    return 0


def _figures(folder, model, s: dict, root) -> None:
    name, n = s["model"], model.cfg.n_layers
    for quantity, label in (("accuracy", "capital top-1 accuracy"),
                            ("capital_prob", "mean capital probability")):
        series = {f"{pk}, {k} ablation": (list(range(n)), [s["single_layer"][str(la)][k][pk]
                                                          [quantity] for la in range(n)])
                  for k in KINDS for pk in ("abstractive", "extractive")}
        save_figure(ablation_curves(series, name, f"Single MLP layer ablated: {label}",
                                    "ablated MLP layer", label),
                    folder / f"single_layer_{quantity}.html", root=root)
        fr = list(s["windows"])
        keys = [k for k in s["windows"][fr[0]] if k != "layers"]
        series = {f"{pk}, {k} ablation": ([float(f) for f in fr],
                                          [s["windows"][f][k][pk][quantity] for f in fr])
                  for k in keys for pk in ("abstractive", "extractive")}
        save_figure(ablation_curves(series, name, f"Top MLP layers removed: {label}",
                                    "fraction of MLP layers removed (from the top)", label),
                    folder / f"windows_{quantity}.html", root=root)
    save_figure(transfer_bars(s["transfer"]["conditions"], name, s["transfer"]["layer"]),
                folder / "transfer.html", root=root)


def _print(s: dict, folder) -> None:
    c, d, t = s["clean"], s["poland_demo"], s["transfer"]["conditions"]
    print(f"model {s['model']}: {s['n_prompts']} countries; clean accuracy abstractive "
          f"{c['abstractive']['accuracy']:.3f}, extractive {c['extractive']['accuracy']:.3f}")
    print(f"critical layer {s['critical_layer']} (critical layers {s['critical_layers']})")
    for f, w in s["windows"].items():
        line = ", ".join(f"{k}: abstractive {w[k]['abstractive']['accuracy']:.3f} / extractive "
                         f"{w[k]['extractive']['accuracy']:.3f}" for k in w if k != "layers")
        print(f"  top {float(f):.2f} of MLPs removed ({len(w['layers'])}): {line}")
    for key in ("clean", "ablated_critical", "ablated_critical_in_context", "ablated_window",
                "ablated_window_in_context"):
        print(f"  {d['capital']} {key}: p={d[key]['capital_prob']:.4f} rank "
              f"{d[key]['capital_rank']} top-1 {d[key]['top1']!r}")
    for name, row in t.items():
        print(f"  transfer {name}: success {row['success_rate']:.3f}, MRR change "
              f"{row['mrr_change']:+.3f}, source capital {row['source_capital_rate']:.3f}")
    print(f"wrote {folder / 'summary.json'}")
