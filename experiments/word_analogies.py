"""Do word vectors add up? Analogies a - b + c in the input embedding (and the unembedding).

The recipe behind `interp analogies`:
1. load a model and the analogy table (Paris - France + Poland = Warsaw, ...);
2. for each analogy whose four words are single tokens, find the nearest token (cosine) to
   E[a] - E[b] + E[c], the three inputs excluded, and score accuracy@1 and @k per category;
3. compare with the "c only" baseline (nearest to E[c]): arithmetic must beat it to count;
4. print one analogy's neighbours and save a bar chart.

Run:
    python experiments/word_analogies.py --model smollm2-135m --out /tmp/interp-runs
"""

import argparse
from pathlib import Path

import interp
from interp.analogies import evaluate, load_analogies, neighbours
from interp.outputs import model_slug
from interp.plotting import save_figure
from interp.plotting.lens import grouped_bars


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=10, help="accuracy@k")
    parser.add_argument("--out", type=Path, default=Path("/tmp/interp-runs"))
    args = parser.parse_args(argv)

    # 1. the model and the analogies
    model = interp.load_model(args.model)
    items = load_analogies()

    # 2.-3. both spaces: rows of W_E (what the model reads) and columns of W_U (what it writes)
    results = {space: evaluate(model, items, space=space, k=args.k)
               for space in ("embed", "unembed")}
    for space, res in results.items():
        overall = res["overall"]
        print(f"{model.interp_spec} {space}: {overall['n']} analogies scored "
              f"({len(res['skipped'])} skipped, not single tokens)")
        for category, r in res["per_category"].items():
            print(f"  {category:<24} acc@1 {r['accuracy@1']:.2f}  acc@{args.k} "
                  f"{r['accuracy@k']:.2f}  c-only baseline {r['c_only_baseline@1']:.2f}")

    # 4. one analogy up close, and the figure
    print("Paris - France + Poland ->", neighbours(model, "Paris", "France", "Poland", k=5))
    rows = {f"{cat} (n={r['n']})": {"acc@1": r["accuracy@1"], f"acc@{args.k}": r["accuracy@k"],
                                    "c-only@1": r["c_only_baseline@1"]}
            for cat, r in results["embed"]["per_category"].items()}
    folder = args.out / model_slug(model.interp_spec) / "analogies-recipe"
    if rows:
        save_figure(grouped_bars(rows, f"a - b + c in the input embedding ({model.interp_spec})",
                                 "category", "accuracy"), folder / "analogies.html",
                    root=args.out)
        print(f"figure in {folder}")
    return results


if __name__ == "__main__":
    main()
