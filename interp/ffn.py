"""FFN (MLP) ablation and o-vector transfer on the capital task.

Ablations act on `blocks.L.hook_mlp_out` at every position, through `interp.interventions`:

- zero: the MLP output is 0 (the layer is removed);
- mean: the mean MLP output over the dataset's prompts at the same position. Prompts differ in
  length, so positions are aligned in two parts: the template tail shared by every prompt
  (e.g. "?\\nA:") is aligned from the end, so a read position is always averaged with read
  positions; every earlier position is aligned from the start (BOS with BOS).

Each condition resumes the forward at its first intervened layer from the clean residual
stream (`interp.forward.run_blocks`), which is exact and saves the blocks below it.

o-vector transfer (Merullo et al. 2023): the critical layer's MLP output at the last position
of a source prompt (Poland) is put into the runs of other countries, either
- "add": added to the residual stream after that layer (on top of the target's own MLP), or
- "replace": it replaces the MLP outputs of that layer and all later layers at the last position
  (the target's own late FFNs are gone; only the transplanted vector remains),
and compared with a random vector of the same norm.

Example:
    >>> conds = single_layer_conditions(model, "zero") + window_conditions(model, "zero")
    >>> results = evaluate(model, prompts, conds)
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.capitals import CapitalPrompts
from interp.forward import block_kwargs, run_blocks, unembed
from interp.interventions import (
    Intervention,
    ablate_mlp,
    add_to_resid,
    applied,
    patch_node,
    set_mlp_out,
)
from interp.lens import rank_of
from interp.nodes import Mlp

FRACTIONS = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0)
MakeIvs = Callable[[slice, Int[Tensor, " batch"]], list[Intervention]]


@dataclass
class Condition:
    """A named set of interventions, built per batch from (prompt slice, read positions)."""

    name: str
    make: MakeIvs


def _device(model):
    return next(model.parameters()).device


def _first_layer(ivs: list[Intervention], n_layers: int) -> int:
    layers = [int(m.group(1)) for iv in ivs if (m := re.match(r"blocks\.(\d+)\.", iv.hook_name))]
    return min(layers, default=n_layers)


def common_suffix(tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"]) -> int:
    """Number of trailing tokens shared by every prompt (the template tail)."""
    rows = [tokens[i, : int(n)].tolist() for i, n in enumerate(lengths)]
    shortest = min(len(r) for r in rows)
    tail = 0
    while tail < shortest and len({tuple(r[len(r) - tail - 1:]) for r in rows}) == 1:
        tail += 1
    return tail


class MlpMeans:
    """Aligned per-position means of every MLP's output over a prompt set (see module doc)."""

    def __init__(self, model, prompts: CapitalPrompts, batch_size: int = 32):
        self.lengths = prompts.lengths
        self.tail = common_suffix(prompts.tokens, prompts.lengths)
        n_layers, d = model.cfg.n_layers, model.cfg.d_model
        pos = prompts.tokens.shape[1]
        self.start = torch.zeros(n_layers, pos, d)
        self.end = torch.zeros(n_layers, self.tail, d)
        counts = torch.zeros(pos)
        names = [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
        for s in range(0, len(prompts), batch_size):
            toks = prompts.tokens[s: s + batch_size].to(_device(model))
            with torch.inference_mode():
                _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
            acts = torch.stack([cache[n] for n in names]).float().cpu()  # [L, b, pos, d]
            for b, n in enumerate(self.lengths[s: s + batch_size].tolist()):
                head = n - self.tail
                self.start[:, :head] += acts[:, b, :head]
                counts[:head] += 1
                self.end += acts[:, b, head:n]
        self.start /= counts.clamp(min=1)[None, :, None]
        self.end /= len(prompts)

    def value(self, layer: int, sl: slice) -> Float[Tensor, "batch pos d"]:
        """The mean-ablation value of MLP `layer` for the prompts in `sl`."""
        lengths = self.lengths[sl]
        out = torch.zeros(len(lengths), self.start.shape[1], self.start.shape[2])
        for b, n in enumerate(lengths.tolist()):
            head = n - self.tail
            out[b, :head] = self.start[layer, :head]
            out[b, head:n] = self.end[layer]
        return out


POSITIONS = ("all", "no-first", "last")


def ablation(layers: list[int], kind: str, means: MlpMeans | None = None,
             positions: str = "all") -> MakeIvs:
    """Interventions ablating the MLPs of `layers`.

    Args:
        positions: "all"; "no-first" (every position but the first, which holds BOS or the
            first token, the attention sink); "last" (each prompt's read position only).
    """
    if kind == "mean" and means is None:
        raise ValueError("mean ablation needs MlpMeans of the prompt set")
    if kind not in ("zero", "mean"):
        raise ValueError(f"ablation kind must be 'zero' or 'mean', got '{kind}'")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got '{positions}'")

    def make(sl: slice, read) -> list[Intervention]:
        where = {"all": None, "last": read}.get(positions)
        if positions == "no-first":
            where = list(range(1, int(read.max()) + 1))
        if kind == "zero":
            return [ablate_mlp(layer, positions=where) for layer in layers]
        key = "blocks.{}.hook_mlp_out"
        return [patch_node(Mlp(layer), {key.format(layer): means.value(layer, sl)}, where)
                for layer in layers]
    return make


def window(n_layers: int, fraction: float) -> list[int]:
    """The top `fraction` of the layers (at least one): the last round(fraction * n)."""
    n = max(1, round(fraction * n_layers))
    return list(range(n_layers - n, n_layers))


def single_layer_conditions(model, kind: str, means: MlpMeans | None = None,
                            positions: str = "all") -> list[Condition]:
    return [Condition(f"{kind}:L{layer}", ablation([layer], kind, means, positions))
            for layer in range(model.cfg.n_layers)]


def window_conditions(model, kind: str, means: MlpMeans | None = None,
                      fractions=FRACTIONS, positions: str = "all") -> list[Condition]:
    return [Condition(f"{kind}:top{f:.3f}", ablation(window(model.cfg.n_layers, f), kind, means,
                                                     positions))
            for f in fractions]


@dataclass
class Outcome:
    """Per-prompt answer statistics at the read position."""

    rank: Int[Tensor, " batch"]
    prob: Float[Tensor, " batch"]
    top1: Int[Tensor, " batch"]

    def summary(self, answer: Int[Tensor, " batch"]) -> dict:
        return {"accuracy": float((self.top1 == answer).float().mean()),
                "capital_prob": float(self.prob.mean()),
                "mrr": float((1 / self.rank.float()).mean())}


def _score(logits: Float[Tensor, "batch vocab"], answer: Int[Tensor, " batch"]):
    logits = logits.float()
    ids = answer.to(logits.device)
    prob = logits.softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    return rank_of(logits, ids).cpu(), prob.cpu(), logits.argmax(-1).cpu()


def evaluate(model, prompts: CapitalPrompts, conditions: list[Condition],
             answer: Int[Tensor, " batch"] | None = None, batch_size: int = 32,
             desc: str = "conditions") -> dict[str, Outcome]:
    """Run every condition on every prompt; "clean" is always included.

    Args:
        answer: token scored at the read position (default: the prompts' capitals).
    """
    answer = prompts.capital_ids if answer is None else answer
    n_layers = model.cfg.n_layers
    parts: dict[str, list] = {"clean": []} | {c.name: [] for c in conditions}
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    bar = tqdm(total=len(conditions) * len(prompts), desc=desc, unit="run", leave=False,
               disable=not conditions)
    for s in range(0, len(prompts), batch_size):
        sl = slice(s, s + batch_size)
        toks = prompts.tokens[sl].to(_device(model))
        read = prompts.read_positions[sl].to(toks.device)
        rows = torch.arange(toks.shape[0], device=toks.device)
        with torch.inference_mode():
            kw = block_kwargs(model, toks)
            logits, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
            parts["clean"].append(_score(logits[rows, read], answer[sl]))
            for cond in conditions:
                ivs = cond.make(sl, read)
                start = _first_layer(ivs, n_layers)
                with applied(model, ivs):
                    resid = run_blocks(model, cache[names[start]] if start < n_layers
                                       else cache[names[-1]], min(start, n_layers - 1), kw)
                parts[cond.name].append(_score(unembed(model, resid[rows, read]), answer[sl]))
                bar.update(toks.shape[0])
    bar.close()
    return {name: Outcome(*(torch.cat([p[i] for p in ps]) for i in range(3)))
            for name, ps in parts.items()}


def critical_layers(abstractive: list[float], extractive: list[float], clean_abs: float,
                    clean_ext: float, share: float = 0.5,
                    min_layer: int = 0) -> tuple[int, list[int]]:
    """The layer whose ablation hurts recall most, and all layers within `share` of it.

    Score per layer = (abstractive accuracy drop) - (extractive accuracy drop): a recall layer
    is one the model needs when the answer is not in context, not one whose removal breaks
    everything (e.g. MLP 0, which acts as part of the embedding). Only layers >= `min_layer`
    are candidates (the paper's o-vectors come from mid-to-late layers).
    """
    scores = [(clean_abs - a) - (clean_ext - e) for a, e in zip(abstractive, extractive,
                                                                strict=True)]
    cands = range(min_layer, len(scores))
    best = max(cands, key=lambda layer: (scores[layer], -layer))
    top = scores[best]
    layers = [la for la in cands if top > 0 and scores[la] >= share * top]
    return best, sorted(layers, key=lambda la: -scores[la]) or [best]


def mlp_out_at(model, tokens: Int[Tensor, " pos"], layer: int) -> Float[Tensor, " d_model"]:
    """MLP `layer`'s output at the last position of one (unpadded) prompt: the o-vector."""
    name = f"blocks.{layer}.hook_mlp_out"
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None].to(_device(model)),
                                        names_filter=lambda n: n == name)
    return cache[name][0, -1].float().cpu()


def random_like(vector: Float[Tensor, " d"], seed: int) -> Float[Tensor, " d"]:
    """A seeded random direction with the same norm as `vector`."""
    noise = torch.randn(vector.shape, generator=torch.Generator().manual_seed(seed))
    return noise / noise.norm() * vector.norm()


def transfer(layer: int, vector: Float[Tensor, " d"], mode: str, n_layers: int) -> MakeIvs:
    """Put `vector` into a run at each prompt's read position (see module doc for modes)."""
    if mode == "add":
        return lambda sl, read: [add_to_resid(layer, read, vector, where="resid_post")]
    if mode == "replace":
        return lambda sl, read: [set_mlp_out(la, vector, positions=read)
                                 for la in range(layer, n_layers)]
    raise ValueError(f"transfer mode must be 'add' or 'replace', got '{mode}'")


def transfer_conditions(model, layer: int, vector: Float[Tensor, " d"],
                        seed: int) -> list[Condition]:
    """o-vector and same-norm random vector, in both modes."""
    rand = random_like(vector, seed)
    n = model.cfg.n_layers
    return [Condition(f"{mode}:{name}", transfer(layer, vec, mode, n))
            for mode in ("add", "replace") for name, vec in (("o_vector", vector),
                                                            ("random", rand))]
