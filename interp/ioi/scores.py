"""Attention and copying scores of every head on the IOI prompts (paper sections 3.1-3.3)."""

import torch
from jaxtyping import Float
from torch import Tensor

from interp.arch import StackedWeights
from interp.forward import unembed
from interp.nodes import Head

# score name -> (query position, key position)
ATTENTION_SCORES = {
    "end_to_io": ("END", "IO"),
    "end_to_s1": ("END", "S1"),
    "end_to_s2": ("END", "S2"),
    "s2_to_s1": ("S2", "S1"),          # duplicate-token heads
    "s2_to_s1p1": ("S2", "S1+1"),      # induction heads
}


@torch.inference_mode()
def attention_scores(model, cache, batch) -> dict[str, Float[Tensor, "layer head"]]:
    """Mean attention probability between named positions, plus the previous-token score.

    `previous_token` is the mean attention from each position p in 1..END to p-1.
    """
    rows = torch.arange(len(batch))
    out: dict[str, list] = {name: [] for name in [*ATTENTION_SCORES, "previous_token"]}
    lengths = batch.read_positions + 1
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, q, k]
        for name, (q, k) in ATTENTION_SCORES.items():
            qp, kp = batch.positions[q], batch.positions[k]
            out[name].append(pattern[rows, :, qp, kp].mean(0))
        sub = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # [batch, head, pos-1]
        valid = (torch.arange(sub.shape[-1])[None] < (lengths - 1)[:, None]).float()
        out["previous_token"].append((sub * valid[:, None]).sum((0, 2)) / valid.sum())
    return {name: torch.stack(v) for name, v in out.items()}


@torch.inference_mode()
def copying_scores(model, cache, batch, heads: list[Head], top_k: int = 5) -> dict[str, dict]:
    """Fraction of IO names each head's OV circuit copies (paper section 3.3).

    The residual stream at the IO token after MLP 0 goes through the head's LN1, W_V, W_O
    and the unembedding (with the final norm); the name counts as copied when it is in the
    top-k logits (`copying`), or in the bottom-k (`negative_copying`). Unembedding the full
    vocabulary is the costly part, so only the given heads are scored.
    """
    rows = torch.arange(len(batch))
    names = batch.metric.answer
    resid = cache["blocks.0.hook_resid_post"][rows, batch.positions["IO"]]  # [batch, d_model]
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    group = model.cfg.n_heads // n_kv
    copy, neg = {}, {}
    w = StackedWeights(model)
    for h in heads:
        block = model.blocks[h.layer]
        v = block.ln1(resid) @ w["W_V"][h.layer][h.head // group]
        if block.attn.b_V is not None:
            v = v + block.attn.b_V[h.head // group]
        logits = unembed(model, v @ w["W_O"][h.layer][h.head])  # [batch, vocab]
        top = logits.topk(top_k, -1).indices
        bottom = (-logits).topk(top_k, -1).indices
        copy[str(h)] = (top == names[:, None]).any(-1).float().mean().item()
        neg[str(h)] = (bottom == names[:, None]).any(-1).float().mean().item()
    return {"copying": copy, "negative_copying": neg}


@torch.inference_mode()
def io_attention_and_projection(model, cache, batch, heads: list[Head]) -> dict[str, dict]:
    """Per prompt: a head's END->IO attention and its END output projected on the
    IO-minus-S unembedding direction (the paper's fig. 3 scatter), for each head."""
    from interp.dla import logit_directions

    rows, end = torch.arange(len(batch)), batch.read_positions
    direction = logit_directions(model, batch.metric)  # [batch, d_model]
    out, w_o = {}, StackedWeights(model)["W_O"]
    for h in heads:
        pattern = cache[f"blocks.{h.layer}.attn.hook_pattern"][rows, h.head, end,
                                                                 batch.positions["IO"]]
        z = cache[f"blocks.{h.layer}.attn.hook_z"][rows, end, h.head]  # [batch, d_head]
        proj = ((z @ w_o[h.layer][h.head]) * direction).sum(-1)
        out[str(h)] = {"attn_end_to_io": pattern.tolist(), "projection": proj.tolist()}
    return out
