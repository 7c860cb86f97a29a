"""Arguments shared by the experiment subcommands, and argument types that check a value
while the command line is parsed (one-line error naming the flag, before anything loads).

Example:
    >>> parser.add_argument("--n-prompts", type=positive_int, default=50)
"""

import argparse
import math
from pathlib import Path

from interp.runner import MAX_SEED


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}; pass a positive count")
    return value


def seed(text: str) -> int:
    """An integer in [0, 2**64 - 1]."""
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**64 - 1, got {value}")
    return value


def out_folder(text: str) -> Path:
    """A path with `~` expanded (also in `--out=~/x`, where the shell leaves it)."""
    return Path(text).expanduser()


def existing_file(text: str) -> Path:
    """An existing regular file (`~` expanded)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; pass a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} does not exist; pass an existing file")
    return path


def fraction(text: str) -> float:
    """A finite number in (0, 1]."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str = "results") -> None:
    """--model, --seed, --out, --device, --bos, --overwrite."""
    parser.add_argument("--model", default="auto",
                        help="model spec (see `interp models`); default: auto")
    parser.add_argument("--seed", type=seed, default=0,
                        help="random seed, 0 to 2**64 - 1 (default 0)")
    parser.add_argument("--out", type=out_folder, default=Path(default_out),
                        help=f"output root; results go to OUT/<model>/<experiment>/ "
                             f"(default {default_out}/)")
    parser.add_argument("--device", default=None,
                        help="torch device: cpu, cuda, cuda:1, ... (default: cuda if present)")
    parser.add_argument("--bos", default="auto", metavar="auto|none|TOKEN",
                        help="token before every prompt: auto (none for GPT-2, as in the IOI "
                             "paper; else the tokenizer's pretraining BOS, never a chat-role "
                             "token), none, or a token such as '<|endoftext|>'")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run with a different configuration (the "
                             "old folder is replaced as a whole)")
