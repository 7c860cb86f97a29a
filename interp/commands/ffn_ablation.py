"""`interp ffn-ablation`: remove MLP layers on the capital task; restore with the answer in
context; move the critical layer's o-vector onto other countries.

Prompts: the countries the model answers correctly in the abstractive one-shot format
(`--select correct`, a seeded subset of `--n-prompts`), or a seeded sample of the whole table
(`--select all`). The extractive prompts ask about the same countries with
"The capital of X is Y." prepended. The sweeps ablate at each of `--positions` (all, and all
but the attention sink, by default); the windows are also run with zero ablation at the other
position sets. The critical layer is searched among layers >= n_layers // 2 of the
`--critical-positions` sweep. The study itself is `interp.ffn_study.run_study`. Writes
`<out>/<model>/ffn-ablation/summary.json`, `single_layer_{accuracy,capital_prob}.html`,
`windows_{accuracy,capital_prob}.html`, `massive_activations.html` and `transfer.html`.

Example:
    $ interp ffn-ablation --model smollm2-135m --out results
"""

from interp.capitals import DATA
from interp.commands._args import add_run_arguments
from interp.ffn import POSITIONS
from interp.ffn_study import KINDS, FfnConfig, run_study

EXPERIMENT = "ffn-ablation"


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
    parser.add_argument("--positions", nargs="+", choices=POSITIONS, default=["all", "no-first"],
                        help="position modes of the sweeps: all positions, all but the first "
                        "(the attention sink), the answer position (default: all no-first)")
    parser.add_argument("--critical-positions", choices=POSITIONS, default="no-first",
                        help="the sweep that picks the critical layer (default no-first)")
    parser.add_argument("--n-control-sources", type=int, default=5,
                        help="other source countries whose o-vectors are controls (default 5)")
    parser.add_argument("--n-specificity", type=int, default=10,
                        help="countries in the source x target specificity grid (default 10)")
    parser.add_argument("--table", default=str(DATA), help="CSV country,capital (default: the "
                        "bundled table); a small table makes a quick run")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="ablation kinds of the sweeps (default: zero mean)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="prompts per length-sorted batch (default 8: little padding)")
    parser.set_defaults(func=run)


def config_from(args) -> FfnConfig:
    return FfnConfig(args.model, args.seed, args.n_prompts, args.select, tuple(args.positions),
                     args.critical_positions, args.country, args.demo, args.batch_size,
                     args.n_control_sources, args.n_specificity, args.table,
                     tuple(args.kinds))


def run(args) -> int:
    from interp.plotting.ffn import save_ffn_figures
    from interp.runner import ExperimentRun, RunOptions

    config = config_from(args)
    config.check()  # bad flags fail before the model loads
    record = {k: v for k, v in config.record().items() if k not in ("model", "seed")}
    with ExperimentRun(RunOptions.from_args(args), EXPERIMENT, record) as run:
        model = run.load_model()
        summary = run_study(model, config, stage=run.stage)
        save_ffn_figures(run.folder, model.cfg.n_layers, summary, run.out)
        folder = run.finish(summary)
    _print(summary, folder)
    return 0


def _print(s: dict, folder) -> None:
    c, d, t = s["clean"], s["poland_demo"], s["transfer"]
    print(f"model {s['model']}: {s['n_prompts']} countries; clean accuracy abstractive "
          f"{c['abstractive']['accuracy']:.3f}, extractive {c['extractive']['accuracy']:.3f}")
    m = s["massive_activations"]["abstractive"]
    print(f"massive activations (MLP out at position 0 >= {m['threshold_ratio']:g}x median): "
          + ", ".join(f"L{la}: {m['mlp_out_norm_first_position'][la]:.0f} vs "
                      f"{m['mlp_out_norm_median_other_positions'][la]:.1f}"
                      for la in m["massive_layers"]))
    for layer in m["massive_layers"]:
        print(f"  MLP {layer} zero-ablated: " + "; ".join(
            f"{mode}: abstractive {row[str(layer)]['zero']['abstractive']['accuracy']:.3f} / "
            f"extractive {row[str(layer)]['zero']['extractive']['accuracy']:.3f}"
            for mode, row in s["single_layer"].items()))
    print(f"critical layer {s['critical_layer']} (critical layers {s['critical_layers']}, "
          f"{s['critical_layer_positions']} sweep)")
    for mode, ws in s["windows"].items():
        for f, w in ws.items():
            line = ", ".join(f"{k}: abstractive {w[k]['abstractive']['accuracy']:.3f} / "
                             f"extractive {w[k]['extractive']['accuracy']:.3f}"
                             for k in KINDS if k in w)
            print(f"  [{mode}] top {float(f):.2f} of MLPs removed ({len(w['layers'])}): {line}")
    for key in ("clean", "ablated_critical", "ablated_critical_in_context", "ablated_window",
                "ablated_window_in_context"):
        print(f"  {d['capital']} {key}: p={d[key]['capital_prob']:.4f} rank "
              f"{d[key]['capital_rank']} top-1 {d[key]['top1']!r}")
    for mode in ("add", "replace"):
        for name, row in t[mode].items():
            src = row["source_capital_rate"]
            print(f"  transfer {mode} {name}: capital top-1 {row['capital_top1']:.3f}, MRR "
                  f"change {row['mrr_change']:+.3f}, country repeats "
                  f"{row['country_repeat_rate']:.3f}, source capital "
                  f"{'-' if src is None else f'{src:.3f}'}")
    sp = s["specificity"]
    print(f"specificity over {sp['n_pairs']} source/target pairs: target capital "
          f"{sp['target_capital_rate']:.3f}, source capital {sp['source_capital_rate']:.3f} "
          f"(clean target capital {sp['clean_target_capital_rate']:.3f})")
    print("work (forward-pass equivalents of each stage's prompts): " + ", ".join(
        f"{k} {v['done']}" for k, v in s["work_fpe"].items()))
    print(f"wrote {folder / 'summary.json'}")
