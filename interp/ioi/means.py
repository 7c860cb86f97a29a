"""Mean-ablation means from a separate p_ABC sample, with bootstrap resamples of it.

The IOI paper mean-ablates a head by its mean output over p_ABC prompts of the same template.
Taking that mean from the few p_ABC twins of the prompts being explained (3-7 per template)
makes faithfulness depend on which prompts were drawn. Here the means come from a separate
sample of `n_per_template` p_ABC prompts per template (another seed), and `n_resamples`
bootstrap resamples of that sample (rows drawn with replacement within each template) give the
spread of any metric computed from the means. One forward pass serves every draw: each hook
adds the activations weighted by each draw's row counts.

Example:
    >>> means = MeanSample.build(model, ds.source, n_per_template=20, seed=0)
    >>> mean_runs = means.runs_for(runs, ds.records, draw=0)  # draw 0: the whole sample
    >>> faithfulness(model, mean_runs, circuit)
"""

import dataclasses
from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from interp.ioi.sources import IOISource
from interp.patching.runs import Runs

MEAN_SEED_OFFSET = 1_000_003  # the mean sample's seed, apart from the explained prompts'
CHUNK = 32


FINAL_NORM_INPUT = "ln_final.hook_in"  # every block has run when the final norm starts


class _Stopped(Exception):
    """Raised at the final norm's input: the blocks (all the means need) have run."""


def _stop(act, hook=None):
    raise _Stopped


def _hook_names(model) -> list[str]:
    """What node and edge ablation average: head and MLP outputs, and the embeddings."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{la}.{name}" for la in range(model.cfg.n_layers)
                                          for name in ("attn.hook_z", "hook_mlp_out")]


def _weights(template_of_row: Tensor, n_resamples: int, seed: int) -> Tensor:
    """[1 + n_resamples, rows]: row counts of the whole sample, then of each resample."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(1 + n_resamples, len(template_of_row))
    out[0] = 1
    for t in template_of_row.unique():
        rows = (template_of_row == t).nonzero().flatten()
        for d in range(1, 1 + n_resamples):
            picks = rows[torch.randint(len(rows), (len(rows),), generator=gen)]
            out[d].index_add_(0, picks, torch.ones(len(picks)))
    return out


@dataclass
class MeanSample:
    """Per-template mean activations: `means[hook][draw, template, pos, ...]`."""

    means: dict[str, Tensor]
    n_per_template: int
    n_resamples: int
    seed: int
    n_tokens: int = 0  # padded tokens of the sample's forward (its forward-equivalent)

    @classmethod
    @torch.inference_mode()
    def build(cls, model, source: IOISource, n_per_template: int, seed: int,
              n_resamples: int = 5, prepend_bos: bool | None = None) -> "MeanSample":
        """Run `n_per_template` p_ABC prompts of every template of `source` once."""
        from interp.ioi.dataset import build_ioi

        mean_seed = seed + MEAN_SEED_OFFSET
        ds = build_ioi(model, n_per_template * len(source.templates), mean_seed, prepend_bos,
                       source)
        template = torch.tensor([r["template_index"] for r in ds.records])
        weights = _weights(template, n_resamples, mean_seed)
        onehot = torch.nn.functional.one_hot(template, len(source.templates)).float().T
        mix = weights[:, None, :] * onehot[None]  # [draw, template, row]
        sums: dict[str, Tensor] = {}
        rows: list[int] = []

        def accumulate(act, hook=None, name=""):
            part = torch.einsum("dgr,r...->dg...", mix[:, :, rows].to(act.device), act.float())
            sums[name] = sums.get(name, 0) + part.cpu()

        tokens = ds.batch.corrupted_tokens
        hooks = [(name, partial(accumulate, name=name)) for name in _hook_names(model)]
        if FINAL_NORM_INPUT in model.hook_dict:  # the logits are not needed: stop before them
            hooks.append((FINAL_NORM_INPUT, _stop))
        with model.hooks(fwd_hooks=hooks):
            for lo in range(0, len(tokens), CHUNK):
                rows[:] = range(lo, min(lo + CHUNK, len(tokens)))
                try:
                    model(tokens[lo:lo + CHUNK].to(model.cfg.device))
                except _Stopped:
                    pass
        count = mix.sum(-1)  # [draw, template]
        for v in sums.values():  # in place: no second copy of every hook's sums
            v /= count.view(*count.shape, *[1] * (v.dim() - 2))
        return cls(sums, n_per_template, n_resamples, seed, tokens.numel())

    def runs_for(self, runs: Runs, records: list[dict], draw: int = 0,
                 hooks: tuple[str, ...] | None = None) -> Runs:
        """`runs` whose corrupted cache holds, for each prompt, its template's mean (of draw
        `draw`: 0 = whole sample, 1.. = resamples), so `MeanAblation` ablates with it; built
        when read (`PromptMeans`).
        `hooks`: only the hooks whose names end with one of these (None: every one)."""
        template = torch.tensor([r["template_index"] for r in records])
        seq = runs.batch.clean_tokens.shape[1]
        means = {name: mean[draw] for name, mean in self.means.items()
                 if hooks is None or name.endswith(hooks)}
        return dataclasses.replace(runs, corrupted_cache=PromptMeans(means, template, seq))

    def drop_resamples(self, keep: tuple[str, ...]) -> None:
        """Free the resamples' means (draws 1..) of the hooks whose names end with none of
        `keep` (e.g. `("attn.hook_z",)` when only head-only circuits read the resamples);
        `runs_for` then gives draw 0 alone of those."""
        for name in [n for n in self.means if not n.endswith(keep)]:
            self.means[name] = self.means[name][:1].clone()

    def record(self) -> dict:
        return {"n_mean_prompts_per_template": self.n_per_template,
                "n_resamples": self.n_resamples, "mean_sample_seed": self.seed + MEAN_SEED_OFFSET}


class PromptMeans(MutableMapping):
    """A corrupted cache whose entry for each hook is every prompt's template mean
    `[batch, seq, ...]`, built when read from the per-template means (`MeanSample.means`
    of one draw): the per-prompt tensors are never all held at once.

    Example:
        >>> cache = PromptMeans({"blocks.0.attn.hook_z": mean}, template, seq)
        >>> torch.equal(cache["blocks.0.attn.hook_z"], _fit(mean[template], seq))
        True
    """

    def __init__(self, means: dict[str, Tensor], template: Tensor, seq: int):
        self.means, self.template, self.seq = dict(means), template, seq

    def __getitem__(self, name: str) -> Tensor:
        return _fit(self.means[name][self.template], self.seq)

    def __setitem__(self, name: str, value: Tensor) -> None:
        raise TypeError("PromptMeans is built from template means; it holds no other values")

    def __delitem__(self, name: str) -> None:
        del self.means[name]

    def clear(self) -> None:  # (MutableMapping's would build each entry to pop it)
        self.means.clear()

    def __iter__(self):
        return iter(self.means)

    def __len__(self) -> int:
        return len(self.means)


def _fit(act: Float[Tensor, "batch pos ..."], seq: int) -> Float[Tensor, "batch seq ..."]:
    """Cut or zero-pad the position axis to `seq` (a template's prompts all have one length,
    so positions past it are padding in both samples)."""
    if act.shape[1] >= seq:
        return act[:, :seq].contiguous()
    pad = torch.zeros(act.shape[0], seq - act.shape[1], *act.shape[2:], dtype=act.dtype)
    return torch.cat([act, pad], 1)
