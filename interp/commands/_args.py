"""Arguments shared by the experiment subcommands."""

import argparse
from pathlib import Path


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str = "results") -> None:
    """--model, --seed, --out, --device, --bos, --overwrite."""
    parser.add_argument("--model", default="auto",
                        help="model spec (see `interp models`); default: auto")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help=f"output root; results go to OUT/<model>/<experiment>/ "
                             f"(default {default_out}/)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--bos", default="auto", metavar="auto|none|TOKEN",
                        help="token before every prompt: auto (none for GPT-2, as in the IOI "
                             "paper; else the tokenizer's pretraining BOS, never a chat-role "
                             "token), none, or a token such as '<|endoftext|>'")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run with a different configuration")

