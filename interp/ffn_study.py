"""The FFN study on the capital task: MLP ablation sweeps (at all positions and at all but the
attention sink), massive activations, in-context restoration, and the o-vector transfer with
its controls and per-country specificity. `run_study(model, config)` returns the summary.

Every prompt set is forwarded once (`CleanRun`); every ablated or steered run resumes from it
at its first intervened block. The work is counted in forward-pass equivalents (FPE) of the
stage's own prompt set (`Ledger`).

Example:
    >>> config = FfnConfig(n_prompts=24)
    >>> config.check()  # before loading the model
    >>> summary = run_study(model, config)
    >>> summary["single_layer"]["no-first"]["11"]["zero"]["abstractive"]["accuracy"]
"""

from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from interp.capitals import (
    DATA,
    Capital,
    build_prompts,
    check_count,
    check_country,
    find,
    load_capitals,
    mark_tokens,
)
from interp.errors import UserValueError
from interp.ffn import (
    FRACTIONS,
    POSITIONS,
    Condition,
    MlpMeans,
    Outcome,
    ablation_condition,
    critical_layers,
    evaluate,
    single_layer_conditions,
    window,
    window_conditions,
)
from interp.ffn_clean import CleanRun, Ledger
from interp.ffn_sinks import massive_activations
from interp.ffn_transfer import specificity, transfer_study
from interp.patching.counter import mlp_share

KINDS = ("zero", "mean")
PROMPT_KINDS = ("abstractive", "extractive")


@dataclass(frozen=True)
class FfnConfig:
    """Settings of one FFN study; `asdict` of it is the summary's `config`.

    Attributes:
        positions: the position modes of the sweeps ("all", "no-first", "last").
        critical_positions: the mode whose single-layer sweep picks the critical layer (and
            ablates in the named-country demo); "no-first" leaves the attention sink intact.
        n_control_sources: other source countries whose o-vectors are controls (seeded).
        n_specificity: countries in the source x target specificity grid (seeded).
    """

    model: str = "auto"
    seed: int = 0
    n_prompts: int = 24
    select: str = "correct"
    positions: tuple[str, ...] = ("all", "no-first")
    critical_positions: str = "no-first"
    country: str = "Poland"
    demo: str = "France"
    batch_size: int = 8
    n_control_sources: int = 5
    n_specificity: int = 10
    table: str = str(DATA)
    kinds: tuple[str, ...] = KINDS
    critical_layer_search: str = "layers >= n_layers // 2"

    def check(self) -> list[tuple[str, str]]:
        """Raise `UserValueError` (naming the flag and the fix) for bad settings; needs only
        the capitals table, so it runs before the model loads. Returns the table."""
        table = load_capitals(self.table)
        for flag, value, least in (("--n-prompts", self.n_prompts, 2),
                                   ("--batch-size", self.batch_size, 1),
                                   ("--n-control-sources", self.n_control_sources, 0),
                                   ("--n-specificity", self.n_specificity, 2)):
            check_count(flag, value, least)
        bad = [p for p in (*self.positions, self.critical_positions) if p not in POSITIONS]
        bad += [k for k in self.kinds if k not in KINDS] + ([] if "zero" in self.kinds
                                                             else ["kinds without zero"])
        if bad or self.select not in ("correct", "all"):
            raise UserValueError(f"--positions must be among {POSITIONS}, --kinds among {KINDS}"
                                 f" (zero included), --select 'correct' or 'all' (got "
                                 f"{bad or self.select})")
        check_country(table, "--country", self.country)
        check_country(table, "--demo", self.demo)
        if self.country.lower() == self.demo.lower():
            raise UserValueError(f"--country and --demo are both '{self.country}'; pick a "
                                 "different demonstration country")
        return table

    def record(self) -> dict:
        return asdict(self)


def _indices(n: int, k: int, seed: int) -> list[int]:
    return list(range(n)) if k >= n else sorted(
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def select_items(model, items: list[Capital], config: FfnConfig, ledger: Ledger | None = None
                 ) -> tuple[list, list, dict, CleanRun]:
    """The swept countries and their demonstrations, the full-table clean accuracy, and the
    full table's clean run (reused by the transfer study)."""
    full = build_prompts(model, items, seed=config.seed)
    clean_run = CleanRun(model, full.tokens, full.lengths, config.batch_size, ledger=ledger)
    clean = evaluate(model, full, [], clean=clean_run)["clean"]
    correct = (clean.top1 == full.capital_ids).tolist()
    info = {"table_size": len(items), "table_accuracy": sum(correct) / len(items)}
    pool = list(range(len(items)))
    if config.select == "correct":
        pool = [i for i in pool if correct[i]]
        if len(pool) < 2:
            pool, info["fallback"] = list(range(len(items))), "too few correct: sampled all"
    keep = [pool[i] for i in _indices(len(pool), config.n_prompts, config.seed)]
    return [full.items[i] for i in keep], [full.demos[i] for i in keep], info, clean_run


def _name(mode: str, cond: str) -> str:
    return f"{mode}/{cond}"


def sweep(model, prompts, config: FfnConfig, ledger: Ledger | None = None
          ) -> tuple[dict[str, Outcome], dict, dict]:
    """Single-layer and window ablations in every position mode, on one prompt set.

    Mean ablation leaves position 0 unchanged when every prompt starts with the same token
    (the mean of identical values), so there "no-first" equals "all" and is not rerun.

    Returns:
        (outcomes by condition name, massive-activation report, aliases {name: same-as}).
    """
    clean = CleanRun(model, prompts.tokens, prompts.lengths, config.batch_size, keep_mlp=True,
                     ledger=ledger)
    means = MlpMeans(clean)
    shared_first = bool((prompts.tokens[:, 0] == prompts.tokens[0, 0]).all())
    conds, aliases = [], {}
    for mode in config.positions:
        for kind in config.kinds:
            made = (single_layer_conditions(model, kind, means, mode)
                    + window_conditions(model, kind, means, positions=mode))
            if kind == "mean" and mode == "no-first" and shared_first and "all" in \
                    config.positions:
                aliases |= {_name(mode, c.name): _name("all", c.name) for c in made}
                continue
            conds += [Condition(_name(mode, c.name), c.make, c.sparse) for c in made]
    for mode in (p for p in POSITIONS if p not in config.positions):
        conds += [Condition(_name(mode, c.name), c.make, c.sparse)
                  for c in window_conditions(model, "zero", positions=mode)]
    res = evaluate(model, prompts, conds, clean=clean, ledger=ledger,
                   desc=f"{prompts.kind} ablations")
    res |= {alias: res[same] for alias, same in aliases.items()}
    return res, massive_activations(clean), aliases


def tables(n_layers: int, results: dict[str, dict[str, Outcome]], answers,
           positions: tuple[str, ...], kinds: tuple[str, ...] = KINDS) -> tuple[dict, dict]:
    """single_layer[mode][layer][kind][prompt kind] and windows[mode][fraction][...]."""
    def cell(name):
        return {pk: results[pk][name].summary(answers[pk]) for pk in results}

    single = {m: {str(la): {k: cell(_name(m, f"{k}:L{la}")) for k in kinds}
                  for la in range(n_layers)} for m in positions}
    windows = {m: {f"{f:.3f}": {"layers": window(n_layers, f)} |
                   {k: cell(_name(m, f"{k}:top{f:.3f}")) for k in KINDS
                    if _name(m, f"{k}:top{f:.3f}") in results["abstractive"]}
                   for f in FRACTIONS} for m in POSITIONS}
    return single, windows


def named_demo(model, items, config: FfnConfig, layers: list[int],
               window_layers: list[int]) -> dict:
    """Capital prob/rank on the named prompt: clean, ablated, ablated + answer in context."""
    item, demo = find(items, config.country), find(items, config.demo)
    where = config.critical_positions
    out = {"country": item.country, "capital": item.capital, "demo": demo.country,
           "critical_layers": layers, "window_layers": window_layers, "positions": where}
    for kind in PROMPT_KINDS:
        p = build_prompts(model, [item], kind, demos=[demo])
        res = evaluate(model, p, [ablation_condition("critical", layers, "zero", None, where),
                                  ablation_condition("window", window_layers, "zero", None,
                                                      where)], desc="demo")
        out[f"prompt_{kind}"] = p.texts[0]
        for cond, r in res.items():
            label = "clean" if cond == "clean" else f"ablated_{cond}"
            label += "_in_context" if kind == "extractive" else ""
            out[label] = {"capital_prob": float(r.prob[0]), "capital_rank": int(r.rank[0]),
                          "top1": model.tokenizer.decode([int(r.top1[0])])}
    return out


def _critical(single: dict, clean: dict, n_layers: int) -> tuple[int, list[int]]:
    acc = [[single[str(la)]["zero"][k]["accuracy"] for la in range(n_layers)]
           for k in PROMPT_KINDS]
    return critical_layers(*acc, clean["abstractive"]["accuracy"],
                           clean["extractive"]["accuracy"], min_layer=n_layers // 2)


def run_study(model, config: FfnConfig, items: list[Capital] | None = None,
              stage=None) -> dict:
    """The whole study (see module doc); `stage(name)` is an optional timing context
    (e.g. `Provenance.stage`). Returns the summary (without provenance)."""
    stage = stage or (lambda name: nullcontext())
    items = items if items is not None else mark_tokens(model, load_capitals(config.table))
    n = model.cfg.n_layers
    share = mlp_share(model.cfg)
    ledgers = {k: Ledger(n, mlp_share=share)
               for k in ("selection", *PROMPT_KINDS, "transfer", "specificity")}
    with stage("select"):
        chosen, demos, info, full = select_items(model, items, config, ledgers["selection"])
    sets = {k: build_prompts(model, chosen, k, demos=demos) for k in PROMPT_KINDS}
    results, massive, aliases = {}, {}, {}
    with stage("ablation_sweeps"):
        for k, p in sets.items():
            results[k], massive[k], aliases[k] = sweep(model, p, config, ledgers[k])
    answers = {k: p.capital_ids for k, p in sets.items()}
    single, windows = tables(n, results, answers, config.positions, config.kinds)
    clean = {k: results[k]["clean"].summary(answers[k]) for k in sets}
    best, layers = _critical(single[config.critical_positions], clean, n)
    gap = windows[config.critical_positions]
    gap_window = max(gap, key=lambda f: gap[f]["zero"]["extractive"]["accuracy"]
                     - gap[f]["zero"]["abstractive"]["accuracy"])
    with stage("demo_and_transfer"):
        demo = named_demo(model, items, config, layers, gap[gap_window]["layers"])
        moved = transfer_study(model, items, config, best, full, ledgers["transfer"])
        spec = specificity(model, items, config, best, ledgers["specificity"])
    return {"model": model.interp_spec, "n_prompts": len(chosen), "selection": info,
            "countries": [it.country for it in chosen], "clean": clean,
            "critical_layer": best, "critical_layers": layers,
            "critical_layer_positions": config.critical_positions,
            "single_layer": single, "windows": windows,
            "mean_no_first_equals_all": all(bool(a) for a in aliases.values()),
            "massive_activations": massive, "poland_demo": demo, "transfer": moved,
            "specificity": spec, "work_fpe": _work(ledgers, full.lengths),
            "config": config.record()}


def _work(ledgers: dict[str, Ledger], table_lengths) -> dict:
    """Each stage's work in FPE of its prompt set (the transfer's: the whole table)."""
    notes = {"selection": "minimum 1 (one forward of the table)",
             "abstractive": "minimum = real_tokens_only: each condition from its first "
                            "ablated block, the replaced MLPs not run (a block without its "
                            "MLP counts as its attention's share of the FLOPs)",
             "extractive": "as abstractive",
             "transfer": "exact recomputation from the steered block; a KV-cached run of the "
                         "read position alone would need ~1/mean-length of it",
             "specificity": "as transfer, on the specificity prompts"}
    return {k: led.fpe(table_lengths if k == "transfer" else None) | {"minimum": notes[k]}
            for k, led in ledgers.items()}
