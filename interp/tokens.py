"""Tokenising prompts exactly as fed to the model: optional BOS, right padding.

Right padding is exact for causal models: a position never attends to later ones, so the
pads after a prompt's last token change nothing at or before it. Read each prompt's logits
at its own position (`lengths - 1`), never blindly at `[:, -1]`.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from interp.errors import UserValueError

# Chat-template role markers: they open a chat turn, they never started a pretraining
# document, so a base-model experiment must not use them as BOS (SmolLM2-Instruct's tokenizer
# lists <|im_start|> as its bos_token; its pretraining separator is <|endoftext|>).
CHAT_ROLE_TOKENS = frozenset({
    "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|user|>", "<|assistant|>", "<|system|>", "<|turn|>",
})
DOCUMENT_SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class Bos:
    """The token put before every prompt, or none (`token is None`).

    Example:
        >>> Bos("<|endoftext|>", 0).record()
        {'bos_token': '<|endoftext|>', 'bos_token_id': 0}
    """

    token: str | None
    id: int | None

    def record(self) -> dict:
        return {"bos_token": self.token, "bos_token_id": self.id}


NO_BOS = Bos(None, None)


def pretraining_bos(tokenizer) -> Bos:
    """The tokenizer's documented BOS, unless it is a chat-role marker; then the document
    separator `<|endoftext|>` when the vocabulary has it; else no BOS."""
    token = tokenizer.bos_token
    if token is not None and token not in CHAT_ROLE_TOKENS:
        return Bos(token, tokenizer.convert_tokens_to_ids(token))
    ident = tokenizer.get_vocab().get(DOCUMENT_SEPARATOR)
    return Bos(DOCUMENT_SEPARATOR, ident) if ident is not None else NO_BOS


def bos_family(architecture: str) -> str:
    """The family name `choose_bos` is given ("gpt2", "llama", else the lowercased class):
    from the HF class name, e.g. "GPT2LMHeadModel" -> "gpt2"."""
    arch = architecture.lower()
    return "gpt2" if "gpt2" in arch else "llama" if "llama" in arch else arch


def choose_bos(tokenizer, request: str = "auto", family: str = "") -> Bos:
    """Resolve `--bos auto|none|TOKEN` for a tokenizer.

    auto: none for GPT-2 (the IOI paper ran GPT-2 without BOS), else `pretraining_bos`.

    Raises:
        ValueError: TOKEN is not a single token of this vocabulary.
    """
    if request == "none":
        return NO_BOS
    if request == "auto":
        return NO_BOS if family == "gpt2" else pretraining_bos(tokenizer)
    ident = tokenizer.get_vocab().get(request)
    if ident is None:
        raise UserValueError(f"--bos {request!r} is not a token of this model's vocabulary; "
                             "pass auto, none, or a special token such as '<|endoftext|>'.")
    return Bos(request, ident)


def model_bos(model) -> Bos:
    """The BOS this model's prompts get (set by `load_model`; `NO_BOS` if never set)."""
    return getattr(model, "interp_bos", NO_BOS)


def bos_for(model, prepend_bos: bool | None = None) -> Bos:
    """The BOS for `prepend_bos`: None = the model's choice, False = none, True = the model's
    BOS, or its `pretraining_bos` when the model runs without one."""
    bos = model_bos(model)
    if prepend_bos is None:
        return bos
    if not prepend_bos:
        return NO_BOS
    return bos if bos.id is not None else pretraining_bos(model.tokenizer)


def encode(model, text: str, prepend_bos: bool | None = None) -> list[int]:
    """Token ids of `text`, with BOS first when `prepend_bos` (default: the model's choice)."""
    bos = bos_for(model, prepend_bos)
    return ([] if bos.id is None else [bos.id]) + model.tokenizer.encode(
        text, add_special_tokens=False)


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
