"""Patching sweeps: activation patching and path patching, exact and fast.

`prepare_runs` caches the clean and corrupted runs once; `act_patch_heads` and `path_patch`
then sweep heads. `interp.patching.naive` holds the one-forward-per-item references.
"""

from interp.patching.activation import act_patch_heads
from interp.patching.path import Receiver, path_patch
from interp.patching.runs import Runs, prepare_runs

__all__ = ["Receiver", "Runs", "act_patch_heads", "path_patch", "prepare_runs"]
