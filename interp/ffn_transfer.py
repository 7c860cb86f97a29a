"""o-vector transfer with its controls, and per-country specificity.

The o-vector of a source country is MLP `layer`'s output at the answer position of its
one-shot prompt (demonstration: the configured demo country). Added after block `layer` at
the answer position of another country's prompt, does it

- raise that country's capital (a "capital of" function), or
- write the source's own capital (a stored answer), or
- do no more than any vector MLP `layer` usually writes there?

Controls beside the named source's o-vector: a random vector of the same norm, the mean MLP
`layer` output at the answer position over all prompts, and the o-vectors of other seeded
source countries. Per vector: capital top-1, MRR change, the fraction of answers that repeat
the target's country, and the fraction that name the source's capital.

Example:
    >>> moved = transfer_study(model, items, config, layer=15, full=clean_run_of_the_table)
    >>> moved["add"]["o_vector"]["capital_top1"], moved["add"]["mean_output"]["capital_top1"]
"""

import torch
from jaxtyping import Float
from torch import Tensor

from interp.capitals import Capital, build_prompts, find
from interp.ffn import Outcome, add_variants, evaluate, random_like, transfer_conditions
from interp.ffn_clean import CleanRun, Ledger


def _pick(items: list[Capital], k: int, seed: int, exclude: set[str]) -> list[Capital]:
    pool = [it for it in items if it.country not in exclude]
    keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k]
    return [pool[i] for i in sorted(keep.tolist())]


def source_vectors(model, items: list[Capital], sources: list[Capital], demo: Capital,
                   layer: int, ledger: Ledger | None = None) -> Float[Tensor, "n d"]:
    """MLP `layer`'s output at the answer position of each source's prompt (one batch)."""
    prompts = build_prompts(model, sources, demos=[demo] * len(sources))
    clean = CleanRun(model, prompts.tokens, prompts.lengths, len(sources), ledger=ledger)
    return clean.mlp_read(layer)


def _row(r: Outcome, clean: Outcome, keep, targets, source_capital: int | None) -> dict:
    capital, country = targets.capital_ids[keep], targets.country_ids[keep]
    top1 = r.top1[keep]
    return {"capital_top1": float((top1 == capital).float().mean()),
            "mrr_change": float((1 / r.rank[keep].float()).mean()
                                - (1 / clean.rank[keep].float()).mean()),
            "country_repeat_rate": float((top1 == country).float().mean()),
            "source_capital_rate": None if source_capital is None
            else float((top1 == source_capital).float().mean()),
            "n_targets": int(keep.sum())}


def transfer_study(model, items: list[Capital], config, layer: int, full: CleanRun,
                   ledger: Ledger | None = None) -> dict:
    """The named source's o-vector and its controls, added after `layer` (all of them) or
    replacing MLP outputs of `layer` and later (o-vector and random only) on every other
    country of the table. `full` is the clean run of the table's prompts (seed-rotated demos).
    """
    item, demo = find(items, config.country), find(items, config.demo)
    controls = _pick(items, config.n_control_sources, config.seed, {item.country, demo.country})
    sources = [item, *controls]
    vecs = source_vectors(model, items, sources, demo, layer, ledger)
    targets = build_prompts(model, items, seed=config.seed)
    mean = full.mlp_read(layer).mean(0)
    named = {"o_vector": (vecs[0], item), "random": (random_like(vecs[0], config.seed), item),
             "mean_output": (mean, item)} | {c.country: (v, c) for c, v in zip(controls, vecs[1:],
                                                                              strict=True)}
    clean = evaluate(model, targets, [], clean=full)["clean"]
    outs = add_variants(model, full, layer, torch.stack([v for v, _ in named.values()]),
                        targets.capital_ids, ledger)

    def keep(source: Capital):  # not the source itself, nor its capital in the demonstration
        return torch.tensor([source.country not in (t.country, d.country)
                             for t, d in zip(targets.items, targets.demos, strict=True)])

    add = {"nothing": _row(clean, clean, keep(item), targets, item.capital_id)}
    for (name, (vec, src)), out in zip(named.items(), outs, strict=True):
        add[name] = _row(out, clean, keep(src), targets, src.capital_id) | {
            "source": src.country if name not in ("random", "mean_output") else None,
            "norm": float(vec.norm()),
            "cosine_to_mean_output": float(torch.cosine_similarity(vec, mean, dim=0))}
    replaced = evaluate(model, targets, transfer_conditions(model, layer, vecs[0], config.seed)
                        [2:], clean=full, ledger=ledger, desc="transfer")
    replace = {name.split(":")[1]: _row(r, clean, keep(item), targets, item.capital_id)
               for name, r in replaced.items() if name != "clean"}
    return {"layer": layer, "source": item.country, "source_capital": item.capital,
            "demo": demo.country, "vector_norm": float(vecs[0].norm()),
            "control_sources": [c.country for c in controls], "add": add, "replace": replace,
            "modes": {"add": "vector added to the residual after the layer, answer position",
                      "replace": "o-vector replaces MLP outputs of this and all later layers "
                                 "at the answer position"}}


def specificity(model, items: list[Capital], config, layer: int,
                ledger: Ledger | None = None) -> dict:
    """Over all ordered pairs (source, target) of a seeded subset of countries: how often
    source's o-vector added to target's prompt yields the target's capital (a function) or the
    source's capital (a stored answer). Every prompt has the same demonstration (the demo
    country, outside the subset), so no source capital is in any target's context."""
    demo = find(items, config.demo)
    subset = _pick(items, config.n_specificity, config.seed + 1, {demo.country})
    targets = build_prompts(model, subset, demos=[demo] * len(subset))
    clean = CleanRun(model, targets.tokens, targets.lengths, config.batch_size, ledger=ledger)
    vecs = clean.mlp_read(layer)  # each country's o-vector, from the same prompts
    base = evaluate(model, targets, [], clean=clean)["clean"]
    outs = add_variants(model, clean, layer, vecs, targets.capital_ids, ledger)
    k = len(subset)
    off = ~torch.eye(k, dtype=torch.bool)  # [source, target]
    top1 = torch.stack([o.top1 for o in outs])  # [source, target]
    hit_target = top1 == targets.capital_ids[None, :]
    hit_source = top1 == targets.capital_ids[:, None]
    return {"countries": [s.country for s in subset], "n_pairs": int(off.sum()),
            "target_capital_rate": float(hit_target[off].float().mean()),
            "source_capital_rate": float(hit_source[off].float().mean()),
            "clean_target_capital_rate": float((base.top1 == targets.capital_ids).float()
                                               .mean()),
            "own_vector_target_capital_rate": float(hit_target.diagonal().float().mean())}
