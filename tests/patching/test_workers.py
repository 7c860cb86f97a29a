"""Sweep items side by side on CPU (`interp.patching.workers`): the same results as a loop, in
order, each item on one thread in the caller's modes, and the thread count restored. The
sweeps run this way against the naive references: tests/patching/test_exact_vs_naive.py."""

import threading
import time

import pytest
import torch

from interp.patching.workers import run_items
from tests.patching.torch_threads import torch_threads


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def _item(index: int, seen: list):
    def run():
        time.sleep(0.02 * (3 - index % 3))  # later items finish first
        seen.append((threading.current_thread().name, torch.get_num_threads(),
                     torch.is_inference_mode_enabled()))
        return index
    return run


def test_items_run_side_by_side_in_order_and_modes(two_threads):
    seen = []
    with torch.inference_mode():
        out = run_items([_item(i, seen) for i in range(6)], "cpu")
    assert out == list(range(6))
    assert {name for name, _, _ in seen} == {"interp-sweep_0", "interp-sweep_1"}
    assert all(threads == 1 and inference for _, threads, inference in seen)
    assert torch.get_num_threads() == 2


def test_one_thread_or_gpu_is_a_plain_loop(two_threads):
    seen = []
    assert run_items([_item(i, seen) for i in range(3)], "cuda:0") == [0, 1, 2]
    assert {name for name, _, _ in seen} == {threading.current_thread().name}


def test_an_item_error_propagates_and_restores_threads(two_threads):
    def fail():
        raise ValueError("item failed")

    with pytest.raises(ValueError, match="item failed"):
        run_items([fail, lambda: 1, lambda: 2], "cpu")
    assert torch.get_num_threads() == 2

