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
from tqdm.auto import tqdm

from interp.metrics import logits_at
from interp.nodes import Head, Mlp, Node
from interp.patching.runs import Runs

Circuit = Mapping[Node, list[str] | None]  # node -> kept positions (None: all)


def _group_means(act: Float[Tensor, "batch pos ..."], groups) -> Tensor:
    """Each prompt's row replaced by the mean of its group's rows (same template)."""
    out = torch.empty_like(act)
    for g in groups.unique():
        rows = groups == g
        out[rows] = act[rows].mean(0, keepdim=True)
    return out


def _keep_mask(batch, positions: list[str] | None, seq: int) -> Tensor:
    if positions is None:
        return torch.ones(len(batch), seq, dtype=torch.bool)
    mask = torch.zeros(len(batch), seq, dtype=torch.bool)
    rows = torch.arange(len(batch))
    for name in positions:
        if name not in batch.positions:
            raise ValueError(f"unknown position '{name}'; this task has "
                             f"{sorted(batch.positions)}")
        mask[rows, batch.positions[name]] = True
    return mask


def ablation_hooks(model, runs: Runs, circuit: Circuit) -> list:
    """Hooks that mean-ablate everything outside `circuit` (see module docstring)."""
    batch, cache = runs.batch, runs.corrupted_cache
    seq = batch.clean_tokens.shape[1]
    ablate_mlps = any(isinstance(n, Mlp) for n in circuit)
    hooks = []
    for layer in range(model.cfg.n_layers):
        keep = torch.zeros(len(batch), seq, model.cfg.n_heads, dtype=torch.bool)
        for node, positions in circuit.items():
            if isinstance(node, Head) and node.layer == layer:
                keep[:, :, node.head] |= _keep_mask(batch, positions, seq)
        hooks.append(_replace_hook(f"blocks.{layer}.attn.hook_z", keep[..., None],
                                   _group_means(cache[f"blocks.{layer}.attn.hook_z"],
                                                batch.groups)))
        if ablate_mlps:
            keep_mlp = _keep_mask(batch, circuit.get(Mlp(layer)), seq) if Mlp(layer) in circuit \
                else torch.zeros(len(batch), seq, dtype=torch.bool)
            hooks.append(_replace_hook(f"blocks.{layer}.hook_mlp_out", keep_mlp[..., None],
                                       _group_means(cache[f"blocks.{layer}.hook_mlp_out"],
                                                    batch.groups)))
    return hooks


def _replace_hook(name: str, keep: Tensor, mean: Tensor):
    def hook(act, hook=None):
        return torch.where(keep.to(act.device), act, mean.to(act.device))
    return (name, hook)


@torch.inference_mode()
def circuit_metric(model, runs: Runs, circuit: Circuit) -> Float[Tensor, " batch"]:
    """Per-prompt metric on the clean prompts with everything outside `circuit` ablated."""
    batch = runs.batch
    with model.hooks(fwd_hooks=ablation_hooks(model, runs, circuit)):
        logits = model(batch.clean_tokens.to(model.cfg.device))
    return batch.metric(logits_at(logits, batch.read_positions))


def full_circuit(model) -> dict[Node, None]:
    """Every head at all positions: the model M itself, as a circuit."""
    return {Head(la, h): None for la in range(model.cfg.n_layers)
            for h in range(model.cfg.n_heads)}


def without(circuit: Circuit, nodes: Iterable[Node]) -> dict:
    drop = set(nodes)
    return {n: p for n, p in circuit.items() if n not in drop}


def faithfulness(model, runs: Runs, circuit: Circuit) -> dict:
    """F(C), F(M) and F(C)/F(M) (mean metric; F(M) is the unablated clean metric)."""
    f_c = circuit_metric(model, runs, circuit).mean().item()
    f_m = runs.clean_metric.mean().item()
    return {"F_C": f_c, "F_M": f_m, "faithfulness": f_c / f_m, "n_heads": len(circuit)}


def completeness(model, runs: Runs, circuit: Circuit, groups: Mapping[str, list[Node]],
                 progress: bool = False) -> dict:
    """For each group K: F(C \\ K), F(M \\ K) and |F(C \\ K) - F(M \\ K)| (0 = complete)."""
    model_circuit = full_circuit(model)
    out = {}
    for name, nodes in tqdm(groups.items(), desc="completeness", disable=not progress):
        if not nodes:
            continue
        f_c = circuit_metric(model, runs, without(circuit, nodes)).mean().item()
        f_m = circuit_metric(model, runs, without(model_circuit, nodes)).mean().item()
        out[name] = {"F_C_minus_K": f_c, "F_M_minus_K": f_m, "incompleteness": abs(f_c - f_m)}
    return out


def minimality(model, runs: Runs, circuit: Circuit, groups: Mapping[str, list[Node]],
               threshold: float = 0.01, progress: bool = False) -> dict:
    """Each node's contribution |F(C \\ (K + v)) - F(C \\ K)|, minimal when >= threshold x F(M).

    K = {} first; for a node below the threshold, also K = its group minus v (backup heads
    hide single knock-outs, as in the paper), and the larger contribution counts.
    """
    f_m = runs.clean_metric.mean().item()
    f_c = circuit_metric(model, runs, circuit).mean().item()
    group_of = {n: g for g, nodes in groups.items() for n in nodes}
    per_node = {}
    for node in tqdm(circuit, desc="minimality", disable=not progress):
        contribution = abs(circuit_metric(model, runs, without(circuit, [node])).mean().item()
                           - f_c)
        rest = [n for n in groups.get(group_of.get(node), []) if n != node]
        k = "{}"
        if contribution < threshold * abs(f_m) and rest:
            base = circuit_metric(model, runs, without(circuit, rest)).mean().item()
            knocked = circuit_metric(model, runs, without(circuit, [*rest, node])).mean().item()
            if abs(knocked - base) > contribution:
                contribution, k = abs(knocked - base), f"group {group_of[node]} minus v"
        per_node[str(node)] = {"contribution": contribution, "K": k,
                               "relative_to_F_M": contribution / abs(f_m),
                               "minimal": contribution >= threshold * abs(f_m)}
    return {"threshold": threshold, "per_node": per_node,
            "all_minimal": all(v["minimal"] for v in per_node.values())}
