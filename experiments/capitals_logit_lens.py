"""Where does a model recall a country's capital? The logit lens on one-shot prompts.

The recipe behind `interp capitals` (Merullo et al. 2023's task, read with the logit lens):
1. load a model and build one-shot prompts, "Q: What is the capital of France?\\nA: Paris\\n
   Q: What is the capital of Poland?\\nA:", one per country;
2. unembed every layer's residual stream at the answer position (the logit lens) and count
   how often the country and the capital are the top-1 token, layer by layer;
3. read off the layer where the country peaks (the argument is formed) and the first layer
   from which the capital stays ahead (the function is applied);
4. follow one prompt through the layers as a heatmap.

Run:
    python experiments/capitals_logit_lens.py --model smollm2-135m --out /tmp/interp-runs
"""

import argparse
from pathlib import Path

import torch

import interp
from interp.capitals import build_prompts, find, load_capitals, mark_tokens, one_shot, sample
from interp.lens import layer_metrics, lens_at, trajectory
from interp.outputs import model_slug
from interp.plotting import save_figure
from interp.plotting.lens import layer_curves, trajectory_heatmap
from interp.tokens import encode


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=None, help="countries (default: all)")
    parser.add_argument("--country", default="Poland", help="the prompt followed layer by layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/interp-runs"))
    args = parser.parse_args(argv)

    # 1. the model and the prompts (pairs whose names share a first token are dropped)
    model = interp.load_model(args.model, seed=args.seed)
    items = mark_tokens(model, load_capitals())
    prompts = build_prompts(model, sample(items, args.n_prompts, args.seed), seed=args.seed)

    # 2. the lens at each prompt's answer position, for the two tokens we care about
    targets = {"capital": prompts.capital_ids, "country": prompts.country_ids}
    stats = lens_at(model, prompts.tokens, prompts.read_positions, targets)
    metrics = layer_metrics(stats, answer="capital", argument="country")

    # 3. the key numbers
    print(f"{model.interp_spec}: {len(prompts)} prompts, final capital accuracy "
          f"{metrics['final_accuracy']:.3f}")
    for layer, (cap, cou) in enumerate(zip(metrics["capital_top1_by_layer"],
                                           metrics["country_top1_by_layer"], strict=True)):
        print(f"  layer {layer:>2}: capital top-1 {cap:.2f}   country top-1 {cou:.2f}")
    print(f"argument formed at layer {metrics['argument_formation_layer']}, capital ahead "
          f"from layer {metrics['function_application_layer']}")

    # 4. one prompt through the layers, and the figures
    item = find(items, args.country)
    text = one_shot(find(items, "France"), item.country)
    traj = trajectory(model, torch.tensor(encode(model, text)),
                      {"capital": item.capital_id, "country": item.country_id})
    folder = args.out / model_slug(model.interp_spec) / "capitals-recipe"
    curves = {k: metrics[f"{k}_by_layer"] for k in ("capital_top1", "country_top1")}
    save_figure(layer_curves(curves, model.interp_spec, "Logit lens at the answer position",
                             "top-1 fraction"), folder / "lens_curves.html", root=args.out)
    save_figure(trajectory_heatmap(traj, model.interp_spec, f"('{args.country}' prompt)",
                                   target="capital"), folder / "lens_prompt.html", root=args.out)
    print(f"figures in {folder}")
    return metrics


if __name__ == "__main__":
    main()
