"""Word-vector analogies a - b + c.

Same as `interp analogies`; arguments are passed through.

Example:
    python experiments/word_analogies.py --model smollm2-135m --out results
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main(["analogies", *sys.argv[1:]]))
