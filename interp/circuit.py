"""Evaluating a circuit hypothesis: faithfulness, completeness, minimality (IOI paper, sec. 4).

A circuit is a set of heads, each kept at all positions or only at named positions. Every
head outside it (and every kept head at its other positions) is mean-ablated: replaced by its
mean output over the corrupted prompts of the same group (template) at the same position.
MLPs are kept, unless the circuit lists MLP nodes: then MLPs outside it are mean-ablated too.

Example:
    >>> circuit = {Head(9, 9): ["END"], Head(9, 6): ["END"]}
    >>> f = faithfulness(model, runs, circuit)
    >>> f["faithfulness"]  # F(C) / F(M)
"""

from collections.abc import Iterable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from interp.mean_ablation import Circuit, MeanAblation
from interp.metrics import logits_at
from interp.nodes import Head, Node
from interp.patching.runs import Runs


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


def faithfulness(model, runs: Runs, circuit: Circuit, ev: MeanAblation | None = None) -> dict:
    """F(C), F(M) and F(C)/F(M) (mean metric; F(M) is the unablated clean metric)."""
    [f_c] = _mean(ev or MeanAblation(model, runs), [circuit])
    f_m = runs.clean_metric.mean().item()
    return {"F_C": f_c, "F_M": f_m, "faithfulness": f_c / f_m, "n_heads": len(circuit)}


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
