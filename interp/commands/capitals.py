"""`interp capitals`: the logit lens on the one-shot capital-city prompts.

Writes `<out>/<model>/capitals/summary.json` (per-layer top-1 fractions and MRR of the country
and the capital, KL to the final layer, the argument-formation and function-application
layers), `lens_curves.html` and `lens_<country>.html` (the per-prompt heatmap).

Example:
    $ interp capitals --model smollm2-135m --out results
"""

import torch

from interp.capitals import (
    build_prompts,
    check_count,
    check_country,
    find,
    load_capitals,
    mark_tokens,
    one_shot,
    sample,
)
from interp.commands._args import add_run_arguments
from interp.lens import LensStats, layer_metrics, lens_at, trajectory
from interp.plotting import save_figure
from interp.plotting.lens import layer_curves, trajectory_heatmap
from interp.tokens import encode

EXPERIMENT = "capitals"


def register(subparsers) -> None:
    parser = subparsers.add_parser("capitals", help="logit lens on country -> capital prompts")
    add_run_arguments(parser)
    parser.add_argument("--n-prompts", type=int, default=None,
                        help="number of countries (seeded subset; default: the whole table)")
    parser.add_argument("--country", default="Poland", help="country of the heatmap prompt")
    parser.add_argument("--demo", default="France", help="demonstration country of the heatmap")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="prompts per length-sorted batch (default 16: little padding)")
    parser.set_defaults(func=run)


def subset(stats: LensStats, keep: torch.Tensor) -> LensStats:
    """The lens statistics of the prompts where `keep` is True."""
    return LensStats(stats.top_ids[:, keep], stats.top_probs[:, keep],
                     {n: v[:, keep] for n, v in stats.probs.items()},
                     {n: v[:, keep] for n, v in stats.ranks.items()}, stats.kl_to_final[:, keep])


def prompt_trace(model, items, country: str, demo: str) -> tuple[dict, object]:
    """The lens at the last position of the named one-shot prompt, layer by layer."""
    item, demo_item = find(items, country), find(items, demo)
    text = one_shot(demo_item, item.country)
    tokens = torch.tensor(encode(model, text))
    traj = trajectory(model, tokens, {"capital": item.capital_id, "country": item.country_id})
    rows = [{"layer": la, "top5": traj.top_tokens[la][-1],
             "top5_probs": [round(float(p), 4) for p in traj.top_probs[la, -1]],
             "capital_rank": int(traj.target_ranks["capital"][la, -1]),
             "country_rank": int(traj.target_ranks["country"][la, -1])}
            for la in range(len(traj.top_tokens))]
    return {"prompt": text, "country": item.country, "capital": item.capital,
            "by_layer": rows}, traj


def prefix_once(prompts) -> float:
    """Forward passes of the prompt set when the prompts' shared prefix runs once."""
    from interp.ffn_sparse import common_prefix

    lengths = prompts.lengths
    prefix = common_prefix(prompts.tokens, prompts.read_positions)
    return round((prefix + int((lengths - prefix).sum())) / int(lengths.sum()), 3)


def _per_prompt(model, prompts, stats: LensStats) -> list[dict]:
    decode = model.tokenizer.decode
    return [rec | {"final_top1": decode([int(stats.top_ids[-1, i, 0])]),
                   "final_capital_rank": int(stats.ranks["capital"][-1, i]),
                   "final_country_rank": int(stats.ranks["country"][-1, i])}
            for i, rec in enumerate(prompts.records())]


def run(args) -> int:
    from interp.runner import ExperimentRun, RunOptions

    config = {"n_prompts": args.n_prompts, "country": args.country, "demo": args.demo,
              "format": "one-shot Q/A"}
    table = load_capitals()
    check_count("--n-prompts", args.n_prompts, 2)
    check_count("--batch-size", args.batch_size, 1)
    check_country(table, "--country", args.country)
    check_country(table, "--demo", args.demo)
    with ExperimentRun(RunOptions.from_args(args), EXPERIMENT, config) as run:
        model = run.load_model()
        name = run.spec
        items = mark_tokens(model, table)
        with run.stage("lens"):
            prompts = build_prompts(model, sample(items, args.n_prompts, args.seed),
                                    seed=args.seed)
            stats = lens_at(model, prompts.tokens, prompts.read_positions,
                            {"capital": prompts.capital_ids, "country": prompts.country_ids},
                            batch_size=args.batch_size)
            metrics = layer_metrics(stats)
            single = torch.tensor([it.single for it in prompts.items])
            single_metrics = layer_metrics(subset(stats, single)) if single.sum() > 0 else None
            trace, traj = prompt_trace(model, items, args.country, args.demo)
        summary = {"model": name, "n_prompts": len(prompts),
                   "n_single_token": int(single.sum()),
                   "layers": list(range(model.cfg.n_layers)), **metrics,
                   "single_token_subset": single_metrics, "example": trace,
                   "prompts": _per_prompt(model, prompts, stats),
                   "work_fpe": {"done": stats.work_fpe, "minimum": prefix_once(prompts),
                                "note": "forward passes of the prompt set (padding included "
                                "if any), plus one forward of the example prompt; minimum: "
                                "every distinct token position once (the prompts' shared "
                                "prefix once)"}}
        _figures(run.folder, name, metrics, traj, args.country, run.out)
        folder = run.finish(summary)
    _print(summary, trace, folder)
    return 0


def _figures(folder, name, metrics, traj, country, root) -> None:
    curves = {k.replace("_by_layer", ""): metrics[k] for k in
              ("capital_top1_by_layer", "country_top1_by_layer", "capital_mrr_by_layer",
               "country_mrr_by_layer")}
    save_figure(layer_curves(curves, name, "Logit lens at the answer position",
                             "top-1 fraction (solid) / MRR (dotted)"),
                folder / "lens_curves.html", root=root)
    save_figure(trajectory_heatmap(traj, name, f"('{country}' prompt)", target="capital"),
                folder / f"lens_{country.lower().replace(' ', '_')}.html", root=root)


def _print(summary: dict, trace: dict, folder) -> None:
    tops = " ".join(f"{r['layer']}:{r['top5'][0]!r}" for r in trace["by_layer"])
    print(f"model {summary['model']}: {summary['n_prompts']} prompts "
          f"({summary['n_single_token']} single-token pairs)")
    print(f"final capital accuracy {summary['final_accuracy']:.3f}; final country top-1 "
          f"{summary['country_top1_by_layer'][-1]:.3f}")
    print(f"argument formation layer {summary['argument_formation_layer']}, function "
          f"application layer {summary['function_application_layer']}")
    print(f"{trace['country']} prompt, top-1 per layer: {tops}")
    print(f"wrote {folder / 'summary.json'}")
