"""Evaluating a circuit hypothesis: faithfulness, completeness, minimality (IOI paper, sec. 4).

A circuit is a set of heads, each kept at all positions or only at named positions. Every
head outside it (and every kept head at its other positions) is mean-ablated: replaced by its
mean output over the corrupted prompts of the same group (template) at the same position.
MLPs are kept, unless the circuit lists MLP nodes: then MLPs outside it are mean-ablated too.

Normalised faithfulness (MIB): (F(C) - F(0)) / (F(M) - F(0)), F(0) the metric with every
head ablated: 1 = the full model, 0 = nothing kept (`normalised_faithfulness`).

Example:
    >>> circuit = {Head(9, 9): ["END"], Head(9, 6): ["END"]}
    >>> f = faithfulness(model, runs, circuit)
    >>> f["faithfulness"], f["normalised_faithfulness"]  # F(C) / F(M), MIB-style
    >>> result = evaluate(model, runs, circuit, groups, kind="resample")
"""

from collections.abc import Iterable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from interp.arch import family_of
from interp.errors import UserValueError
from interp.mean_ablation import Circuit, MeanAblation
from interp.metrics import logits_at
from interp.nodes import Head, Mlp, Node
from interp.patching import counter
from interp.patching.runs import Runs, metric_from_resid


@torch.inference_mode()
def circuit_metric(model, runs: Runs, circuit: Circuit) -> Float[Tensor, " batch"]:
    """Per-prompt metric on the clean prompts with everything outside `circuit` ablated.

    One plain forward with hooks: the reference `MeanAblation.metrics` is tested against.
    """
    batch = runs.batch
    with model.hooks(fwd_hooks=ablation_hooks(model, runs, circuit)):
        logits = model(batch.clean_tokens.to(model.cfg.device))
    return batch.metric(logits_at(logits, batch.read_positions))


def ablation_hooks(model, runs: Runs, circuit: Circuit) -> list:
    """Hooks that mean-ablate everything outside `circuit` (see `interp.mean_ablation`)."""
    ev = MeanAblation(model, runs)
    return ev.hooks([ev.ablation(circuit)])


def full_circuit(model) -> dict[Node, None]:
    """Every head at all positions: the model M itself, as a circuit."""
    return {Head(la, h): None for la in range(model.cfg.n_layers)
            for h in range(model.cfg.n_heads)}


def without(circuit: Circuit, nodes: Iterable[Node]) -> dict:
    drop = set(nodes)
    return {n: p for n, p in circuit.items() if n not in drop}


def _mean(ev: MeanAblation, circuits: list[Circuit], progress: bool = False) -> list[float]:
    return ev.metrics(circuits, progress).mean(-1).tolist()


def normalised_faithfulness(f_c: float, f_model: float, f_empty: float) -> float:
    """(F(C) - F(0)) / (F(M) - F(0)): 1 = the full model, 0 = every head ablated.

    UserValueError when F(M) and F(0) (nearly) agree: the ratio is then undefined.

    Example:
        >>> normalised_faithfulness(1.5, 2.0, 1.0)
        0.5
    """
    if abs(f_model - f_empty) <= 1e-6 * max(1.0, abs(f_model), abs(f_empty)):
        raise UserValueError(
            f"the full model (F(M) = {f_model:.6g}) and the fully ablated model (F(0) = "
            f"{f_empty:.6g}) score the same on this task, so normalised faithfulness is "
            "undefined; use a task the model solves (clean metric far from corrupted)")
    return (f_c - f_empty) / (f_model - f_empty)


@torch.inference_mode()
def all_heads_ablated(ev: MeanAblation) -> Float[Tensor, " batch"] | None:
    """Per-prompt metric with every head ablated (F(0); MLPs kept), at the read positions only.

    With every head replaced by its mean, a layer's attention output at a position no longer
    reads any other position, so each read position's residual stream is computed alone: one
    token per prompt per layer instead of a full forward. None off the fast engine
    (`interp.arch`); `ev.metrics([{}])` is the plain computation. Kept on `ev` (`ev.empty`):
    every faithfulness on the same means shares it.
    """
    model, batch = ev.model, ev.batch
    family = family_of(model)
    if family is None:
        return None
    if ev.empty is not None:
        return ev.empty
    rows, read = torch.arange(len(batch)), batch.read_positions
    x = ev.runs.clean_cache["blocks.0.hook_resid_pre"][rows, read]
    w_o, b_o = model.W_O, getattr(model, "b_O", None)
    for layer in range(model.cfg.n_layers):
        attn = torch.einsum("bhe,hed->bd", ev.z_means[layer][rows, read].to(x.dtype), w_o[layer])
        if b_o is not None:
            attn = attn + b_o[layer]
        x = family.block_step(model, layer, x, attn)
        counter.add(len(batch))
    ev.empty = metric_from_resid(model, batch, x)
    return ev.empty


def read_share(batch) -> float:
    """The share of a padded forward of `batch` that lies at or before each prompt's read
    position: what a run that must compute every token up to the read needs at least
    (later tokens change nothing there; e.g. 0.85 for IOI's padded prompts)."""
    return float((batch.read_positions + 1).sum()) / batch.clean_tokens.numel()


def faithfulness(model, runs: Runs, circuit: Circuit, ev: MeanAblation | None = None) -> dict:
    """F(C), F(M), F(0) (every head ablated), F(C)/F(M), the normalised faithfulness and
    the circuit's head and MLP counts (mean metric; F(M) is the unablated clean metric)."""
    ev = ev or MeanAblation(model, runs)
    plain = type(ev).metrics is MeanAblation.metrics  # (a subclass may define F differently)
    empty = all_heads_ablated(ev) if plain else None
    if empty is None:
        f_c, f_empty = _mean(ev, [circuit, {}])
    else:
        (f_c,), f_empty = _mean(ev, [circuit]), empty.mean().item()
    f_m = runs.clean_metric.mean().item()
    return {"F_C": f_c, "F_M": f_m, "faithfulness": f_c / f_m, "F_all_heads_ablated": f_empty,
            "normalised_faithfulness": normalised_faithfulness(f_c, f_m, f_empty),
            "n_heads": sum(isinstance(n, Head) for n in circuit),
            "n_mlps": sum(isinstance(n, Mlp) for n in circuit)}


def completeness(model, runs: Runs, circuit: Circuit, groups: Mapping[str, list[Node]],
                 progress: bool = False, ev: MeanAblation | None = None) -> dict:
    """For each group K: F(C \\ K), F(M \\ K) and |F(C \\ K) - F(M \\ K)| (0 = complete)."""
    ev = ev or MeanAblation(model, runs)
    names = [name for name, nodes in groups.items() if nodes]
    model_circuit = full_circuit(model)
    values = _mean(ev, [without(c, groups[name]) for name in names
                        for c in (circuit, model_circuit)], progress)
    out = {}
    for name, f_c, f_m in zip(names, values[::2], values[1::2], strict=True):
        out[name] = {"F_C_minus_K": f_c, "F_M_minus_K": f_m, "incompleteness": abs(f_c - f_m)}
    return out


def minimality(model, runs: Runs, circuit: Circuit, groups: Mapping[str, list[Node]],
               threshold: float = 0.01, progress: bool = False,
               ev: MeanAblation | None = None) -> dict:
    """Each node's contribution |F(C \\ (K + v)) - F(C \\ K)|, minimal when >= threshold x F(M).

    K = {} first; for a node below the threshold, also K = its group minus v (backup heads
    hide single knock-outs, as in the paper), and the larger contribution counts.
    """
    ev = ev or MeanAblation(model, runs)
    f_m = runs.clean_metric.mean().item()
    nodes = list(circuit)
    f_c, *knocked = _mean(ev, [circuit] + [without(circuit, [v]) for v in nodes], progress)
    contribution = {v: abs(k - f_c) for v, k in zip(nodes, knocked, strict=True)}
    group_of = {n: g for g, members in groups.items() for n in members}
    rest = {v: [n for n in groups.get(group_of.get(v), []) if n != v] for v in nodes}
    weak = [v for v in nodes if contribution[v] < threshold * abs(f_m) and rest[v]]
    pairs = _mean(ev, [c for v in weak for c in (without(circuit, rest[v]),
                                                without(circuit, [*rest[v], v]))], progress)
    k_used = {v: "{}" for v in nodes}
    for v, base, knocked_v in zip(weak, pairs[::2], pairs[1::2], strict=True):
        if abs(knocked_v - base) > contribution[v]:
            contribution[v], k_used[v] = abs(knocked_v - base), f"group {group_of[v]} minus v"
    per_node = {str(v): {"contribution": contribution[v], "K": k_used[v],
                         "relative_to_F_M": contribution[v] / abs(f_m),
                         "minimal": contribution[v] >= threshold * abs(f_m)} for v in nodes}
    return {"threshold": threshold, "per_node": per_node,
            "all_minimal": all(v["minimal"] for v in per_node.values())}


def evaluate(model, runs: Runs, circuit: Circuit, groups: Mapping[str, list[Node]],
             threshold: float = 0.01, kind: str = "mean", seed: int = 0,
             progress: bool = False) -> dict:
    """Faithfulness, completeness per group and minimality per node of `circuit`, with
    everything outside it ablated the `kind` way ("mean", "zero", "resample" with `seed`)."""
    ev = MeanAblation(model, runs, kind, seed)
    return {"faithfulness": faithfulness(model, ev.runs, circuit, ev),
            "completeness": completeness(model, ev.runs, circuit, groups, progress, ev),
            "minimality": minimality(model, ev.runs, circuit, groups, threshold, progress, ev)}
