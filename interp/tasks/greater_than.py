"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> a
year after 32.

Metric: probability mass on end years greater than the start year minus the mass on years
less than or equal to it, read at the last prompt token. Corruption: start year "01"
("... from the year 1701 to the year 17"), where every year counts as greater.

Two tokenizer families, two exact readings of the same metric:

- two-digit year tokens (GPT-2: " 1732" -> " 17" + "32"): the next token is the two-digit
  year; start years YY in 02..98 whose " 17YY" splits that way. Mass sums over the
  tokens "00".."99".
- single-digit tokens (SmolLM2, Llama 3 style: " 1732" -> " " "1" "7" "3" "2"): the next
  token is only the tens digit D. We use start years ending in 9 (19, 29, ..., 89): then
  year > YY exactly when D > Y (Y = tens digit of the start), and year <= YY exactly when
  D <= Y, so P(D > Y) - P(D <= Y) over the digit tokens "0".."9" is the paper's metric
  marginalised over the units digit -- no approximation, at the price of 8 start years.

Any other tokenizer gets a ValueError naming what it does with " 1732".

Example:
    >>> batch = GreaterThanTask().build(model, n_prompts=50, seed=0)
    >>> batch.metric(logits_at(model(batch.clean_tokens), batch.read_positions)).mean()
"""

import random
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.tasks.base import TaskBatch, UnembedMetric, group_ids
from interp.tokens import encode, model_bos

NOUNS = ("war", "siege", "expedition", "voyage", "reign", "drought", "famine", "plague",
         "rebellion", "journey", "trial", "alliance", "conflict", "campaign", "occupation",
         "strike", "exile", "dispute", "revolt", "truce", "boom", "crisis", "tour", "mission")
TEMPLATE = "The {noun} lasted from the year {century}{yy} to the year {century}"
CENTURY = "17"
CORRUPT_YY = "01"


@dataclass
class YearMassDiff(UnembedMetric):
    """P(year > start) - P(year <= start) over the year tokens, per prompt.

    Attributes:
        year_ids: `[n_values]` token id of each year value (00..99 or digits 0..9).
        threshold: `[batch]` the start value in the same units (YY or its tens digit).
    """

    year_ids: Int[Tensor, " values"]
    threshold: Int[Tensor, " batch"]

    def __call__(self, logits: Float[Tensor, "... batch vocab"]) -> Float[Tensor, "... batch"]:
        probs = logits.float().softmax(-1)[..., self.year_ids.to(logits.device)]
        values = torch.arange(len(self.year_ids), device=logits.device)
        sign = torch.where(values[None, :] > self.threshold.to(logits.device)[:, None], 1.0, -1.0)
        return (probs * sign).sum(-1)

    def subset(self, index: Int[Tensor, " n"]) -> "YearMassDiff":
        return YearMassDiff(self.year_ids, self.threshold[index])


def year_scheme(model) -> str:
    """"two-digit" or "digit", from how the tokenizer splits " 1732"; else ValueError."""
    tok = model.tokenizer
    pieces = [tok.decode([i]) for i in tok.encode(" 1732", add_special_tokens=False)]
    if pieces == [" 17", "32"]:
        return "two-digit"
    if pieces[-4:] == ["1", "7", "3", "2"]:
        return "digit"
    raise ValueError(f"greater-than needs a tokenizer that splits ' 1732' into ' 17' + '32' or "
                     f"into single digits; this one gives {pieces}. Use GPT-2 or SmolLM2.")


def _single(model, text: str) -> int | None:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _start_years(model, scheme: str) -> list[str]:
    if scheme == "digit":
        return [f"{d}9" for d in range(1, 9)]
    tok = model.tokenizer
    century = tok.encode(f" {CENTURY}", add_special_tokens=False)
    return [f"{y:02d}" for y in range(2, 99)
            if tok.encode(f" {CENTURY}{y:02d}", add_special_tokens=False)
            == century + [_single(model, f"{y:02d}")]]


def _nouns(model) -> list[str]:
    nouns = [n for n in NOUNS if _single(model, f" {n}") is not None]
    if len(nouns) < 5:
        raise ValueError(f"only {len(nouns)} of the greater-than nouns are single tokens in this "
                         "tokenizer (need 5); extend NOUNS in interp/tasks/greater_than.py.")
    return nouns


class GreaterThanTask:
    """The greater-than task; see the module docstring for the tokenizer adaptation."""

    name = "greater-than"

    def build(self, model, n_prompts: int, seed: int) -> TaskBatch:
        scheme = year_scheme(model)
        n_values = 100 if scheme == "two-digit" else 10
        year_ids = torch.tensor([_single(model, f"{v:0{2 if n_values == 100 else 1}d}")
                                 for v in range(n_values)])
        rng = random.Random(seed)
        nouns, years = _nouns(model), _start_years(model, scheme)
        clean, corrupted, thresholds, records = [], [], [], []
        for _ in range(n_prompts):
            noun, yy = rng.choice(nouns), rng.choice(years)
            text = TEMPLATE.format(noun=noun, century=CENTURY, yy=yy)
            corrupt = TEMPLATE.format(noun=noun, century=CENTURY, yy=CORRUPT_YY)
            clean.append(encode(model, text))
            corrupted.append(encode(model, corrupt))
            thresholds.append(int(yy) if scheme == "two-digit" else int(yy[0]))
            records.append({"clean_prompt": text, "corrupted_prompt": corrupt, "noun": noun,
                            "start_year": f"{CENTURY}{yy}", "scheme": scheme})
        return _batch(model, clean, corrupted, thresholds, year_ids, records, scheme)


def _batch(model, clean, corrupted, thresholds, year_ids, records, scheme) -> TaskBatch:
    lengths = {len(c) for c in clean} | {len(c) for c in corrupted}
    if len(lengths) != 1:
        raise ValueError(f"greater-than prompts have token lengths {sorted(lengths)}; expected "
                         "one length (single-token nouns and a fixed year split).")
    n, length = len(clean), lengths.pop()
    noun = records[0]["noun"]
    head = TEMPLATE.split("{yy}")[0]
    prefix = encode(model, head.format(noun=noun, century=CENTURY))  # ends with the "17"
    if clean[0][:len(prefix)] != prefix:
        raise ValueError("greater-than: the prompt prefix tokenises differently on its own; "
                         "cannot locate the start year's position.")
    for rec, ids, bad in zip(records, clean, corrupted, strict=True):
        rec.update(clean_tokens=ids, corrupted_tokens=bad)
    # YY: the first token after "... the year 17": "32" (two-digit) or the tens digit "3"
    positions = {"NOUN": len(encode(model, "The")), "YY": len(prefix), "END": length - 1}
    batch = TaskBatch(
        clean_tokens=torch.tensor(clean), corrupted_tokens=torch.tensor(corrupted),
        read_positions=torch.full((n,), length - 1), groups=group_ids([length] * n),
        metric=YearMassDiff(year_ids, torch.tensor(thresholds)),
        positions={k: torch.full((n,), v) for k, v in positions.items()},
        bos=model_bos(model), records=records)
    return batch  # one group: every prompt has the same length and positions
