"""How fast is exact activation and path patching, and how good are attribution estimates?

The recipe behind `interp bench`, on IOI prompts:
1. activation patching of every head, two ways: one plain patched forward per head (the
   reference) and `act_patch_heads` (resumes each patched run from the cached residual
   stream, on the tokens the patch can change); same numbers, different cost;
2. path patching of every head's direct path to the logits, reference vs fast;
3. attribution patching (EAP, EAP-IG): one backward pass for all heads, scored by its Pearson
   r against the exact sweep.

Run:
    python experiments/benchmark_patching.py --model random:gpt2 --n-prompts 20
"""

import argparse
import time

import interp
from interp.bench import pearson, top_overlap
from interp.ioi.dataset import build_ioi
from interp.nodes import all_heads
from interp.patching import act_patch_heads, path_patch, prepare_runs
from interp.patching.naive import act_patch_heads_naive, path_patch_naive


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:gpt2")
    parser.add_argument("--n-prompts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = interp.load_model(args.model, seed=args.seed)
    batch = build_ioi(model, args.n_prompts, args.seed).batch
    runs, t_prepare = timed(lambda: prepare_runs(model, batch))
    print(f"{model.interp_spec}: {len(batch)} prompts, cached runs in {t_prepare:.2f} s")

    # 1. activation patching: every head's corrupted output patched into the clean run
    exact, t_fast = timed(lambda: act_patch_heads(model, runs, "noise", progress=False))
    naive, t_naive = timed(lambda: act_patch_heads_naive(model, runs, "noise"))
    print(f"activation patching: {t_naive:.2f} s plain, {t_fast:.2f} s fast "
          f"({t_naive / t_fast:.1f}x), max |difference| {(exact - naive).abs().max():.1e}")

    # 2. path patching: each head's direct path to the logits
    heads = all_heads(model.cfg.n_layers, model.cfg.n_heads)
    fast_paths, t_fast = timed(lambda: path_patch(model, runs, heads, progress=False))
    naive_paths, t_naive = timed(lambda: path_patch_naive(model, runs, heads))
    print(f"path patching to logits: {t_naive:.2f} s plain, {t_fast:.2f} s fast "
          f"({t_naive / t_fast:.1f}x), max |difference| "
          f"{(fast_paths - naive_paths).abs().max():.1e}")

    # 3. attribution estimates against the exact sweep
    rows = {}
    for method in ("attribution", "attribution-ig"):
        estimate, seconds = timed(lambda m=method: act_patch_heads(model, runs, "noise",
                                                                   method=m, progress=False))
        rows[method] = {"seconds": seconds, "pearson_r": pearson(estimate, exact),
                        "top10_overlap": top_overlap(estimate, exact)}
        print(f"{method:<15} {seconds:.2f} s, Pearson r {rows[method]['pearson_r']:.3f}, "
              f"top-10 overlap {rows[method]['top10_overlap']}/10")
    return {"exact": exact, "attribution": rows}


if __name__ == "__main__":
    main()
