"""Word-vector analogies in a model's token embedding space.

An item `(a, b, c, expected)` reads `a - b + c = expected`, e.g. king - man + woman = queen
or Paris - France + Poland = Warsaw (`interp/data/analogies.csv`). Words are tokens with a
leading space; an item is scored only if all four words are single tokens. The answer is the
nearest token to `E[a] - E[b] + E[c]` by cosine similarity, excluding the three inputs.
The space is the input embedding `W_E` or the unembedding `W_U` (columns); the two are the same
matrix in models with tied embeddings (GPT-2, SmolLM2).

Example:
    >>> items = load_analogies()
    >>> scores = evaluate(model, items, space="embed")
    >>> neighbours(model, "doctor", "man", "woman")[:3]
"""

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

DATA = Path(__file__).parent / "data" / "analogies.csv"
COLUMNS = ("category", "a", "b", "c", "expected")
SPACES = ("embed", "unembed")


@dataclass(frozen=True)
class Analogy:
    """`a - b + c = expected` in category `category`."""

    category: str
    a: str
    b: str
    c: str
    expected: str


def load_analogies(path: Path | str = DATA) -> list[Analogy]:
    """Rows of a CSV with header `category,a,b,c,expected`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"analogy table {path} not found; pass a CSV with columns "
                                f"{','.join(COLUMNS)}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or set(COLUMNS) - set(reader.fieldnames):
            raise ValueError(f"{path} must have the columns {','.join(COLUMNS)} "
                             f"(meaning a - b + c = expected); found {reader.fieldnames}")
        return [Analogy(*(r[k].strip() for k in COLUMNS)) for r in reader]


def word_id(model, word: str) -> int | None:
    """The token id of `" " + word`, or None if it is not a single token."""
    ids = model.tokenizer.encode(" " + word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def space_matrix(model, space: str = "embed") -> Float[Tensor, "vocab d"]:
    """Token vectors: rows of `W_E` ("embed") or columns of `W_U` ("unembed")."""
    if space == "embed":
        return model.W_E.detach().float().cpu()
    if space == "unembed":
        return model.W_U.detach().float().cpu().T
    raise ValueError(f"space must be one of {SPACES}, got '{space}'")


def word_mask(model) -> Bool[Tensor, " vocab"]:
    """Tokens that are a space followed by letters only (whole words, no fragments)."""
    tok = model.tokenizer
    texts = [tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(
        list(range(len(tok))))]
    keep = [t.startswith(" ") and t[1:].isalpha() for t in texts]
    out = torch.zeros(model.W_E.shape[0], dtype=torch.bool)
    out[: len(keep)] = torch.tensor(keep)[: model.W_E.shape[0]]
    return out


def nearest(matrix: Float[Tensor, "vocab d"], query: Float[Tensor, "*n d"],
            exclude: list[int] | Int[Tensor, "*n e"], k: int = 10,
            allowed: Bool[Tensor, " vocab"] | None = None,
            unit: Float[Tensor, "vocab d"] | None = None
            ) -> tuple[Int[Tensor, "*n k"], Float[Tensor, "*n k"]]:
    """The k rows most cosine-similar to each query, never its `exclude` ids.

    Args:
        unit: `matrix` with unit rows, if already computed (saves a pass over the vocabulary).
    """
    unit = torch.nn.functional.normalize(matrix, dim=-1) if unit is None else unit
    sims = torch.nn.functional.normalize(query, dim=-1) @ unit.T
    if allowed is not None:
        sims = sims.masked_fill(~allowed.to(sims.device), -float("inf"))
    exclude = torch.as_tensor(exclude, dtype=torch.long)
    sims = sims.scatter(-1, exclude.expand(*sims.shape[:-1], -1), -float("inf"))
    top = sims.topk(k, dim=-1)
    return top.indices, top.values


def solve(matrix, ids, k: int = 10, allowed=None, unit=None):
    """Nearest neighbours of `E[a] - E[b] + E[c]` excluding a, b and c; `ids` is one triple
    or a `[n, 3]` tensor of triples."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    a, b, c = ids.unbind(-1)
    return nearest(matrix, matrix[a] - matrix[b] + matrix[c], ids, k, allowed, unit)


def evaluate(model, items: list[Analogy], space: str = "embed", k: int = 10,
             words_only: bool = False, matrix=None, allowed=None) -> dict:
    """Accuracy@1 and @k per category, plus the "c only" baseline (nearest to E[c]).

    All items are solved in one matrix product over the vocabulary. `matrix` / `allowed` may
    be passed in when already computed (`space_matrix`, `word_mask`).
    """
    matrix = space_matrix(model, space) if matrix is None else matrix
    if words_only and allowed is None:
        allowed = word_mask(model)
    allowed = allowed if words_only else None
    ids = {it: [word_id(model, w) for w in (it.a, it.b, it.c, it.expected)] for it in items}
    scored = [it for it in items if None not in ids[it]]
    skipped = [f"{it.a} - {it.b} + {it.c} = {it.expected}" for it in items if it not in scored]
    hits: dict[str, list[tuple[bool, bool, bool]]] = defaultdict(list)
    rows = []
    if scored:
        unit = torch.nn.functional.normalize(matrix, dim=-1)
        triples = torch.tensor([ids[it][:3] for it in scored])
        top, _ = solve(matrix, triples, k, allowed, unit)
        base, _ = nearest(matrix, matrix[triples[:, 2]], triples, 1, allowed, unit)
        for it, row, b in zip(scored, top.tolist(), base[:, 0].tolist(), strict=True):
            want = ids[it][3]
            hits[it.category].append((row[0] == want, want in row, b == want))
            rows.append({"item": f"{it.a} - {it.b} + {it.c} = {it.expected}",
                         "top": model.tokenizer.decode([row[0]]), "hit@1": row[0] == want})
    per = {cat: _rates(h) for cat, h in hits.items()}
    allh = [x for h in hits.values() for x in h]
    return {"space": space, "words_only": words_only, "k": k, "per_category": per,
            "overall": _rates(allh), "skipped": skipped, "items": rows}


def _rates(h: list[tuple[bool, bool, bool]]) -> dict:
    n = len(h)
    return {"n": n, "accuracy@1": sum(x[0] for x in h) / n if n else None,
            "accuracy@k": sum(x[1] for x in h) / n if n else None,
            "c_only_baseline@1": sum(x[2] for x in h) / n if n else None}


def neighbours(model, a: str, b: str, c: str, space: str = "embed", k: int = 10,
               words_only: bool = False) -> list[tuple[str, float]]:
    """The k nearest tokens to `a - b + c` (inputs excluded), with cosine similarities."""
    ids = [word_id(model, w) for w in (a, b, c)]
    missing = [w for w, i in zip((a, b, c), ids, strict=True) if i is None]
    if missing:
        raise ValueError(f"{missing} are not single tokens (with a leading space) in this "
                         "model's tokenizer; pick single-token words.")
    matrix = space_matrix(model, space)
    top, sims = solve(matrix, tuple(ids), k, word_mask(model) if words_only else None)
    return [(model.tokenizer.decode([i]), round(float(s), 4))
            for i, s in zip(top.tolist(), sims.tolist(), strict=True)]
