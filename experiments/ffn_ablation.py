"""Which MLP layers recall a capital, and does their output carry it? FFN ablation and the
o-vector (Merullo et al. 2023).

The recipe behind `interp ffn-ablation`:
1. build the same countries as abstractive prompts ("...capital of Poland?\\nA:": the model
   must recall the answer) and extractive ones (the answer is in the context);
2. zero-ablate one MLP layer at a time and score capital accuracy on both kinds: a recall
   layer hurts the abstractive prompts much more than the extractive ones;
3. take the layer's output at the last position of the Poland prompt (the o-vector) and add
   it to other countries' runs: do they start answering Warsaw? Compare a random vector of
   the same norm.

Run:
    python experiments/ffn_ablation.py --model smollm2-135m --n-prompts 24 --out /tmp/interp-runs
"""

import argparse
from pathlib import Path

import interp
from interp.capitals import build_prompts, find, load_capitals, mark_tokens, sample
from interp.ffn import (
    critical_layers,
    evaluate,
    mlp_out_at,
    single_layer_conditions,
    transfer_conditions,
)
from interp.outputs import model_slug
from interp.plotting import save_figure
from interp.plotting.lens import ablation_curves


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=24, help="countries (default 24)")
    parser.add_argument("--country", default="Poland", help="source of the o-vector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/interp-runs"))
    args = parser.parse_args(argv)

    # 1. the same countries, asked two ways
    model = interp.load_model(args.model, seed=args.seed)
    items = mark_tokens(model, load_capitals())
    chosen = sample(items, args.n_prompts, args.seed)
    prompts = {kind: build_prompts(model, chosen, kind, seed=args.seed)
               for kind in ("abstractive", "extractive")}

    # 2. one MLP layer zero-ablated at a time
    conditions = single_layer_conditions(model, "zero")
    accuracy = {}
    for kind, p in prompts.items():
        outcomes = evaluate(model, p, conditions)
        accuracy[kind] = {name: o.summary(p.capital_ids)["accuracy"]
                          for name, o in outcomes.items()}
    layers = [c.name for c in conditions]
    abstractive = [accuracy["abstractive"][n] for n in layers]
    extractive = [accuracy["extractive"][n] for n in layers]
    best, _ = critical_layers(abstractive, extractive, accuracy["abstractive"]["clean"],
                              accuracy["extractive"]["clean"])
    print(f"{model.interp_spec}: clean accuracy abstractive "
          f"{accuracy['abstractive']['clean']:.2f}, extractive "
          f"{accuracy['extractive']['clean']:.2f}")
    for layer, (a, e) in enumerate(zip(abstractive, extractive, strict=True)):
        print(f"  MLP {layer:>2} ablated: abstractive {a:.2f}  extractive {e:.2f}")
    print(f"recall layer (largest abstractive-minus-extractive drop): {best}")

    # 3. the o-vector of that layer, moved onto the other countries
    source = find(items, args.country)
    src = build_prompts(model, [source], demos=[find(items, "France")])
    vector = mlp_out_at(model, src.tokens[0, : int(src.lengths[0])], best)
    others = build_prompts(model, [it for it in chosen if it.country != source.country],
                           seed=args.seed)
    moved = evaluate(model, others, transfer_conditions(model, best, vector, args.seed))
    for name, outcome in moved.items():
        rate = float((outcome.top1 == source.capital_id).float().mean())
        print(f"  {name:<18} answers {source.capital!r} on {rate:.2f} of the other prompts")

    folder = args.out / model_slug(model.interp_spec) / "ffn-ablation-recipe"
    series = {kind: (list(range(len(layers))), [accuracy[kind][n] for n in layers])
              for kind in prompts}
    save_figure(ablation_curves(series, model.interp_spec, "Single MLP layer zero-ablated",
                                "ablated MLP layer", "capital top-1 accuracy"),
                folder / "single_layer.html", root=args.out)
    print(f"figure in {folder}")
    return {"accuracy": accuracy, "recall_layer": best}


if __name__ == "__main__":
    main()
