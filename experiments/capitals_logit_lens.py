"""Logit lens on the one-shot capital prompts.

Same as `interp capitals`; arguments are passed through.

Example:
    python experiments/capitals_logit_lens.py --model smollm2-135m --out results
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main(["capitals", *sys.argv[1:]]))
