"""One cached clean run per prompt set, reused by every ablation that resumes from it.

A `CleanRun` forwards a prompt set once, in length-sorted batches (each trimmed to its longest
prompt, so little compute goes to padding), and keeps per batch:

- `resid[l]`: the residual stream entering block `l` (`resid[n_layers]` is the final one), so
  an intervention first acting in block `l` resumes there (`interp.forward.run_blocks`);
- the block keyword arguments (attention mask, rotary embeddings) of that batch;
- the clean logits at each prompt's read position;
- optionally every MLP output (`keep_mlp`), for mean ablation and the attention-sink check.

A `Ledger` counts the work in block-token units: one forward of a prompt set is
`n_layers * sum(lengths)` (no padding), which is the unit "forward-pass equivalents" (FPE).

Example:
    >>> ledger = Ledger(model.cfg.n_layers)
    >>> clean = CleanRun(model, prompts.tokens, prompts.lengths, ledger=ledger)
    >>> clean.batches[0].resid[5].shape  # [b, width, d_model]
"""

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.forward import block_kwargs, unembed


class _LastBlockDone(Exception):
    pass


def block_activations(model, tokens: Int[Tensor, "batch pos"], names: list[str],
                      stop_at: str | None = None) -> dict[str, Tensor]:
    """The named hook activations of a forward on `tokens`, stopping after hook `stop_at`
    (default: the last block's output): the final norm and the unembedding (every position
    times the whole vocabulary, often the largest matrix product of the forward) are skipped.

    Example:
        >>> acts = block_activations(model, tokens, ["blocks.0.hook_resid_pre"],
        ...                          stop_at="blocks.0.hook_resid_pre")  # the embeddings
    """
    last = stop_at or f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    kept: dict[str, Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            kept[name] = output
            if name == last:
                raise _LastBlockDone
        return hook

    handles = [model.hook_dict[n].register_forward_hook(keep(n)) for n in {*names, last}]
    try:
        model(tokens)
    except _LastBlockDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {n: kept[n] for n in names}


@dataclass
class Ledger:
    """Block-token work done (`padded`) and the part of it on real tokens (`real`).

    A block whose MLP was skipped at a token (its output replaced, `interp.ffn_sparse`)
    counts as `1 - mlp_share` of a block there (`interp.patching.counter.mlp_share`).
    """

    n_layers: int
    padded: int = 0
    real: int = 0
    unit_lengths: Int[Tensor, " batch"] | None = None
    mlp_share: float = 0.0
    mlps_skipped: int = 0

    def add(self, width: int, lengths: Int[Tensor, " b"], n_blocks: int) -> None:
        """Record `n_blocks` blocks run on a batch of `len(lengths)` rows of `width` tokens."""
        self.padded += n_blocks * width * len(lengths)
        self.real += n_blocks * int(lengths.clamp(max=width).sum())

    def add_packed(self, n_tokens: int, n_blocks: int, mlps_skipped: int = 0) -> None:
        """Record `n_blocks` blocks run on `n_tokens` packed real tokens (no padding), of
        which `mlps_skipped` token-blocks skipped their MLP."""
        self.padded += n_blocks * n_tokens
        self.real += n_blocks * n_tokens
        self.mlps_skipped += mlps_skipped

    def fpe(self, lengths: Int[Tensor, " batch"] | None = None) -> dict:
        """The work in forward passes of a prompt set with these lengths (default: the prompt
        set of the first `CleanRun` recorded here)."""
        lengths = self.unit_lengths if lengths is None else lengths
        if lengths is None:
            raise ValueError("no prompt set to measure the work by: pass lengths")
        unit = self.n_layers * int(lengths.sum())
        saved = self.mlp_share * self.mlps_skipped
        return {"done": round((self.padded - saved) / unit, 2),
                "real_tokens_only": round((self.real - saved) / unit, 2)}


def length_batches(lengths: Int[Tensor, " batch"], batch_size: int) -> list[Int[Tensor, " b"]]:
    """Prompt indices in batches of at most `batch_size`, sorted by length, so that padding
    (every row is computed to the batch's longest prompt) stays small."""
    order = torch.argsort(lengths, stable=True)
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


@dataclass
class CleanBatch:
    """One batch of a clean run (see module doc); `rows` index the prompt set."""

    rows: Int[Tensor, " b"]
    tokens: Int[Tensor, "b width"]
    read: Int[Tensor, " b"]
    kwargs: dict
    resid: list[Float[Tensor, "b width d"]]
    read_logits: Float[Tensor, "b vocab"]
    mlp_out: Float[Tensor, "layer b width d"] | None = None
    mlp_read: Float[Tensor, "layer b d"] | None = field(default=None)
    engine: object = None  # the sparse engine's base run of this batch (`interp.ffn_sparse`)

    @property
    def width(self) -> int:
        return self.tokens.shape[1]


class CleanRun:
    """The clean forward of a right-padded prompt set, cached for resumed runs."""

    def __init__(self, model, tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"],
                 batch_size: int = 32, keep_mlp: bool = False, ledger: Ledger | None = None):
        self.tokens, self.lengths = tokens, lengths
        self.n_layers = model.cfg.n_layers
        self.batches = [self._run(model, rows, keep_mlp, ledger)
                        for rows in length_batches(lengths, batch_size)]

    def _run(self, model, rows, keep_mlp: bool, ledger: Ledger | None) -> CleanBatch:
        n = self.n_layers
        width = int(self.lengths[rows].max())
        dev = next(model.parameters()).device
        toks = self.tokens[rows, :width].to(dev)
        read = (self.lengths[rows] - 1).to(dev)
        names = [f"blocks.{la}.hook_resid_pre" for la in range(n)]
        names += [f"blocks.{n - 1}.hook_resid_post"] + [f"blocks.{la}.hook_mlp_out"
                                                         for la in range(n)]
        with torch.inference_mode():
            kwargs = block_kwargs(model, toks)
            cache = block_activations(model, toks, names)
        if ledger is not None:
            ledger.add(width, self.lengths[rows], n)
            if ledger.unit_lengths is None:
                ledger.unit_lengths = self.lengths
        at = torch.arange(len(rows), device=dev)
        mlp = torch.stack([cache[f"blocks.{la}.hook_mlp_out"] for la in range(n)])
        with torch.inference_mode():
            read_logits = unembed(model, cache[names[n]][at, read]).float()
        return CleanBatch(rows, toks, read, kwargs, [cache[h] for h in names[: n + 1]],
                          read_logits, mlp if keep_mlp else None,
                          mlp[:, at, read].float().cpu())

    def read_logits(self) -> Float[Tensor, "batch vocab"]:
        """Clean logits at every prompt's read position, in prompt order."""
        return self.gather([b.read_logits for b in self.batches])

    def mlp_read(self, layer: int) -> Float[Tensor, "batch d"]:
        """MLP `layer`'s clean output at every prompt's read position, in prompt order."""
        return self.gather([b.mlp_read[layer] for b in self.batches])

    def gather(self, parts: list[Tensor]) -> Tensor:
        """Per-batch results (rows in batch order) back in prompt order."""
        rows = torch.cat([b.rows for b in self.batches])
        out = torch.cat([p.cpu() for p in parts])
        return out[torch.argsort(rows)]
