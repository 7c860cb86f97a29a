"""FFN ablation, in-context restoration and o-vector transfer.

Same as `interp ffn-ablation`; arguments are passed through.

Example:
    python experiments/ffn_ablation.py --model smollm2-135m --out results
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main(["ffn-ablation", *sys.argv[1:]]))
