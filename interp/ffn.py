"""FFN (MLP) ablation and o-vector transfer on the capital task.

Ablations act on `blocks.L.hook_mlp_out` at every position, through `interp.interventions`:

- zero: the MLP output is 0 (the layer is removed);
- mean: the mean MLP output over the dataset's prompts at the same position. Prompts differ in
  length, so positions are aligned in two parts: the template tail shared by every prompt
  (e.g. "?\\nA:") is aligned from the end, so a read position is always averaged with read
  positions; every earlier position is aligned from the start (BOS with BOS).

Each condition resumes the forward at its first intervened layer from the clean residual
stream of one cached clean run (`interp.ffn_clean.CleanRun`, `interp.forward.run_blocks`),
which is exact and saves the blocks below it. Vectors added at the answer position are run
as tiled variants of one batch (`add_variants`).

o-vector transfer (Merullo et al. 2023): the critical layer's MLP output at the last position
of a source prompt (Poland) is put into the runs of other countries, either
- "add": added to the residual stream after that layer (on top of the target's own MLP), or
- "replace": it replaces the MLP outputs of that layer and all later layers at the last position
  (the target's own late FFNs are gone; only the transplanted vector remains),
and compared with a random vector of the same norm (controls: `interp.ffn_transfer`).

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
from interp.ffn_clean import CleanBatch, CleanRun, Ledger
from interp.ffn_sparse import MlpEdit, SparseEdit, run_edits, supported
from interp.forward import repeat_kwargs, run_blocks, unembed
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
MakeIvs = Callable[[CleanBatch], list[Intervention]]


@dataclass
class Condition:
    """A named set of interventions, built per clean batch (its rows, read positions, width).

    `sparse`, when given, builds the same run as a `SparseEdit`, which `evaluate` runs on the
    changed tokens only where the sparse engine applies (`interp.ffn_sparse`).
    """

    name: str
    make: MakeIvs
    sparse: Callable[[CleanBatch], SparseEdit] | None = None


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
    """Aligned per-position means of every MLP's output over a prompt set (see module doc).

    Built from a `CleanRun` that kept the MLP outputs (no extra forward).
    """

    def __init__(self, clean: CleanRun):
        if any(b.mlp_out is None for b in clean.batches):
            raise ValueError("MlpMeans needs a CleanRun built with keep_mlp=True")
        self.lengths = clean.lengths
        self.tail = common_suffix(clean.tokens, clean.lengths)
        n_layers, _, _, d = clean.batches[0].mlp_out.shape
        pos = clean.tokens.shape[1]
        self.start = torch.zeros(n_layers, pos, d)
        self.end = torch.zeros(n_layers, self.tail, d)
        counts = torch.zeros(pos)
        for batch in clean.batches:
            acts = batch.mlp_out.float().cpu()  # [L, b, pos, d]
            for b, n in enumerate(self.lengths[batch.rows].tolist()):
                head = n - self.tail
                self.start[:, :head] += acts[:, b, :head]
                counts[:head] += 1
                self.end += acts[:, b, head:n]
        self.start /= counts.clamp(min=1)[None, :, None]
        self.end /= len(self.lengths)

    def value(self, layer: int, rows: Int[Tensor, " b"], width: int) -> Float[Tensor, "b pos d"]:
        """The mean-ablation value of MLP `layer` for prompts `rows`, `width` positions."""
        out = torch.zeros(len(rows), width, self.start.shape[2])
        for b, n in enumerate(self.lengths[rows].tolist()):
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

    def make(batch) -> list[Intervention]:
        where = {"all": None, "last": batch.read}.get(positions)
        if positions == "no-first":
            where = list(range(1, batch.width))
        if kind == "zero":
            return [ablate_mlp(layer, positions=where) for layer in layers]
        key = "blocks.{}.hook_mlp_out"
        return [patch_node(Mlp(layer), {key.format(layer): means.value(layer, batch.rows,
                                                                       batch.width)}, where)
                for layer in layers]
    return make


def sparse_ablation(layers: list[int], kind: str, means: MlpMeans | None = None,
                    positions: str = "all") -> Callable[[CleanBatch], SparseEdit]:
    """`ablation(layers, kind, means, positions)` as a `SparseEdit`: from the first ablated
    block, at the first ablated position of each prompt on."""
    def edit(batch) -> SparseEdit:
        width, read = batch.width, batch.read.cpu()
        at = torch.arange(width)
        first = {"all": torch.zeros_like(read), "no-first": torch.ones_like(read).minimum(read),
                 "last": read}[positions]
        where = at[None, :] >= first[:, None] if positions != "last" else at[None, :] == \
            read[:, None]
        return SparseEdit(min(layers), first, mlp={
            la: MlpEdit(where, None if kind == "zero" else means.value(la, batch.rows, width))
            for la in layers})
    return edit


def ablation_condition(name: str, layers: list[int], kind: str, means: MlpMeans | None,
                        positions: str) -> Condition:
    return Condition(name, ablation(layers, kind, means, positions),
                     sparse_ablation(layers, kind, means, positions))


def window(n_layers: int, fraction: float) -> list[int]:
    """The top `fraction` of the layers (at least one): the last round(fraction * n)."""
    n = max(1, round(fraction * n_layers))
    return list(range(n_layers - n, n_layers))


def single_layer_conditions(model, kind: str, means: MlpMeans | None = None,
                            positions: str = "all") -> list[Condition]:
    return [ablation_condition(f"{kind}:L{layer}", [layer], kind, means, positions)
            for layer in range(model.cfg.n_layers)]


def window_conditions(model, kind: str, means: MlpMeans | None = None,
                      fractions=FRACTIONS, positions: str = "all") -> list[Condition]:
    return [ablation_condition(f"{kind}:top{f:.3f}", window(model.cfg.n_layers, f), kind,
                                means, positions)
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


def _score(logits: Float[Tensor, "batch vocab"], answer: Int[Tensor, " batch"]) -> Outcome:
    logits = logits.float()
    ids = answer.to(logits.device)
    prob = logits.softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    return Outcome(rank_of(logits, ids).cpu(), prob.cpu(), logits.argmax(-1).cpu())


def evaluate(model, prompts: CapitalPrompts, conditions: list[Condition],
             answer: Int[Tensor, " batch"] | None = None, batch_size: int = 32,
             desc: str = "conditions", clean: CleanRun | None = None,
             ledger: Ledger | None = None) -> dict[str, Outcome]:
    """Run every condition on every prompt; "clean" is always included.

    Each condition resumes at its first intervened block from the clean run (built here
    unless `clean`, a `CleanRun` of the same prompts, is given). A condition that changes the
    `Condition.sparse` edit runs on the changed tokens only (`interp.ffn_sparse`).

    Args:
        answer: token scored at the read position (default: the prompts' capitals).
    """
    answer = prompts.capital_ids if answer is None else answer
    if clean is None:
        clean = CleanRun(model, prompts.tokens, prompts.lengths, batch_size, ledger=ledger)
    sparse = supported(model)
    reads = [c for c in conditions if sparse and c.sparse is not None]
    hooked = [c for c in conditions if c not in reads]
    parts: dict[str, list] = {c.name: [] for c in conditions}
    bar = tqdm(total=len(conditions) * len(prompts), desc=desc, unit="run", leave=False,
               disable=not conditions)
    for batch in clean.batches:
        for cond in hooked:
            parts[cond.name].append(_hooked_run(model, batch, cond, clean.lengths, ledger))
            bar.update(len(batch.rows))
        if reads:
            logits = run_edits(model, batch, [c.sparse(batch) for c in reads], ledger)
            for cond, lg in zip(reads, logits, strict=True):
                parts[cond.name].append(lg)
            bar.update(len(reads) * len(batch.rows))
    bar.close()
    out = {"clean": _score(clean.read_logits(), answer)}
    return out | {name: _score(clean.gather(ps), answer) for name, ps in parts.items()}


def _hooked_run(model, batch: CleanBatch, cond: Condition, lengths,
                ledger: Ledger | None) -> Float[Tensor, "b vocab"]:
    """One condition on one clean batch: hooked blocks from its first intervened block."""
    n_layers = model.cfg.n_layers
    rows = torch.arange(len(batch.rows), device=batch.tokens.device)
    with torch.inference_mode():
        ivs = cond.make(batch)
        start = _first_layer(ivs, n_layers)
        with applied(model, ivs):
            resid = run_blocks(model, batch.resid[start], start, batch.kwargs)
        if ledger is not None:
            ledger.add(batch.width, lengths[batch.rows], n_layers - start)
        return unembed(model, resid[rows, batch.read])


def add_variants(model, clean: CleanRun, layer: int, vectors: Float[Tensor, "n d"],
                 answer: Int[Tensor, " batch"], ledger: Ledger | None = None,
                 max_rows: int = 256) -> list[Outcome]:
    """Each vector added to the residual stream after block `layer` at every prompt's read
    position: one token per block from block `layer + 1` where the sparse engine applies
    (`interp.ffn_sparse`), else all vectors in tiled batches of hook-free blocks.

    Equals `evaluate` with `transfer(layer, vector, "add", n_layers)` per vector.
    """
    n_layers, per = model.cfg.n_layers, []
    chunk = max(1, max_rows // max(len(b.rows) for b in clean.batches))
    with torch.inference_mode():
        for batch in clean.batches:
            if supported(model):
                per.append(run_edits(model, batch, [SparseEdit(layer + 1, batch.read, add=v)
                                                    for v in vectors], ledger))
            else:
                per.append(_add_batch(model, batch, layer, vectors, chunk, ledger, n_layers,
                                      clean.lengths[batch.rows]))
    logits = clean.gather([p.transpose(0, 1) for p in per]).transpose(0, 1)
    return [_score(lg, answer) for lg in logits]


def _add_batch(model, batch, layer, vectors, chunk, ledger, n_layers, lengths):
    """`add_variants` on one clean batch: logits `[n_vectors, b, vocab]`."""
    b, outs = len(batch.rows), []
    for s in range(0, len(vectors), chunk):
        vecs = vectors[s: s + chunk].to(batch.tokens.device)
        v = len(vecs)
        resid = batch.resid[layer + 1].repeat(v, 1, 1)
        rows = torch.arange(v * b, device=resid.device)
        read = batch.read.repeat(v)
        resid[rows, read] += vecs.repeat_interleave(b, 0).to(resid.dtype)
        resid = run_blocks(model, resid, layer + 1, repeat_kwargs(batch.kwargs, b, v))
        outs.append(unembed(model, resid[rows, read]).reshape(v, b, -1))
        if ledger is not None:
            ledger.add(batch.width, lengths.repeat(v), n_layers - layer - 1)
    return torch.cat(outs)


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
        return lambda batch: [add_to_resid(layer, batch.read, vector, where="resid_post")]
    if mode == "replace":
        return lambda batch: [set_mlp_out(la, vector, positions=batch.read)
                                 for la in range(layer, n_layers)]
    raise ValueError(f"transfer mode must be 'add' or 'replace', got '{mode}'")


def transfer_edit(layer: int, vector: Float[Tensor, " d"], mode: str,
                  n_layers: int) -> Callable[[CleanBatch], SparseEdit]:
    """`transfer(layer, vector, mode, n_layers)` as a `SparseEdit` (the read tokens only)."""
    def edit(batch) -> SparseEdit:
        if mode == "add":
            return SparseEdit(layer + 1, batch.read, add=vector)
        b, width, read = len(batch.rows), batch.width, batch.read.cpu()
        put = MlpEdit(torch.arange(width)[None, :] == read[:, None],
                      vector.expand(b, width, -1))
        return SparseEdit(layer, batch.read, mlp={la: put for la in range(layer, n_layers)})
    return edit


def transfer_conditions(model, layer: int, vector: Float[Tensor, " d"],
                        seed: int) -> list[Condition]:
    """o-vector and same-norm random vector, in both modes."""
    rand = random_like(vector, seed)
    n = model.cfg.n_layers
    return [Condition(f"{mode}:{name}", transfer(layer, vec, mode, n),
                      transfer_edit(layer, vec, mode, n))
            for mode in ("add", "replace") for name, vec in (("o_vector", vector),
                                                            ("random", rand))]
