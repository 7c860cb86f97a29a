"""The indirect-object-identification circuit (Wang et al. 2022) on one model.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The recipe behind
`interp ioi`:
1. build p_IOI prompts and their p_ABC corruptions (three unrelated names), cache both runs;
2. look at single heads: direct logit attribution, and activation patching at END;
3. run the paper's pipeline (path patching, head classes, mean-ablation evaluation);
4. test your own hypothesis: is the circuit of the name movers alone faithful?

Run:
    python experiments/ioi_circuit.py --model smollm2-135m --n-prompts 100 --out /tmp/interp-runs
"""

import argparse
from pathlib import Path

import interp
from interp.circuit import faithfulness
from interp.dla import direct_logit_attribution
from interp.ioi.dataset import build_ioi
from interp.ioi.pipeline import IOIConfig, run_ioi
from interp.nodes import parse_node
from interp.outputs import model_slug
from interp.patching import act_patch_heads, prepare_runs
from interp.plotting import head_heatmap, save_figure


def top_heads(grid, k: int = 3) -> str:
    """The k heads with the largest |value| of a [layer, head] grid, as "L9H9 (+1.23)"."""
    n_heads = grid.shape[1]
    order = grid.flatten().abs().argsort(descending=True)[:k].tolist()
    return ", ".join(f"L{i // n_heads}H{i % n_heads} ({float(grid.flatten()[i]):+.2f})"
                     for i in order)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/interp-runs"))
    args = parser.parse_args(argv)

    # 1. prompts and the two cached runs; the metric is logit(IO) - logit(S) at END
    model = interp.load_model(args.model, seed=args.seed)
    batch = build_ioi(model, args.n_prompts, args.seed).batch
    runs = prepare_runs(model, batch)
    print(f"{model.interp_spec}: logit diff clean {runs.clean_metric.mean():.3f}, "
          f"corrupted {runs.corrupted_metric.mean():.3f}")

    # 2. single heads: what each writes onto the answer, and what patching it changes
    dla = direct_logit_attribution(model, runs.clean_cache, batch)["heads"].mean(-1)
    patched = act_patch_heads(model, runs, "noise", positions="END", progress=False)
    print(f"direct logit attribution, top heads: {top_heads(dla)}")
    print(f"activation patching at END, top heads: {top_heads(patched)}")

    # 3. the paper's pipeline: head classes by path patching, circuit evaluation, files
    run = run_ioi(model, IOIConfig(n_prompts=args.n_prompts, seed=args.seed), args.out,
                  overwrite=True, progress=False)
    for name, heads in run.classes.items():
        print(f"  {name:<22} {' '.join(heads) or '-'}")
    for head, sig in run.unclassified.items():  # strong heads that fit none of the 7 classes
        print(f"  unclassified           {head}: {sig['label']}")
    if run.skipped:  # a model that does not do the task gets no labels (random weights)
        print(f"no heads labelled: {run.skipped}")
    faith = run.circuit_eval["faithfulness"] if run.circuit_eval else None
    if faith:
        print(f"circuit faithfulness F(C)/F(M) = {faith['faithfulness']:.3f}")

    # 4. your own hypothesis: the name movers alone, kept at END, everything else mean-ablated
    movers = {parse_node(h): ["END"] for h in run.classes.get("name_movers", [])}
    mine = faithfulness(model, runs, movers)
    print(f"name movers alone ({len(movers)} heads): F(C)/F(M) = {mine['faithfulness']:.3f}, "
          f"normalised {mine['normalised_faithfulness']:.3f}")

    folder = args.out / model_slug(model.interp_spec) / "ioi-recipe"
    save_figure(head_heatmap(patched.tolist(), f"{model.interp_spec}: activation patching at "
                             "END", "change of logit diff"), folder / "patching_end.html",
                root=args.out)
    print(f"figure in {folder}; the pipeline's files in {run.folder}")
    return {"classes": run.classes, "faithfulness": faith, "name_movers_alone": mine}


if __name__ == "__main__":
    main()
