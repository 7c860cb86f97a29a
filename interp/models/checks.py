"""Checks that run before a model loads: the device, and a local Hugging Face folder's config,
weights and tokenizer. Each failure is one line that names the problem and the fix.

Example:
    >>> check_device("cpu")
    'cpu'
    >>> check_device("foo")
    Traceback (most recent call last):
    ...
    interp.models.errors.DeviceError: unknown device 'foo': use cpu, cuda, cuda:N or mps
"""

import json
from pathlib import Path

import torch

from interp.models.errors import DeviceError, ModelUnavailableError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "vocab.txt")
FOLDER_FIX = ("pass a Hugging Face model folder with config.json, the weights and the tokenizer "
              "files, e.g. written by model.save_pretrained(folder) and "
              "tokenizer.save_pretrained(folder)")


def check_device(device: str | None) -> str:
    """The device to load on (default: cuda when available, else cpu).

    Raises:
        DeviceError: the device is unknown or not present on this machine.
    """
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device '{device}': use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{device}': CUDA is not available on this machine; "
                          "use device cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device '{device}': this machine has {torch.cuda.device_count()} "
                          "CUDA device(s); use cuda:0 .. cuda:N-1")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device '{device}': MPS is not available on this machine; "
                          "use device cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device '{device}' is not supported: use cpu, cuda, cuda:N or mps")
    return device


def _unavailable(path: Path, problem: str) -> ModelUnavailableError:
    return ModelUnavailableError(f"model folder {path}: {problem}; fix: {FOLDER_FIX}")


def check_folder(path: Path):
    """Check a local model folder before its weights load; return its tokenizer.

    Raises:
        ModelUnavailableError: config.json missing or invalid, no (or truncated) weights, no
            tokenizer files, or a tokenizer larger than the model's vocabulary.
    """
    config = _config(path)
    _check_weights(path)
    return _tokenizer(path, getattr(config, "vocab_size", None))


def _config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise _unavailable(path, "no config.json")
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _unavailable(path, f"config.json is invalid ({reason})") from None


def _check_weights(path: Path) -> None:
    present = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not present:
        raise _unavailable(path, f"no weights ({', '.join(WEIGHT_FILES)})")
    if present[0] == "model.safetensors":
        _check_safetensors(path / "model.safetensors")
    elif present[0].endswith(".index.json"):
        _check_shards(path, path / present[0])


def _check_safetensors(file: Path) -> None:
    """The header parses and covers the file exactly (a truncated file fails here)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise _unavailable(file.parent, f"{file.name} is damaged ({err}); it may be truncated "
                                        "(an interrupted copy or download)") from None


def _check_shards(path: Path, index: Path) -> None:
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise _unavailable(path, f"{index.name} is invalid") from None
    missing = sorted(name for name in shards if not (path / name).is_file())
    if missing:
        raise _unavailable(path, f"weight shards missing: {', '.join(missing)}")
    for name in shards:
        if name.endswith(".safetensors"):
            _check_safetensors(path / name)


def _tokenizer(path: Path, vocab_size: int | None):
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise _unavailable(path, f"no tokenizer files ({', '.join(TOKENIZER_FILES)}), so every "
                                 "text would become the same token")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _unavailable(path, f"the tokenizer does not load ({reason})") from None
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise _unavailable(path, f"the tokenizer has {len(tokenizer)} tokens but the model's "
                                 f"vocabulary (vocab_size in config.json) has {vocab_size}; "
                                 "the tokenizer belongs to another model")
    if len(tokenizer) < 2:
        raise _unavailable(path, f"the tokenizer has {len(tokenizer)} token(s)")
    return tokenizer
