"""The IOI prompt sources `interp ioi --dataset` chooses from.

- `paper`: the paper code's mixed dataset (redwoodresearch/Easy-Transformer `ioi_dataset.py`,
  prompt type "mixed"): BABA[:7] + ABBA[:7] templates, its 99 names, 8 places and 8 objects.
- `extended`: all 15 BABA templates and their 15 ABBA versions, with our own 91 names and
  20 places and objects (more template variety; 37 names shared with the paper).

Example:
    >>> source = dataset_source("paper")
    >>> len(source.templates), len(source.names)
    (14, 99)
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from interp.errors import UserValueError
from interp.ioi.templates import NAMES, OBJECTS, PAPER_TEMPLATES, PLACES, TEMPLATES

DEFAULT_DATASET = "paper"


@dataclass(frozen=True)
class IOISource:
    """Templates and the word lists they are filled from (before the tokenizer filter)."""

    name: str
    templates: tuple[str, ...]
    names: tuple[str, ...]
    places: tuple[str, ...]
    objects: tuple[str, ...]


@lru_cache(maxsize=1)
def _paper_vocab() -> dict:
    return json.loads(files("interp.data").joinpath("ioi_paper_vocab.json").read_text())


def dataset_source(name: str) -> IOISource:
    """The named source ("paper" or "extended")."""
    if name == "paper":
        vocab = _paper_vocab()
        return IOISource("paper", tuple(PAPER_TEMPLATES), tuple(vocab["names"]),
                         tuple(vocab["places"]), tuple(vocab["objects"]))
    if name == "extended":
        return IOISource("extended", tuple(TEMPLATES), tuple(NAMES), tuple(PLACES),
                         tuple(OBJECTS))
    raise UserValueError(f"unknown IOI dataset '{name}'; use one of {list(DATASETS)}")


DATASETS = ("paper", "extended")
