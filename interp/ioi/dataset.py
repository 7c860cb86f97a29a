"""Building p_IOI and its corrupted twin p_ABC for one model's tokenizer.

Example:
    >>> ds = build_ioi(model, n_prompts=8, seed=0)
    >>> ds.batch.clean_tokens.shape[0]
    8
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from interp.ioi.sources import DEFAULT_DATASET, IOISource, dataset_source
from interp.metrics import LogitDiff
from interp.outputs import write_atomic
from interp.tasks.base import TaskBatch, group_ids
from interp.tokens import bos_for, encode, pad_right

MIN_NAMES = 20
POSITION_KEYS = ("IO", "S1", "S1+1", "S2", "END")


def single_token_words(model, words: list[str]) -> list[str]:
    """The words whose leading-space form is one token in the model's tokenizer."""
    tok = model.tokenizer
    return [w for w in words if len(tok.encode(" " + w, add_special_tokens=False)) == 1]


@dataclass
class IOIVocab:
    names: list[str]
    places: list[str]
    objects: list[str]
    dropped: dict[str, int]  # words of the source that are not one token here, per list


def ioi_vocab(model, source: IOISource) -> IOIVocab:
    """Names/places/objects that are single tokens for this model; fails if too few names."""
    kept = {k: single_token_words(model, list(getattr(source, k)))
            for k in ("names", "places", "objects")}
    dropped = {k: len(getattr(source, k)) - len(v) for k, v in kept.items()}
    vocab = IOIVocab(kept["names"], kept["places"], kept["objects"], dropped)
    if len(vocab.names) < MIN_NAMES:
        raise ValueError(
            f"only {len(vocab.names)} of {len(source.names)} names of the '{source.name}' "
            f"dataset are single tokens in this model's tokenizer (need >= {MIN_NAMES}); "
            "use another --dataset or extend its names with single-token ones.")
    if not vocab.places or not vocab.objects:
        raise ValueError(f"no single-token places or objects in the '{source.name}' dataset "
                         "for this tokenizer; use another --dataset.")
    return vocab


def fill(template: str, a: str, b: str, place: str, obj: str, c: str | None = None) -> str:
    """Fill a template. With `c`, the second [B] becomes `c` (used for p_ABC)."""
    text = template.replace("[PLACE]", place).replace("[OBJECT]", obj).replace("[A]", a)
    first = text.index("[B]")
    text = text[:first] + b + text[first + 3:]
    return text.replace("[B]", c if c is not None else b)


def _name_positions(model, text: str, names: list[str], prepend_bos: bool) -> list[int]:
    """Token position of each successive occurrence of the given names in `text`."""
    positions, start = [], 0
    for name in names:
        idx = text.index(" " + name, start)
        positions.append(len(encode(model, text[:idx], prepend_bos)))
        start = idx + len(name) + 1
    return positions


def _prompt(model, rng: random.Random, vocab: IOIVocab, template: str, t_index: int,
            prepend_bos: bool):
    io, s = rng.sample(vocab.names, 2)
    place, obj = rng.choice(vocab.places), rng.choice(vocab.objects)
    pool = [n for n in vocab.names if n not in (io, s)]
    c_a, c_b, c_c = rng.sample(pool, 3)  # three distinct names, none of the clean ones
    clean = fill(template, io, s, place, obj)
    corrupted = fill(template, c_a, c_b, place, obj, c=c_c)
    clean_ids = encode(model, clean, prepend_bos)
    corrupted_ids = encode(model, corrupted, prepend_bos)
    order = ["S", "IO"] if template.index("[B]") < template.index("[A]") else ["IO", "S"]
    first_two = _name_positions(model, clean, [s if o == "S" else io for o in order] + [s],
                                prepend_bos)
    pos = dict(zip(order, first_two[:2], strict=True))
    positions = {"IO": pos["IO"], "S1": pos["S"], "S1+1": pos["S"] + 1, "S2": first_two[2],
                 "END": len(clean_ids) - 1}
    _check(model, clean_ids, corrupted_ids, positions, io, s, clean)
    return {
        "clean_prompt": clean, "corrupted_prompt": corrupted, "io": " " + io, "s": " " + s,
        "clean_tokens": clean_ids, "corrupted_tokens": corrupted_ids, "positions": positions,
        "template": template, "template_index": t_index,
    }


def _check(model, clean_ids, corrupted_ids, positions, io, s, text):
    tok = model.tokenizer
    io_id, s_id = tok.encode(" " + io, add_special_tokens=False)[0], tok.encode(
        " " + s, add_special_tokens=False)[0]
    ok = (clean_ids[positions["IO"]] == io_id and clean_ids[positions["S1"]] == s_id
          and clean_ids[positions["S2"]] == s_id and len(clean_ids) == len(corrupted_ids))
    if not ok:
        raise ValueError(f"token positions do not line up for {text!r}: this tokenizer merges "
                         "names with their neighbours; use another template or name list.")


@dataclass
class IOIDataset:
    """p_IOI prompts with their p_ABC corruptions, tokenised for one model."""

    batch: TaskBatch
    records: list[dict]
    vocab: IOIVocab
    source: IOISource

    def write_jsonl(self, path: Path) -> Path:
        keys = ("clean_prompt", "corrupted_prompt", "io", "s", "clean_tokens",
                "corrupted_tokens", "positions", "template")
        bos = self.batch.bos.record()
        lines = [json.dumps({k: r[k] for k in keys} | bos) for r in self.records]
        return write_atomic(Path(path), "\n".join(lines) + "\n")


def build_ioi(model, n_prompts: int = 100, seed: int = 0, prepend_bos: bool | None = None,
              source: IOISource | str = DEFAULT_DATASET) -> IOIDataset:
    """Seeded p_IOI / p_ABC dataset; templates cycle so every template is used evenly.

    Args:
        source: an `IOISource` or the name of one ("paper", the default, or "extended").
    """
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    source = dataset_source(source) if isinstance(source, str) else source
    bos_token = bos_for(model, prepend_bos)
    bos = bos_token.id is not None
    vocab = ioi_vocab(model, source)
    rng = random.Random(seed)
    order = list(range(len(source.templates)))
    rng.shuffle(order)
    records = [_prompt(model, rng, vocab, source.templates[t], t, bos)
               for t in (order[i % len(order)] for i in range(n_prompts))]
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    clean, lengths = pad_right([r["clean_tokens"] for r in records], pad)
    corrupted, _ = pad_right([r["corrupted_tokens"] for r in records], pad)
    positions = {k: torch.tensor([r["positions"][k] for r in records]) for k in POSITION_KEYS}
    io_ids = torch.tensor([r["clean_tokens"][r["positions"]["IO"]] for r in records])
    s_ids = torch.tensor([r["clean_tokens"][r["positions"]["S1"]] for r in records])
    batch = TaskBatch(
        clean_tokens=clean, corrupted_tokens=corrupted, read_positions=positions["END"],
        groups=group_ids([r["template_index"] for r in records]),
        metric=LogitDiff(io_ids, s_ids), positions=positions, bos=bos_token, records=records,
        lengths=lengths,
    )
    return IOIDataset(batch, records, vocab, source)


class IOITask:
    """IOI as a `Task` (see interp.tasks.base), on the default (paper) dataset."""

    name = "ioi"

    def build(self, model, n_prompts: int, seed: int) -> TaskBatch:
        return build_ioi(model, n_prompts, seed).batch
