"""Patching benchmark; same as `interp bench` (arguments are passed through).

Example:
    python experiments/benchmark_patching.py --model random:gpt2 --n-prompts 20
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
