"""The logit lens: read every layer's residual stream through the final norm and unembedding.

Layer `l` is the residual stream after block `l` (`blocks.l.hook_resid_post`), so the last
layer's lens is exactly the model's output. Each residual is normalised by `model.ln_final`
applied to THAT residual: the norm computes its own scale per layer and position (RMSNorm for
Llama, LayerNorm with centring and bias for GPT-2). Re-using the final layer's cached scale for
earlier layers (TransformerLens issue #1076) would mis-scale them.

The residual streams at the read positions come from one sparse forward on the fast families
(`read_layer_resids`: the prompts' shared prefix, e.g. "Q: What is the capital of", runs once);
the statistics are read from each layer's logits and their log-normaliser.

Example:
    >>> stats = lens_at(model, prompts.tokens, prompts.read_positions,
    ...                 {"capital": prompts.capital_ids, "country": prompts.country_ids})
    >>> by_layer = layer_metrics(stats, "capital", "country")
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.ffn_clean import block_activations, length_batches
from interp.forward import unembed


def resid_names(model) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


def layer_resids(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch pos d"]:
    """Residual stream after every block, stacked."""
    names = resid_names(model)
    with torch.inference_mode():
        cache = block_activations(model, tokens, names)
    return torch.stack([cache[n] for n in names])


def lens_logits(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logit-lens logits: `model.ln_final` (own scale per vector) then the unembedding."""
    return unembed(model, resid)


def rank_of(logits: Float[Tensor, "... vocab"], ids: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """1-based rank of `ids` (1 = top token): 1 + number of strictly larger logits.

    The count is summed in int32 (exact below 2**31 entries; twice as fast on the CPU as
    torch's default int64 sum of a bool tensor)."""
    target = logits.gather(-1, ids.unsqueeze(-1))
    return (logits > target).sum(-1, dtype=torch.int32).long() + 1


@dataclass
class LensStats:
    """Lens read-outs at one position per prompt, for every layer.

    Attributes:
        top_ids / top_probs: `[layer, batch, k]` top-k tokens and their probabilities.
        probs / ranks: target name -> `[layer, batch]` probability and 1-based rank.
        kl_to_final: `[layer, batch]` KL(final || layer) in nats.
        work_fpe: the forward work that produced them, in forward passes of the prompts.
    """

    top_ids: Int[Tensor, "layer batch k"]
    top_probs: Float[Tensor, "layer batch k"]
    probs: dict[str, Float[Tensor, "layer batch"]]
    ranks: dict[str, Int[Tensor, "layer batch"]]
    kl_to_final: Float[Tensor, "layer batch"]
    work_fpe: float | None = None


def _lens_stats(model, resid: Float[Tensor, "layer b d"], targets: dict[str, Tensor],
                k: int):
    """Lens statistics of residual vectors `[layer, b, d]` (one per prompt and layer), from
    the logits and their log-normaliser (no `[layer, batch, vocab]` log-softmax is
    materialised): log p = logit - lse, and KL(final || layer) =
    sum p_final * (logit_final - logit) - lse_final + lse."""
    with torch.inference_mode():
        logits = lens_logits(model, resid).float()  # [L, b, vocab]
        lse = logits.logsumexp(-1)  # [L, b]
        top = logits.topk(k, -1)
        p_final = (logits[-1] - lse[-1, :, None]).exp()  # [b, vocab]
        expected = torch.einsum("bv,lbv->lb", p_final, logits)
        kl = expected[-1:] - expected - lse[-1:] + lse
        probs, ranks = {}, {}
        for name, ids in targets.items():
            idx = ids.to(logits.device).expand(logits.shape[0], -1)
            target = logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
            probs[name] = (target - lse).exp().cpu()
            ranks[name] = rank_of(logits, idx).cpu()
    return (top.indices.cpu(), (top.values - lse[..., None]).exp().cpu(), probs, ranks,
            kl.clamp(min=0).cpu())


def read_layer_resids(model, tokens: Int[Tensor, "batch pos"],
                      read_positions: Int[Tensor, " batch"], batch_size: int = 32
                      ) -> tuple[Float[Tensor, "layer batch d"], float]:
    """The residual stream after every block at each prompt's read position, and the work in
    forward passes of the prompt set.

    On the fast families one sparse forward computes the prompts' shared prefix once
    (`interp.ffn_sparse.read_resids`); else hooked forwards in batches of similar length (each
    cut at its longest prompt, so little compute goes to padding).
    """
    from interp.ffn_sparse import read_resids, supported

    lengths = read_positions + 1
    if supported(model):
        resid, prefix = read_resids(model, tokens, read_positions)
        return resid, round((prefix + int((lengths - prefix).sum())) / int(lengths.sum()), 3)
    parts, rows_done = [], []
    dev = next(model.parameters()).device
    for rows in length_batches(lengths, batch_size):
        width = int(read_positions[rows].max()) + 1
        resid = layer_resids(model, tokens[rows, :width].to(dev))
        parts.append(resid[:, torch.arange(len(rows)), read_positions[rows].to(dev)])
        rows_done.append(rows)
    order = torch.argsort(torch.cat(rows_done))
    return torch.cat(parts, 1)[:, order], padded_work(read_positions, batch_size)


def lens_at(model, tokens: Int[Tensor, "batch pos"], read_positions: Int[Tensor, " batch"],
            targets: dict[str, Int[Tensor, " batch"]], k: int = 5,
            batch_size: int = 32) -> LensStats:
    """Run the lens at each prompt's read position (`read_layer_resids`); the statistics are
    computed `batch_size` prompts at a time (the logits are `[layer, batch, vocab]`)."""
    resid, work = read_layer_resids(model, tokens, read_positions, batch_size)
    parts = [_lens_stats(model, resid[:, s: s + batch_size],
                         {n: t[s: s + batch_size] for n, t in targets.items()}, k)
             for s in tqdm(range(0, resid.shape[1], batch_size), desc="logit lens",
                           unit="batch", leave=False)]

    def cat(tensors):
        return torch.cat(tensors, 1)

    stats = LensStats(
        cat([p[0] for p in parts]), cat([p[1] for p in parts]),
        {n: cat([p[2][n] for p in parts]) for n in targets},
        {n: cat([p[3][n] for p in parts]) for n in targets},
        cat([p[4] for p in parts]), work)
    return stats


def padded_work(read_positions: Int[Tensor, " batch"], batch_size: int) -> float:
    """Token positions batched hooked forwards run through the model per real prompt token
    (1.0 = none wasted on padding): their work in forward passes of the prompt set."""
    lengths = read_positions + 1
    done = sum(int(lengths[r].max()) * len(r) for r in length_batches(lengths, batch_size))
    return round(done / int(lengths.sum()), 3)


def layer_metrics(stats: LensStats, answer: str = "capital",
                  argument: str = "country") -> dict:
    """Per-layer dataset metrics and the two landmark layers.

    - `<name>_top1_by_layer`: fraction of prompts whose lens top-1 is that target.
    - `<name>_mrr_by_layer`: mean reciprocal rank.
    - `argument_formation_layer`: the layer where the argument's (country's) top-1 fraction
      peaks (ties: the higher MRR, then the earlier layer).
    - `function_application_layer`: the first layer from which the answer's (capital's) top-1
      fraction stays strictly above the argument's through the last layer; None if never.
    """
    out = {}
    for name in (answer, argument):
        ranks = stats.ranks[name].float()
        out[f"{name}_top1_by_layer"] = (ranks == 1).float().mean(1).tolist()
        out[f"{name}_mrr_by_layer"] = (1 / ranks).mean(1).tolist()
        out[f"{name}_prob_by_layer"] = stats.probs[name].mean(1).tolist()
    out["kl_to_final_by_layer"] = stats.kl_to_final.mean(1).tolist()
    arg_top, arg_mrr = out[f"{argument}_top1_by_layer"], out[f"{argument}_mrr_by_layer"]
    layers = range(len(arg_top))
    out["argument_formation_layer"] = max(layers, key=lambda lay: (arg_top[lay], arg_mrr[lay],
                                                                   -lay))
    out["function_application_layer"] = overtake_layer(out[f"{answer}_top1_by_layer"], arg_top)
    out["final_accuracy"] = out[f"{answer}_top1_by_layer"][-1]
    return out


def overtake_layer(answer: Sequence[float | int], argument: Sequence[float | int]) -> int | None:
    """First layer from which `answer > argument` holds at every later layer; None if never.

    Example:
        >>> overtake_layer([0, 1, 0, 1], [0, 0, 1, 0])
        3
    """
    layer = None
    for lay in reversed(range(len(answer))):
        if answer[lay] > argument[lay]:
            layer = lay
        else:
            break
    return layer


@dataclass
class Trajectory:
    """The lens on one prompt at every layer and position (for the heatmap).

    Attributes:
        tokens: the input token strings `[pos]`.
        top_tokens / top_probs: `[layer][pos][k]` token strings and probabilities.
        target_ranks: target name -> `[layer][pos]` 1-based rank of that token.
    """

    tokens: list[str]
    top_tokens: list[list[list[str]]]
    top_probs: Float[Tensor, "layer pos k"]
    target_ranks: dict[str, Int[Tensor, "layer pos"]]


def trajectory(model, tokens: Int[Tensor, " pos"], targets: dict[str, int],
               k: int = 5) -> Trajectory:
    """Top-k lens tokens at every layer and position of one (unpadded) prompt."""
    resid = layer_resids(model, tokens[None].to(next(model.parameters()).device))[:, 0]
    with torch.inference_mode():
        logits = lens_logits(model, resid).float()  # [L, pos, vocab]
        top = logits.softmax(-1).topk(k, -1)
        ranks = {n: rank_of(logits, torch.full(logits.shape[:-1], i, device=logits.device))
                 .cpu() for n, i in targets.items()}
    decode = model.tokenizer.decode
    top_tokens = [[[decode([i]) for i in pos] for pos in layer] for layer in top.indices.tolist()]
    return Trajectory([decode([i]) for i in tokens.tolist()], top_tokens, top.values.cpu(),
                      ranks)
