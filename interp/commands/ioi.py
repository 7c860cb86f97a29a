"""`interp ioi`: reproduce the IOI circuit analysis on a model."""

from dataclasses import asdict, fields

from interp.commands._args import add_run_arguments, positive_int
from interp.errors import UserValueError
from interp.ioi.sources import DATASETS, DEFAULT_DATASET  # light: no torch

MAX_SHOWN = 8  # unclassified heads printed (all are in summary.json)


def _thresholds(pairs: list[str]) -> dict:
    """--threshold NAME=VALUE pairs over the defaults, checked (finite, in range)."""
    from interp.ioi.classify import Thresholds

    out = asdict(Thresholds())
    valid = {f.name for f in fields(Thresholds)}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in valid or not value:
            raise UserValueError(f"--threshold {pair!r}: use NAME=VALUE with NAME one of "
                                 f"{sorted(valid)}")
        try:
            out[name] = int(value) if name == "max_per_class" else float(value)
        except ValueError:
            kind = "an integer" if name == "max_per_class" else "a number"
            raise UserValueError(f"--threshold {pair!r}: {value!r} is not {kind}") from None
    Thresholds(**out)  # raises a one-line UserValueError naming --threshold when out of range
    return out


def _report(run) -> None:
    s = run.summary
    print(f"\nIOI on {s['model']} ({s['n_prompts']} prompts, seed {s['seed']}):")
    print(f"  clean logit diff {s['clean_logit_diff']:.3f} (IO > S on "
          f"{100 * s['clean_accuracy']:.1f}%), corrupted {s['corrupted_logit_diff']:.3f}")
    for cls, heads in s["head_classes"].items():
        print(f"  {cls:<22} {', '.join(heads) or '-'}")
    if s["classification_skipped"]:
        print(f"  no heads labelled: {s['classification_skipped']}")
    else:
        shown = list(s["unclassified"].items())[:MAX_SHOWN]
        for head, sig in shown:
            print(f"  {'unclassified':<22} {head}: {sig['label']}")
        if len(s["unclassified"]) > MAX_SHOWN:
            print(f"  {'':<22} ... and {len(s['unclassified']) - MAX_SHOWN} more (summary.json)")
        faith = s["circuit"]["faithfulness"]
        wider, spread = s["circuit"]["faithfulness_with_unclassified"], s["circuit"][
            "faithfulness_spread"]["classes"]
        print(f"  faithfulness F(C)/F(M) = {faith['F_C']:.3f}/{faith['F_M']:.3f} = "
              f"{faith['faithfulness']:.3f} (resampled means: {spread['min']:.3f}-"
              f"{spread['max']:.3f}); with unclassified heads {wider['faithfulness']:.3f}")
    print(f"  paper comparison: {s['paper_comparison']['status']}")
    circuit = ", circuit.yaml" if s["circuit_file"] else ""
    print(f"wrote {run.folder}/ (summary.json, dataset.jsonl{circuit}, *.html)")


def run(args) -> int:
    from interp.ioi.pipeline import IOIConfig, config_record, run_stages
    from interp.runner import ExperimentRun, RunOptions, check_memory

    config = IOIConfig(n_prompts=args.n_prompts, seed=args.seed, exact=args.exact,
                       top_k=args.top_k, thresholds=_thresholds(args.threshold),
                       dataset=args.dataset, n_mean_prompts=args.n_mean_prompts)
    # everything above is checked before the model loads
    with ExperimentRun(RunOptions.from_args(args), "ioi", config_record(config)) as run:
        run.load_model()
        check_memory(run.model, args.n_prompts)
        result = run_stages(run, config, progress=not args.quiet)
    _report(result)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("ioi", help="IOI circuit: dataset, patching, classification,"
                                               " circuit evaluation, plots")
    add_run_arguments(parser)
    parser.add_argument("--n-prompts", type=positive_int, default=100, help="prompts (default 100)")
    parser.add_argument("--dataset", choices=DATASETS, default=DEFAULT_DATASET,
                        help="prompt source: 'paper' (the IOI paper code's mixed set: 7 BABA + "
                             "7 ABBA templates, its names, places, objects; default) or "
                             "'extended' (15 + 15 templates, more names)")
    parser.add_argument("--n-mean-prompts", type=positive_int, default=20,
                        help="p_ABC prompts per template in the separate sample the "
                             "mean-ablation means come from (default 20)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true",
                      help="the default: activation patching by attribution (gradients); "
                           "q/k/v path patching screened by attribution, then the strongest "
                           "senders (and all near a threshold) patched exactly")
    mode.add_argument("--exact", action="store_true",
                      help="every sweep exact: activation patching of every head, path "
                           "patching of every sender (about 5x slower: 1113 s vs 198 s for "
                           "SmolLM2 on 2 CPU cores)")
    parser.add_argument("--top-k", type=positive_int, default=10,
                        help="senders patched exactly in each screened path-patching step "
                             "(default 10; more when more are near a threshold)")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                        help="override a classification threshold (see interp.ioi.classify."
                             "Thresholds), e.g. name_mover=0.05; repeatable")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
