"""Forward-equivalents: how many token x block evaluations a stage or command ran.

One forward of a prompt batch runs every block on every token (padding included): that is
one forward-equivalent of the batch. `counting()` counts block calls of the bridge (a
global module hook, removed on exit, so commands that build their own models are counted
too) and the sparse engine adds the tokens it runs (`add`). Backward passes are not
counted; a gradient stage counts its forward only.

Example:
    >>> with counting():
    ...     model(tokens)
    >>> COUNTER.tokens == model.cfg.n_layers * tokens.numel()
    True
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class BlockTokens:
    """Running total of block x token evaluations (`active`: nesting depth of `counting`)."""

    tokens: int | float = 0
    active: int = 0

    def add(self, n_tokens: int | float) -> None:
        if self.active:
            self.tokens += n_tokens


COUNTER = BlockTokens()


def add(n_tokens: int | float) -> None:
    """Count `n_tokens` tokens run through one block (used by the sparse engine)."""
    COUNTER.add(n_tokens)


def mlp_share(cfg) -> float:
    """The MLP's share of a block's per-token matmul FLOPs (attention scores aside): an
    MLP-only step (path patching's frozen-attention propagation) counts as this much."""
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    mlp = (3 if getattr(cfg, "gated_mlp", False) else 2) * cfg.d_model * cfg.d_mlp
    return mlp / (mlp + cfg.d_model * cfg.d_head * (2 * cfg.n_heads + 2 * n_kv))


def _count_block(module, args):
    if type(module).__name__ != "BlockBridge" or not args:
        return None
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() >= 2:
        COUNTER.add(x.shape[:-1].numel())
    return None


@contextmanager
def counting():
    """Count block evaluations inside the block (nested uses share one hook)."""
    handle = None
    if not COUNTER.active:
        handle = torch.nn.modules.module.register_module_forward_pre_hook(_count_block)
    COUNTER.active += 1
    try:
        yield COUNTER
    finally:
        COUNTER.active -= 1
        if handle is not None:
            handle.remove()


def forward_equivalents(tokens: int | float, n_layers: int, batch_tokens: int) -> float:
    """Counted block-tokens in units of one forward of a batch of `batch_tokens` tokens."""
    return tokens / (n_layers * batch_tokens) if batch_tokens else 0.0
