"""`interp bench`: time interp's patching sweeps against TransformerLens and naive references.

Example:
    interp bench --model random:gpt2 --n-prompts 20 --out results
"""

import argparse
from pathlib import Path

from interp.commands._args import out_folder, positive_int, seed


def run(args) -> int:
    if args.experiments:
        return run_experiments(args)
    from interp.bench import format_table, run_bench
    from interp.outputs import write_json

    args.model = args.model or "random:gpt2"
    report = run_bench(args.model, args.n_prompts, args.seed, skip_tl=args.skip_tl,
                       attribution_model=args.attribution_model or None,
                       attribution_prompts=args.attribution_prompts, direction=args.direction,
                       ig_steps=args.ig_steps, progress=not args.no_progress)
    table = format_table(report)
    print(table)
    path = write_json(Path(args.out) / "bench" / f"{report['machine']['slug']}.json",
                      {**report, "table": table})
    print(f"\nwrote {path}")
    return 0


def run_experiments(args) -> int:
    from interp.bench import machine_info
    from interp.bench_experiments import format_experiments
    from interp.bench_experiments import run_experiments as run_all
    from interp.outputs import write_json

    report = run_all(args.model or "smollm2-135m", args.only or None)
    table = format_experiments(report)
    print(table)
    slug = machine_info()["slug"]
    path = write_json(Path(args.out) / "bench" / f"{slug}-experiments.json",
                      {**report, "table": table})
    print(f"\nwrote {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark the patching sweeps (interp vs TransformerLens / naive)",
        description="Times per-head activation patching (TransformerLens vs interp), path "
        "patching to logits (naive vs interp), attribution patching vs exact, and one forward, "
        "in one process; prints a table and writes OUT/bench/<machine>.json (replaced on rerun).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model for rows 1, 2 and 4 (default random:gpt2); with "
                        "--experiments, the model of every command (default smollm2-135m)")
    parser.add_argument("--experiments", action="store_true",
                        help="instead of the sweeps: time interp ioi (default and --exact), "
                        "discover greater-than and evaluate-circuit end to end, one child "
                        "process each; writes OUT/bench/<machine>-experiments.json")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help="with --experiments: only the commands whose name starts with "
                        "one of these (e.g. ioi evaluate-circuit)")
    parser.add_argument("--n-prompts", type=positive_int, default=20,
                        help="IOI prompts in the batch")
    parser.add_argument("--seed", type=seed, default=0, help="IOI dataset seed")
    parser.add_argument("--out", type=out_folder, default=Path("results"), help="output root")
    parser.add_argument("--skip-tl", action="store_true",
                        help="skip TransformerLens' sweep (the slowest row)")
    parser.add_argument("--attribution-model", default="smollm2-135m",
                        help="second model for row 3, where the scores mean something "
                        "('' to skip)")
    parser.add_argument("--attribution-prompts", type=positive_int, default=20,
                        help="IOI prompts for the attribution model")
    parser.add_argument("--direction", choices=("noise", "denoise"), default="denoise",
                        help="patching direction of row 3 (attribution and its exact check); "
                        "denoise matches row 1, whose exact sweep is then reused")
    parser.add_argument("--ig-steps", type=positive_int, default=5,
                        help="EAP-IG interpolation steps")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)
