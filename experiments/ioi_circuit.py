"""The IOI circuit (Wang et al. 2022) on one model: a thin script over `interp.ioi`.

Usage:
    python experiments/ioi_circuit.py --model smollm2-135m --n-prompts 100 --seed 0
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main(["ioi", *sys.argv[1:]]))
