"""Token embeddings and the tokenizer without TransformerLens, for commands that run no
forward pass (`interp analogies`).

`load_embeddings(spec)` reads the input embedding and the unembedding straight from the
checkpoint's safetensors (the tensor names per HF class are in `interp.arch.EMBEDDING_KEYS`)
and loads the tokenizer with `transformers`' `AutoTokenizer`, normalised as TransformerLens
does (`normalise_tokenizer`). It skips importing TransformerLens and building the model, which
is most of the start-up time of a command that only reads `W_E`. The random GPT-2 specs build
their seeded HF model (the weights exist nowhere else). A spec the light path cannot read
(an uncached hub model, a `.bin` checkpoint, an architecture without known tensor names) is
loaded by `load_model`, whose bridge has the same attributes.

The result equals the bridge's: `W_E`, `W_U` and the token ids (tests/test_light.py).

Example:
    >>> emb = load_embeddings("smollm2-135m")
    >>> emb.W_E.shape, emb.W_U.shape
    (torch.Size([49152, 576]), torch.Size([576, 49152]))
"""

import json
from dataclasses import dataclass
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from interp.models.specs import GPT2_HUB_NAMES, OFFLINE_SPEC, RANDOM_SPECS, resolve_spec
from interp.tokens import Bos, bos_family, choose_bos


@dataclass
class Embeddings:
    """What a forward-free command reads from a model (the bridge's attribute names).

    Attributes:
        tokenizer: the HF tokenizer.
        W_E: input embedding `[vocab, d_model]`.
        W_U: unembedding `[d_model, vocab]` (the same values as `W_E.T` when tied).
        interp_spec: the resolved model spec.
        interp_bos: the BOS the model's prompts would get (`interp.tokens.choose_bos`).
    """

    tokenizer: object
    W_E: Float[Tensor, "vocab d_model"]
    W_U: Float[Tensor, "d_model vocab"]
    interp_spec: str
    interp_bos: Bos

    @property
    def prepend_bos(self) -> bool:
        return self.interp_bos.id is not None


def normalise_tokenizer(tokenizer):
    """The special-token defaults TransformerLens' `setup_tokenizer` gives every bridge's
    tokenizer: eos "<|endoftext|>" when there is none, then pad and bos default to eos."""
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|endoftext|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    for name in ("pad", "eos", "bos"):
        if getattr(tokenizer, f"{name}_token_id") is None:
            tokenizer.add_special_tokens({f"{name}_token": getattr(tokenizer, f"{name}_token")})
    return tokenizer


def _tokenizer(folder: Path):
    """The folder's tokenizer, as `AutoTokenizer` loads it. A fast tokenizer class named in
    tokenizer_config.json is imported directly: AutoTokenizer's resolution imports
    torch.distributed and accelerate (~2 s) to read the same files."""
    import transformers

    try:
        name = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
        fast = isinstance(name, str) and (name.endswith("Fast") or name == "TokenizersBackend")
        cls = getattr(transformers, name) if fast else None  # AutoTokenizer prefers fast
    except (OSError, ValueError, AttributeError):
        cls = None
    return (cls or transformers.AutoTokenizer).from_pretrained(str(folder))


def _read(folder: Path, key: str) -> Tensor | None:
    """Tensor `key` of the checkpoint, also under the key without its base-model prefix
    (GPT-2's hub checkpoint stores "wte.weight", not "transformer.wte.weight")."""
    from safetensors import safe_open

    names = dict.fromkeys((key, key.split(".", 1)[-1]))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        places = [(folder / weight_map[n], n) for n in names if n in weight_map]
    elif (folder / "model.safetensors").is_file():
        places = [(folder / "model.safetensors", n) for n in names]
    else:
        return None
    for file, name in places:
        with safe_open(str(file), framework="pt") as fh:
            if name in fh.keys():
                return fh.get_tensor(name)
    return None


def _folder_matrices(folder: Path) -> tuple[str, Tensor, Tensor] | None:
    """(HF class, W_E, W_U) read from a HF folder's safetensors; None when unknown."""
    from interp.arch import EMBEDDING_KEYS

    config = json.loads((folder / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    keys = EMBEDDING_KEYS.get(arch)
    if keys is None:
        return None
    embed = _read(folder, keys[0])
    if embed is None:
        return None
    tied = config.get("tie_word_embeddings")
    unembed = None if tied else _read(folder, keys[1])
    if unembed is None and tied is False:
        return None  # untied, but no unembedding in the safetensors: let the bridge load it
    unembed = embed if unembed is None else unembed
    return arch, embed.float(), unembed.float().T


def _folder_of(resolved: str) -> Path | None:
    """The local HF folder holding the weights of a resolved spec, if there is one."""
    if resolved == OFFLINE_SPEC:
        from interp.models.smollm2 import ensure_smollm2

        return ensure_smollm2()
    if resolved in GPT2_HUB_NAMES:
        from interp.models.specs import gpt2_snapshot

        return gpt2_snapshot(resolved)
    return Path(resolved)


def _random(resolved: str, seed: int, bos: str) -> Embeddings:
    from interp.models.random_gpt2 import gpt2_tokenizer, random_gpt2_hf

    hf = random_gpt2_hf(resolved.split(":", 1)[1], seed=seed)
    tokenizer = normalise_tokenizer(gpt2_tokenizer())
    return Embeddings(tokenizer, hf.get_input_embeddings().weight.detach().float(),
                      hf.get_output_embeddings().weight.detach().float().T, resolved,
                      choose_bos(tokenizer, bos, "gpt2"))


def load_embeddings(spec: str = "auto", seed: int = 0, bos: str = "auto"):
    """`Embeddings` of a model spec (see the module doc); float32, on the CPU.

    Args:
        spec, seed, bos: as for `interp.models.load_model`.

    Returns:
        `Embeddings`, or the `TransformerBridge` when the light path cannot read the spec.
    """
    resolved = resolve_spec(spec)
    if resolved in RANDOM_SPECS:
        return _random(resolved, seed, bos)
    folder = _folder_of(resolved)
    if resolved not in GPT2_HUB_NAMES and resolved != OFFLINE_SPEC and folder is not None:
        from interp.models.checks import check_folder

        tokenizer = check_folder(folder)
    else:
        tokenizer = None
    found = _folder_matrices(folder) if folder is not None else None
    if found is None:
        from interp.models.loading import load_model

        return load_model(resolved, device="cpu", seed=seed, bos=bos)
    arch, embed, unembed = found
    tokenizer = normalise_tokenizer(tokenizer or _tokenizer(folder))
    return Embeddings(tokenizer, embed, unembed, resolved,
                      choose_bos(tokenizer, bos, bos_family(arch)))
