"""Direct logit attribution through the final norm's scale of the clean run.

The final residual at a read position is a sum of components (embeddings, each head's
z_h @ W_O[h], attention biases, MLP outputs). With the final norm's scale frozen to the one
the run used, the norm is affine, so each component's effect on a logit direction adds up:
sum(components) + norm bias + unembedding bias = the logit difference, exactly.

Family details come from `interp.arch`: Gemma's norms multiply by 1 + weight; post-norms
around the attention output (Gemma 2, OLMo 2) are frozen at the clean run's scale too, so a
head's component is its output through that frozen norm. With final logit soft-capping
(Gemma 2) the components add up to the logit difference before the cap.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from interp.arch import StackedWeights, norm_gain
from interp.metrics import LogitDiff


def _norm_weights(model):
    return norm_gain(model.ln_final)


def through_final_norm(model, components: Float[Tensor, "... batch d_model"],
                       scale: Float[Tensor, " batch"]) -> Float[Tensor, "... batch d_model"]:
    """Apply the final norm to components linearly, with a frozen per-prompt scale."""
    weight, _ = _norm_weights(model)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        components = components - components.mean(-1, keepdim=True)
    return components / scale[..., None] * weight


def logit_directions(model, metric: LogitDiff) -> Float[Tensor, "batch d_model"]:
    """W_U[:, answer] - W_U[:, wrong] per prompt."""
    w_u = model.W_U
    return (w_u[:, metric.answer] - w_u[:, metric.wrong]).T


def constant_terms(model, metric: LogitDiff) -> Float[Tensor, " batch"]:
    """The parts of the logit difference that no component carries: norm and unembed biases."""
    _, bias = _norm_weights(model)
    out = torch.zeros(len(metric.answer))
    if bias is not None:
        out = out + logit_directions(model, metric) @ bias
    b_u = getattr(model, "b_U", None)
    if b_u is not None:
        out = out + b_u[metric.answer] - b_u[metric.wrong]
    return out


def _at(cache, name: str, rows, pos):
    return cache[name][rows, pos]


def _post_norm(model, cache, layer: int, rows, pos):
    """The attention post-norm (Gemma 2, OLMo 2) at the clean run's frozen scale, which
    makes it linear in the heads' outputs; identity where blocks have none."""
    name = f"blocks.{layer}.ln1_post.hook_scale"
    if name not in cache:
        return lambda comp: comp
    scale = _at(cache, name, rows, pos)  # [batch, 1]
    gain, _ = norm_gain(model.blocks[layer].ln1_post)
    return lambda comp: comp / scale * gain


@torch.inference_mode()
def direct_logit_attribution(model, cache, batch) -> dict[str, Tensor]:
    """Per-prompt direct effects on the task's LogitDiff at its read positions.

    Returns:
        {"heads": [n_layers, n_heads, batch], "mlps": [n_layers, batch],
         "attn_bias": [n_layers, batch], "embed": [batch], "constant": [batch]}.
    """
    metric: LogitDiff = batch.metric
    rows, pos = torch.arange(len(batch)), batch.read_positions
    scale = _at(cache, "ln_final.hook_scale", rows, pos)[..., 0]
    direction = logit_directions(model, metric)

    def logit(comp: Tensor) -> Tensor:
        return (through_final_norm(model, comp, scale) * direction).sum(-1)

    heads, mlps, biases = [], [], []
    w_o = StackedWeights(model)["W_O"]
    for layer in range(model.cfg.n_layers):
        z = _at(cache, f"blocks.{layer}.attn.hook_z", rows, pos)  # [batch, n_heads, d_head]
        post = _post_norm(model, cache, layer, rows, pos)
        per_head = post(torch.einsum("bhd,hdm->hbm", z, w_o[layer]))
        heads.append(logit(per_head))
        mlps.append(logit(_at(cache, f"blocks.{layer}.hook_mlp_out", rows, pos)))
        b_o = model.blocks[layer].attn.b_O
        biases.append(logit(post(b_o.expand(len(batch), -1))) if b_o is not None
                      else torch.zeros(len(batch)))
    embed = _at(cache, "hook_embed", rows, pos)
    if "hook_pos_embed" in cache:
        embed = embed + _at(cache, "hook_pos_embed", rows, pos)
    return {"heads": torch.stack(heads), "mlps": torch.stack(mlps),
            "attn_bias": torch.stack(biases), "embed": logit(embed),
            "constant": constant_terms(model, metric)}
