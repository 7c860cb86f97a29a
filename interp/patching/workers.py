"""Independent sweep items run side by side on a CPU, one item per torch thread.

torch splits each op over its intra-op threads. Many of the sparse engine's ops are too small
to split well on a few cores (attention over ~20 tokens per row, norms, index and scatter,
the GELU), and the threads wait on each other between ops. The items of a sweep (chunks of
heads, edge-ablated runs) are independent, so on CPU `run_items` runs
`torch.get_num_threads()` of them at once, each on a single thread (torch ops release the
GIL; the Python between them is ~1% of an item), and restores the thread count afterwards.
On GPU, or with one thread, it is a plain loop. Results come back in item order and are
the same as the loop's up to float rounding (a matmul's summation order may depend on its
thread count).

Example:
    >>> run_items([lambda: torch.ones(2), lambda: torch.zeros(2)], "cpu")
    [tensor([1., 1.]), tensor([0., 0.])]
"""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm


def side_by_side_items(device) -> int:
    """How many items `run_items` runs at once on `device` (split a memory budget by it)."""
    return max(1, torch.get_num_threads()) if str(device).startswith("cpu") else 1


def run_items(items: Sequence[Callable[[], object]], device, progress: bool = False,
              desc: str | None = None) -> list:
    """Every item's result, in order; items run side by side on CPU (see the module doc).

    Give items the most expensive first: workers take them in order, so the last ones to
    finish are short. Each worker runs in the caller's grad / inference mode.
    """
    workers = min(side_by_side_items(device), len(items))
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    try:
        if workers <= 1:
            return [_ticked(item, bar) for item in items]
        return _side_by_side(items, workers, bar)
    finally:
        bar.close()


def _ticked(item, bar):
    out = item()
    bar.update()
    return out


def _side_by_side(items, workers: int, bar) -> list:
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(item):  # grad and inference modes are per thread
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return item()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="interp-sweep")
    try:
        futures = [pool.submit(run, item) for item in items]
        out = []
        for future in futures:
            out.append(future.result())
            bar.update()
        return out
    finally:  # on an error or Ctrl-C: drop the items not started, wait for the running ones
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
