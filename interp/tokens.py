"""Tokenising prompts exactly as fed to the model: optional BOS, right padding.

Right padding is exact for causal models: a position never attends to later ones, so the
pads after a prompt's last token change nothing at or before it. Read each prompt's logits
at its own position (`lengths - 1`), never blindly at `[:, -1]`.
"""

import torch
from jaxtyping import Int
from torch import Tensor


def encode(model, text: str, prepend_bos: bool | None = None) -> list[int]:
    """Token ids of `text`, with BOS first when `prepend_bos` (default: the model's choice)."""
    bos = model.prepend_bos if prepend_bos is None else prepend_bos
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    return ([model.tokenizer.bos_token_id] if bos else []) + ids


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[Int[Tensor, "batch pos"],
                                                           Int[Tensor, " batch"]]:
    """Stack token lists into a right-padded tensor; also return each sequence's length."""
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq)
    return out, lengths


def encode_batch(model, texts: list[str], prepend_bos: bool | None = None):
    """Right-padded tokens `[batch, pos]` and lengths `[batch]` for a list of prompts."""
    pad = model.tokenizer.pad_token_id
    pad = model.tokenizer.eos_token_id if pad is None else pad
    return pad_right([encode(model, t, prepend_bos) for t in texts], pad)


def single_token(model, text: str) -> int:
    """The id of `text` if it is exactly one token (leading space included), else ValueError."""
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise ValueError(f"{text!r} is {len(ids)} tokens {pieces} in this model's tokenizer, "
                         "not one; pick a word that is a single token (with its leading space).")
    return ids[0]
