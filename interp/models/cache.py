"""Where `interp` keeps converted weights: `$INTERP_CACHE` or `~/.cache/interp`."""

import os
from pathlib import Path


def cache_root() -> Path:
    """Return the cache folder, creating it if needed."""
    root = Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
