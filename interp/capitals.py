"""Country -> capital prompts (Merullo, Eickhoff & Pavlick 2023), tokenised for one model.

The table (`interp/data/capitals.csv`) is plain data. Each pair is marked per tokenizer: the
country and capital are "single" when `" Poland"` / `" Warsaw"` (leading space) is one token;
multi-token names are scored on their first token and flagged. Pairs whose country and capital
share the first token (e.g. " Tunisia" / " Tunis" in some tokenizers) are dropped, since the
lens could not tell them apart.

Two prompt kinds:

- abstractive (the paper's one-shot format): the model must recall the capital::

    Q: What is the capital of France?
    A: Paris
    Q: What is the capital of Poland?
    A:

- extractive: the same prompt preceded by "The capital of Poland is Warsaw.\\n", so the
  answer can be copied from the context.

The demonstration pair rotates through the table and is never the queried country.

Example:
    >>> items = mark_tokens(model, load_capitals())
    >>> prompts = build_prompts(model, items, kind="abstractive", seed=0)
    >>> prompts.tokens.shape, prompts.capital_ids.shape
"""

import csv
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from interp.errors import UserValueError
from interp.tasks.base import TaskBatch, group_ids
from interp.tokens import encode_batch, model_bos

DATA = Path(__file__).parent / "data" / "capitals.csv"
KINDS = ("abstractive", "extractive")


@dataclass(frozen=True)
class Capital:
    """One country/capital pair with its first-token ids in a tokenizer."""

    country: str
    capital: str
    country_id: int = -1
    capital_id: int = -1
    country_single: bool = False
    capital_single: bool = False

    @property
    def single(self) -> bool:
        return self.country_single and self.capital_single


def load_capitals(path: Path | str = DATA) -> list[tuple[str, str]]:
    """(country, capital) rows of a CSV with a `country,capital` header."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"capitals table {path} not found; pass a CSV with columns "
                                "country,capital")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or {"country", "capital"} - set(reader.fieldnames):
            raise ValueError(f"{path} must have a header with columns country,capital; "
                             f"found {reader.fieldnames}")
        rows = [(r["country"].strip(), r["capital"].strip()) for r in reader]
    countries = [c for c, _ in rows]
    dupes = sorted({c for c in countries if countries.count(c) > 1})
    if dupes:
        raise ValueError(f"{path} lists these countries twice: {dupes}; keep one row each.")
    return rows


def check_count(flag: str, value: int | None, least: int) -> None:
    """Raise a one-line `UserValueError` naming `flag` unless `value` is None or >= least."""
    if value is not None and value < least:
        raise UserValueError(f"{flag} must be at least {least} (got {value}); pass a count "
                             f">= {least}")


def check_country(rows: list[tuple[str, str]], flag: str, name: str) -> None:
    """Raise a one-line `UserValueError` naming `flag` (and the closest country) unless
    `name` is a country of the table (case-insensitive)."""
    names = [c for c, _ in rows]
    if name.lower() not in {n.lower() for n in names}:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see interp/data/capitals.csv"
        raise UserValueError(f"{flag} '{name}' is not in the capitals table; {hint}")


def first_token(model, word: str) -> tuple[int, bool]:
    """The first token id of `" " + word` and whether the word is exactly one token."""
    ids = model.tokenizer.encode(" " + word, add_special_tokens=False)
    return ids[0], len(ids) == 1


def mark_tokens(model, rows: list[tuple[str, str]]) -> list[Capital]:
    """Tokenise each pair for `model`; drops pairs whose two names share their first token."""
    items = []
    for country, capital in rows:
        cid, csingle = first_token(model, country)
        kid, ksingle = first_token(model, capital)
        if cid != kid:
            items.append(Capital(country, capital, cid, kid, csingle, ksingle))
    if len(items) < 2:
        raise ValueError("need at least two usable country/capital pairs (the one-shot "
                         "demonstration must differ from the queried country)")
    return items


def find(items: list[Capital], country: str) -> Capital:
    """The item for `country` (case-insensitive), with a clear error if absent."""
    for item in items:
        if item.country.lower() == country.lower():
            return item
    raise ValueError(f"country '{country}' is not in the capitals table (or was dropped "
                     "because its capital shares its first token); pick another country.")


def one_shot(demo: Capital, country: str) -> str:
    """The paper's one-shot question prompt, demonstration first."""
    if demo.country == country:
        raise ValueError(f"the demonstration is the queried country '{country}'; use another")
    return (f"Q: What is the capital of {demo.country}?\nA: {demo.capital}\n"
            f"Q: What is the capital of {country}?\nA:")


def extractive(demo: Capital, item: Capital) -> str:
    """The one-shot prompt with the answer stated in context first."""
    return f"The capital of {item.country} is {item.capital}.\n" + one_shot(demo, item.country)


def prompt(kind: str, demo: Capital, item: Capital) -> str:
    if kind not in KINDS:
        raise ValueError(f"prompt kind must be one of {KINDS}, got '{kind}'")
    return one_shot(demo, item.country) if kind == "abstractive" else extractive(demo, item)


def demo_indices(n: int, seed: int = 0) -> list[int]:
    """For prompt i, the index of its demonstration: i + shift (mod n), shift in 1..n-1.

    A fixed non-zero shift rotates the demonstrations through the table, so every pair is used
    as a demonstration once and no prompt demonstrates its own country.
    """
    if n < 2:
        raise ValueError("need at least two pairs to rotate demonstrations")
    shift = 1 + seed % (n - 1)
    return [(i + shift) % n for i in range(n)]


@dataclass
class CapitalPrompts:
    """Tokenised prompts of one kind.

    Attributes:
        kind: "abstractive" or "extractive".
        items: the queried pairs, one per prompt.
        demos: the demonstration pair of each prompt.
        texts: the prompt strings.
        tokens: right-padded `[batch, pos]`.
        lengths: `[batch]` token counts; the answer is read at `lengths - 1`.
        capital_ids / country_ids: `[batch]` first-token ids of the answers.
    """

    kind: str
    items: list[Capital]
    demos: list[Capital]
    texts: list[str]
    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    capital_ids: Int[Tensor, " batch"] = field(init=False)
    country_ids: Int[Tensor, " batch"] = field(init=False)

    def __post_init__(self):
        self.capital_ids = torch.tensor([it.capital_id for it in self.items])
        self.country_ids = torch.tensor([it.country_id for it in self.items])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def read_positions(self) -> Int[Tensor, " batch"]:
        return self.lengths - 1

    def records(self) -> list[dict]:
        return [{"country": it.country, "capital": it.capital, "demo": d.country,
                 "single_token": it.single, "prompt": t}
                for it, d, t in zip(self.items, self.demos, self.texts, strict=True)]


def build_prompts(model, items: list[Capital], kind: str = "abstractive", seed: int = 0,
                  demos: list[Capital] | None = None) -> CapitalPrompts:
    """One prompt per item; demonstrations rotate (see `demo_indices`) unless given."""
    if demos is None:
        demos = [items[j] for j in demo_indices(len(items), seed)]
    texts = [prompt(kind, d, it) for d, it in zip(demos, items, strict=True)]
    tokens, lengths = encode_batch(model, texts)
    return CapitalPrompts(kind, list(items), list(demos), texts, tokens, lengths)


def sample(items: list[Capital], n: int | None, seed: int = 0) -> list[Capital]:
    """A seeded subset of `n` items in table order (all when n is None or >= len)."""
    if n is None or n >= len(items):
        return list(items)
    if n < 2:
        raise ValueError(f"n_prompts must be at least 2, got {n}")
    gen = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(items), generator=gen)[:n].tolist())
    return [items[i] for i in keep]


class CapitalTask:
    """The capital task as a `Task`: clean = abstractive prompt, corrupted = the same prompt
    with a different queried country of equal token length (a seeded derangement within each
    length group). Metric: logit(capital) - logit(corrupted prompt's capital).
    """

    name = "capitals"

    def build(self, model, n_prompts: int, seed: int) -> TaskBatch:
        from interp.metrics import LogitDiff

        prompts = build_prompts(model, sample(mark_tokens(model, load_capitals()), n_prompts,
                                              seed), seed=seed)
        partner = _same_length_partner(prompts.lengths, seed)
        groups = group_ids(prompts.lengths.tolist())
        return TaskBatch(
            prompts.tokens, prompts.tokens[partner], prompts.read_positions, groups,
            LogitDiff(prompts.capital_ids, prompts.capital_ids[partner]),
            {"END": prompts.read_positions}, model_bos(model), prompts.records(),
            prompts.lengths)


def _same_length_partner(lengths: Int[Tensor, " batch"], seed: int) -> Int[Tensor, " batch"]:
    """For each prompt another prompt of the same length (itself if it is alone)."""
    gen = torch.Generator().manual_seed(seed)
    partner = torch.arange(len(lengths))
    for value in lengths.unique():
        idx = (lengths == value).nonzero().flatten()
        if len(idx) > 1:
            shift = 1 + int(torch.randint(0, len(idx) - 1, (1,), generator=gen))
            partner[idx] = idx.roll(shift)
    return partner
