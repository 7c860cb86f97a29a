"""`interp analogies`: a - b + c word-vector analogies in the embedding and unembedding spaces.

Writes `<out>/<model>/analogies/summary.json` (accuracy@1 and @10 per category, over the whole
vocabulary and over whole-word tokens only, with the "nearest to c" baseline; the bias example
doctor - man + woman as a neighbour list) and `analogies.html`. No forward pass runs, so only
the embedding matrices and the tokenizer load (`interp.models.light`, without TransformerLens).

Example:
    $ interp analogies --model smollm2-135m --out results
"""

import torch

from interp.analogies import (
    DATA,
    SPACES,
    evaluate,
    load_analogies,
    neighbours,
    space_matrix,
    word_mask,
)
from interp.commands._args import add_run_arguments
from interp.errors import UserValueError
from interp.plotting import save_figure
from interp.plotting.lens import grouped_bars

EXPERIMENT = "analogies"
BIAS = [("doctor", "man", "woman"), ("doctor", "woman", "man")]


def register(subparsers) -> None:
    parser = subparsers.add_parser("analogies", help="a - b + c word-vector analogies")
    add_run_arguments(parser)
    parser.add_argument("--data", default=str(DATA), help="CSV category,a,b,c,expected "
                        "(a - b + c = expected)")
    parser.add_argument("--k", type=int, default=10, help="accuracy@k (default 10)")
    parser.set_defaults(func=run)


def _tied(model) -> bool:
    return model.W_E.shape == model.W_U.T.shape and bool(torch.equal(model.W_E, model.W_U.T))


def run(args) -> int:
    from interp.models.light import load_embeddings
    from interp.runner import ExperimentRun, RunOptions

    config = {"data": str(args.data), "k": args.k}
    if args.k < 1:
        raise UserValueError(f"--k must be at least 1 (got {args.k}); pass k >= 1 for "
                             "accuracy@k")
    items = load_analogies(args.data)  # a bad table fails before the model loads
    with ExperimentRun(RunOptions.from_args(args), EXPERIMENT, config) as run:
        with run.stage("load_model"):  # the embeddings and the tokenizer only
            model = load_embeddings(run.spec, seed=args.seed, bos=args.bos)
        run.use_model(model)
        tied = _tied(model)
        spaces = SPACES[:1] if tied else SPACES
        with run.stage("analogies"):
            mask = word_mask(model)
            results = {}
            for space in spaces:
                matrix = space_matrix(model, space)
                for words in (False, True):
                    results[f"{space}{'_words' if words else ''}"] = evaluate(
                        model, items, space, args.k, words, matrix, mask)
            bias = {f"{a} - {b} + {c}": neighbours(model, a, b, c, k=args.k)
                    for a, b, c in BIAS}
        main = results["embed"]
        summary = {"model": run.spec, "n_items": len(items),
                   "n_scored": main["overall"]["n"], "tied_embeddings": tied,
                   "convention": "a - b + c = expected; inputs a, b, c excluded from neighbours",
                   "per_category": main["per_category"], "overall": main["overall"],
                   "results": results, "bias_example": bias,
                   "work_fpe": {"done": 0.0, "minimum": 0.0,
                                "note": "no forward pass: per space and word filter, one "
                                        "product of the analogy queries with the unit-norm "
                                        "vocabulary matrix"}}
        rows = {f"{cat} (n={r['n']})": {"acc@1": r["accuracy@1"],
                                        f"acc@{args.k}": r["accuracy@k"],
                                        "c-only baseline@1": r["c_only_baseline@1"]}
                for cat, r in main["per_category"].items()}
        if rows:
            save_figure(grouped_bars(rows, f"Word analogies a - b + c in the input embedding "
                                     f"({run.spec})", "category", "accuracy"),
                        run.folder / "analogies.html", root=run.out)
        folder = run.finish(summary)
    _print(summary, results, args.k, folder)
    return 0


def _print(summary, results, k, folder) -> None:
    print(f"model {summary['model']}: {summary['n_scored']}/{summary['n_items']} analogies "
          f"scored (all four words single tokens); tied embeddings: "
          f"{summary['tied_embeddings']}")
    for name, res in results.items():
        o = res["overall"]
        print(f"  {name}: acc@1 {_f(o['accuracy@1'])}, acc@{k} {_f(o['accuracy@k'])} "
              f"(c-only baseline {_f(o['c_only_baseline@1'])})")
        for cat, r in res["per_category"].items():
            print(f"    {cat:<12} n={r['n']:<3} acc@1 {_f(r['accuracy@1'])} "
                  f"acc@{k} {_f(r['accuracy@k'])}")
    for query, nbrs in summary["bias_example"].items():
        print(f"  {query}: " + ", ".join(f"{t.strip()} ({s:.2f})" for t, s in nbrs))
    print(f"wrote {folder / 'summary.json'}")


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
